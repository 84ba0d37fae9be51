"""The write-ahead log's fsync rounds under a busy gevent loop, in one process.

`.venv/bin/python -m bench.wal_rounds [--seconds 5] [--connections 16] [--work-ms 1.5]`
(also run by `python -m bench.micro`). Like a gunicorn gevent worker: the process is
monkey-patched, and N greenlets each loop over "a request": `--work-ms` of CPU, an append
of a 50-event browser batch's rows (bench/payloads.py through the real decoding and row
model: about 49 KB, 6.7 KB compressed), then the wait for
durability. For each BUFFER_FSYNC policy it prints requests/s, CPU per request beyond the
work itself, the average wait, how busy the process was (1.00: never idle), and the fsync
rounds per second.

What it showed (docs/buffer.md, "Cost"): with the syncer as a greenlet, a 10 ms interval
became a round every 15-20 ms, because a greenlet's timer fires only once every ready
greenlet has had its turn; requests then all waited for the same late round and the
process sat idle a quarter of the time (utilisation 0.75, 31% fewer requests than
`never`). As an OS thread the syncer keeps the interval, and the process stays busy.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - patched before anything else is imported
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from bench import payloads  # noqa: E402
from core import metrics  # noqa: E402
from core.records import normalize  # noqa: E402
from core.settings import Settings  # noqa: E402
from destinations.rows import to_rows  # noqa: E402
from destinations.schema import build_schemas  # noqa: E402
from destinations.wal.log import BufferConfig, WriteAheadLog  # noqa: E402
from destinations.wal.payload import encode  # noqa: E402
from proxy.payloads import decode  # noqa: E402

POLICIES = (("never", None), ("10", 10.0), ("always", 0.0))


def browser_batches(count: int = 16) -> list[bytes]:
    """Mixpanel-browser batches (bench/payloads.py) as the request path appends them to the
    log: decoded, normalised, their rows encoded (destinations/wal/payload.py)."""
    with tempfile.TemporaryDirectory() as scratch:
        bodies = Path(payloads.generate(Path(scratch))["browser"]["path"]).read_text().splitlines()[:count]
    schemas = build_schemas(Settings.from_mapping({}))
    out = []
    for body in bodies:
        items = decode(body.encode(), {}).items
        records = normalize("track", items, client_ip="203.0.113.9", ip_enabled=True, token=None, received_at=time.time())
        out.append(encode("track", ["files"], to_rows(records, schemas), None))
    return out


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def fsync_rounds() -> float:
    return next(s.value for m in metrics.FSYNC_SECONDS.collect() for s in m.samples if s.name.endswith("_count"))


def measure(name: str, fsync_ms: float | None, connections: int, seconds: float, work_ms: float) -> None:
    bodies = browser_batches()
    scratch = tempfile.mkdtemp(prefix="wal-rounds-")
    wal = WriteAheadLog(BufferConfig(directory=scratch, fsync_ms=fsync_ms))
    done = [0]
    waited = [0.0]
    stop = time.monotonic() + seconds

    def connection(number: int) -> None:
        while time.monotonic() < stop:
            burn(work_ms / 1000)
            ticket = wal.append(bodies[(number + done[0]) % len(bodies)])
            ticket.release()
            began = time.monotonic()
            wal.wait_durable(ticket)
            waited[0] += time.monotonic() - began
            done[0] += 1
            gevent.sleep(0)  # as the worker does after each request

    rounds = fsync_rounds()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    gevent.joinall([gevent.spawn(connection, n) for n in range(connections)])
    wall = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    wal.close()
    shutil.rmtree(scratch, ignore_errors=True)
    n = max(1, done[0])
    print(
        f"BUFFER_FSYNC={name:7s} {n / wall:6.0f} requests/s, {cpu / n * 1e6 - work_ms * 1000:5.0f} µs CPU per request "
        f"beyond the work, wait {waited[0] / n * 1000:5.1f} ms, busy {cpu / wall:.2f}, "
        f"{(fsync_rounds() - rounds) / wall:5.0f} fsync rounds/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--work-ms", type=float, default=1.5, help="CPU per request besides the log")
    args = parser.parse_args()
    for name, fsync_ms in POLICIES:
        measure(name, fsync_ms, args.connections, args.seconds, args.work_ms)


if __name__ == "__main__":
    main()
