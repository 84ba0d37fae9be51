"""Single steps of the request path, timed alone: CPU microseconds per call (process time).

`.venv/bin/python -m bench.micro [--calls N]`, in one process, each step N times in a row:

* the upstream call: the same gzip'd 50-event body POSTed to the nginx Mixpanel double's /track
  (bench/procs.py) through urllib3 (what Mixpanel forwarding used first), through one kept-alive
  http.client connection (what core/http.py used until 2026-12-03) and through core/http.py;
* reading one mixpanel-browser batch (bench/payloads.py, 50 events): its base64 through the
  standard library and through pybase64; the exact path alone (json.loads and its repairs)
  against `proxy.payloads._loads`, which tries orjson first;
* `destinations.rows.format_timestamp`, against formatting the same instant by hand;
* then, in a process of its own (it must be monkey-patched first), bench/wal_rounds.py: the
  write-ahead log's fsync rounds under a busy gevent loop.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gzip
import http.client
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pybase64
import urllib3

from bench import payloads, procs
from core.http import ConnectionPool
from destinations.rows import format_timestamp
from proxy import payloads as decoding

HEADERS = {"Content-Type": "application/json", "Content-Encoding": "gzip", "X-Forwarded-For": "203.0.113.9"}
TARGET = "/track?ip=1&verbose=1"


def cpu_per_call(call: Callable[[], object], calls: int) -> float:
    for _ in range(min(200, calls)):  # connections open, caches warm
        call()
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls * 1e6


def report(name: str, call: Callable[[], object], calls: int) -> None:
    print(f"{name:44s} {cpu_per_call(call, calls):8.1f} µs CPU per call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    upstream(args.calls)
    decode(args.calls)
    timestamps(args.calls)
    subprocess.run([sys.executable, "-m", "bench.wal_rounds"], check=True)


def decode(calls: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        line = Path(payloads.generate(Path(scratch))["browser"]["path"]).read_text().splitlines()[0]
    raw = decoding._fast_base64_form(line.encode())
    assert raw is not None
    encoded = base64.b64encode(raw)
    report("browser batch: base64, binascii strict", lambda: binascii.a2b_base64(encoded, strict_mode=True), calls)
    report("browser batch: base64, pybase64", lambda: pybase64.b64decode(encoded, validate=True), calls)
    report("browser batch: json.loads path", lambda: decoding._json(decoding._utf8(raw, "data")), calls)
    report("browser batch: _loads (orjson where exact)", lambda: decoding._loads(raw, "data"), calls)


def timestamps(calls: int) -> None:
    instants = [1_733_000_000.123 + i * 0.37 for i in range(50)]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)

    def by_hand() -> None:
        for seconds in instants:
            m = epoch + timedelta(seconds=seconds)
            f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond:06d}Z"

    report("50 timestamps: timedelta + f-string", by_hand, calls)
    report("50 timestamps: format_timestamp", lambda: [format_timestamp(s) for s in instants], calls)


def upstream(calls: int) -> None:
    events = [{"event": "Page View", "properties": {"distinct_id": f"u{i}", "n": i, "time": 1733000000.5}} for i in range(50)]
    body = gzip.compress(json.dumps(events).encode())
    with tempfile.TemporaryDirectory() as scratch:
        nginx = procs.Nginx(Path(scratch)).start()
        try:
            base = f"http://127.0.0.1:{nginx.mixpanel_port}"
            manager = urllib3.PoolManager(maxsize=8, retries=False)
            pool = ConnectionPool(base)

            def with_urllib3() -> None:
                timeout = urllib3.Timeout(connect=5.0, read=10.0)
                answer = manager.request("POST", base + TARGET, body=body, headers=HEADERS, timeout=timeout, redirect=False)
                assert answer.status == 200 and answer.data

            kept = http.client.HTTPConnection("127.0.0.1", nginx.mixpanel_port, timeout=10.0)

            def with_http_client() -> None:
                kept.request("POST", TARGET, body=body, headers=HEADERS)
                answer = kept.getresponse()
                assert answer.status == 200 and answer.read()

            def with_core_http() -> None:
                answer = pool.request("POST", TARGET, body, HEADERS, connect_timeout=5.0, read_timeout=10.0)
                assert answer.status == 200 and answer.content

            report("upstream call: urllib3 PoolManager", with_urllib3, calls)
            report("upstream call: http.client, kept alive", with_http_client, calls)
            report("upstream call: core.http ConnectionPool", with_core_http, calls)
        finally:
            nginx.stop()


if __name__ == "__main__":
    main()
