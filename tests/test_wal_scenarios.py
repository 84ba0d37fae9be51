"""The write-ahead buffer under real gunicorn: SIGKILL, torn segments, a full disk.

Every scenario counts, by insert_id, the events the proxy acknowledged (HTTP 200), the
events that landed in the `files` destination, and the difference. `pytest -s` prints
them; KILL_RUNS=3 repeats each kill scenario three times.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from destinations.deadletter import DeadLetter
from tests.support import files
from tests.support.load import LoadResult, browser_batch, run_load
from tests.support.processes import ROOT, VENV_BIN, Server, free_port, gunicorn, wait_until
from tests.support.wal import dead_owner, events, insert_ids, mount_tmpfs, segments, unmount
from tests.test_delivery_scenarios import metric_sum

pytestmark = pytest.mark.slow
RUNS = range(int(os.environ.get("KILL_RUNS", "1")))
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "DESTINATIONS": "files",
        "DATA_DIR": str(tmp_path / "data"),
        "DEAD_LETTER_DIR": str(tmp_path / "spool"),
        "BUFFER_DIR": str(tmp_path / "buffer"),
        "BUFFER": "disk",
        "DELIVERY": "batch",
        "BATCH_MAX_SECONDS": "1",  # flushes (and acknowledgements) happen while the load runs
        "LOG_LEVEL": "WARNING",
        "GRACEFUL_TIMEOUT": "10",
    }


@pytest.fixture
def tmpfs():
    """Mount a small tmpfs (unmounted after the test); skips where mounting is not allowed,
    which test_size_caps_answer_503_and_lose_nothing_acknowledged covers instead."""
    mounted: list[Path] = []

    def mount(path: Path, size: str, read_only: bool = False) -> Path:
        if not mount_tmpfs(path, size, read_only):
            pytest.skip("mounting a tmpfs is not allowed here (the size-cap scenario covers a full buffer)")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        unmount(path)


def workers(server: Server) -> list[int]:
    assert server.proc is not None
    pid = server.proc.pid
    return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def wait_for_buffer_homes(buffer_dir: Path, server: Server, count: int) -> list[int]:
    """Wait until `count` workers have booted and claimed their directory under BUFFER_DIR;
    returns their pids. (A worker still booting when a test fills the disk would start on a
    full disk, which test_a_worker_started_on_a_full_disk_refuses_until_there_is_room covers.)"""

    def claimed() -> list[int]:
        return [pid for pid in workers(server) if any(buffer_dir.glob(f"*-{pid}-*"))]

    wait_until(lambda: len(claimed()) == count, 60, 0.1, what=f"{count} workers to claim their buffer directories")
    return claimed()


def busiest_worker(buffer_dir: Path, pids: list[int]) -> int:
    def held(pid: int) -> int:
        return sum(p.stat().st_size for owner in buffer_dir.glob(f"*-{pid}-*") for p in owner.glob("*.seg"))

    return max(pids, key=held)


def written_as_killed(data_dir: Path, pids: list[int]) -> dict[str, int]:
    """Objects the killed workers wrote (lake object names carry the writer's pid) whose every
    row was delivered again after the kill: {object: rows}. At most one write per killed
    worker: the one a kill can catch between the commit and its acknowledgement."""
    ids = Counter(insert_ids(files.rows(data_dir, "events")))
    out: dict[str, int] = {}
    per_worker: Counter = Counter()
    for path in files.objects(data_dir, "events"):
        writer = next((pid for pid in pids if f"-{pid}-" in path.name), None)
        rows = insert_ids([json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()])
        if writer is None or not rows or not all(ids[i] > 1 for i in rows):
            continue
        out[path.name] = len(rows)
        per_worker[writer] += 1
    assert all(n <= 1 for n in per_worker.values()), f"more than one write of a killed worker delivered twice: {out}"
    return out


def landed(env: dict[str, str]) -> list[str]:
    return insert_ids(files.rows(Path(env["DATA_DIR"]), "events"))


def dead_lettered(env: dict[str, str]) -> list[str]:
    """insert_ids of rows waiting in the dead letter (acknowledged and kept: `replay` sends them)."""
    return [row["insert_id"] for batch in DeadLetter(env["DEAD_LETTER_DIR"]).batches() for row in batch.rows]


def wait_until_kept(load: LoadResult, env: dict[str, str]) -> None:
    """Until every acknowledged event has landed in DATA_DIR or waits in the dead letter."""
    wait_until(
        lambda: load.accepted <= set(landed(env)) | set(dead_lettered(env)),
        60,
        0.5,
        what="every acknowledged event to land or be dead-lettered",
    )


def replay(env: dict[str, str]) -> str:
    """The operator's `flask --app app replay`, with the proxy's environment; its output."""
    done = subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "app", "replay"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def report(name: str, load: LoadResult, rows: list[str]) -> dict[str, int]:
    """Acknowledged (200), delivered (of those), lost, delivered twice, and rows that were
    never sent at all (must be 0). Events of requests that failed (503, or a connection cut
    by SIGKILL) may land too: the SDK sends them again, and they keep their insert_id."""
    counts = Counter(rows)
    out = {
        "acknowledged": len(load.accepted),
        "delivered": len(load.accepted & set(counts)),
        "lost": len(load.accepted - set(counts)),
        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
        "delivered_from_unacknowledged_requests": len((set(counts) - load.accepted) & load.refused),
        "never_sent": len(set(counts) - load.accepted - load.refused),
        "requests_not_acknowledged": load.sent_requests - load.statuses.get(200, 0),
    }
    print(f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


@pytest.mark.parametrize("attempt", RUNS)
def test_sigkill_of_one_worker_under_load(env, tmp_path, attempt):
    """One of two workers is SIGKILLed mid-load; gunicorn respawns it. Every acknowledged
    event is delivered, exactly once: what the dead worker had flushed is acknowledged in
    its segments' .ack files, the rest is adopted and delivered. The one exception is a kill
    that lands between a destination committing a write and the worker recording it: that
    write is delivered again (at least once), and the test checks that this is all."""
    port = free_port()
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    killed: list[int] = []

    def kill(progress: int) -> None:
        if progress == 300:
            # The worker holding the most undelivered rows (its directory is named after its pid):
            # keep-alive connections may all have gone to one worker.
            killed.append(busiest_worker(Path(env["BUFFER_DIR"]), workers(server)))
            os.kill(killed[0], signal.SIGKILL)

    try:
        load = run_load(f"http://127.0.0.1:{port}/track/", 600, 20, threads=4, run=f"k1-{attempt}", on_progress=kill)
        assert killed and killed[0] not in workers(server)
        wait_until_kept(load, env)
        recovered = metric_sum(f"http://127.0.0.1:{port}", "mpproxy_recovered_rows_total")
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    counts = report(f"SIGKILL one worker, run {attempt + 1}", load, landed(env))
    print(f"  recovered from the killed worker's segments: {int(recovered)} rows")
    assert counts["lost"] == 0 and counts["never_sent"] == 0
    in_flight = written_as_killed(Path(env["DATA_DIR"]), killed)
    if counts["duplicates"]:
        print(f"  the kill fell between a lake object's commit and its acknowledgement: {in_flight}")
    # Exactly once, but for the one write a SIGKILL can cut between the destination's commit and
    # the acknowledgement the proxy records after it (at least once then; insert_id is kept).
    assert counts["duplicates"] == sum(in_flight.values())
    assert recovered > 0, "the killed worker held nothing undelivered: the scenario proved nothing"
    assert load.statuses.get(200, 0) >= 500
    assert segments(Path(env["BUFFER_DIR"])) == []  # all delivered, all deleted


@pytest.mark.parametrize("flush_seconds", ["1", "600"])
@pytest.mark.parametrize("attempt", RUNS)
def test_sigkill_of_the_whole_process_group_then_restart(env, tmp_path, flush_seconds, attempt):
    """Master and workers are SIGKILLed together mid-load (nothing drains). After a
    restart on the same BUFFER_DIR every acknowledged event is delivered."""
    env["BATCH_MAX_SECONDS"] = flush_seconds
    port = free_port()
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")

    pids = workers(server)

    def kill(progress: int) -> None:
        if progress == 300:
            server.signal(signal.SIGKILL)

    load = run_load(f"http://127.0.0.1:{port}/track/", 500, 20, threads=4, run=f"kg-{flush_seconds}-{attempt}", on_progress=kill)
    assert server.proc is not None
    server.proc.wait(10)
    assert 250 <= load.statuses.get(200, 0) < 500
    before = set(landed(env))
    assert not load.accepted <= before, "nothing was waiting in the buffer when the process group died"

    env["BATCH_MAX_SECONDS"] = "1"
    again = gunicorn(env, free_port(), workers=2, log=tmp_path / "gunicorn-restart.log")
    try:
        wait_until_kept(load, env)
    finally:
        assert again.stop() == 0, again.log()[-3000:]
    counts = report(f"SIGKILL process group (BATCH_MAX_SECONDS={flush_seconds}), run {attempt + 1}", load, landed(env))
    print(f"  waiting in the buffer when killed: {len(load.accepted - before)} acknowledged events")
    assert counts["lost"] == 0 and counts["never_sent"] == 0
    assert counts["duplicates"] == sum(written_as_killed(Path(env["DATA_DIR"]), pids).values())
    assert segments(Path(env["BUFFER_DIR"])) == []


def test_segment_truncated_mid_record_at_start(env, tmp_path):
    """A dead worker's segment whose last record was cut short: start-up succeeds, the intact
    records are delivered, the damaged one is counted and logged."""
    dead_owner(Path(env["BUFFER_DIR"]), [events(5, f"torn{i}-") for i in range(6)], cut=40)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    try:
        expected = {f"torn{i}-{j}" for i in range(5) for j in range(5)}
        wait_until(lambda: set(landed(env)) == expected, 30, 0.2, what="the intact records")
        assert metric_sum(url, "mpproxy_disk_buffer_corrupt_tails_total") == 1
        assert metric_sum(url, "mpproxy_recovered_rows_total", destination="files") == 25
        assert requests.post(f"{url}/track", json=events(1, "fresh-"), timeout=5).text == "1"
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    assert sorted(landed(env)) == sorted(expected | {"fresh-0"})
    assert "damaged bytes" in server.log()
    print(f"\ntruncated segment: 25 intact rows delivered, 1 damaged record counted; log: {_line(server.log(), 'damaged')}")


def health_of_a_refusing_worker(url: str, load: LoadResult) -> requests.Response:
    """Each worker decides for itself: post on fresh connections until one is answered 503
    (with Retry-After), then ask /health on that keep-alive connection, so of that worker.
    Probe events are added to `load` as acknowledged or refused."""
    for attempt in range(50):
        session = requests.Session()
        body, ids = browser_batch(attempt, 20, "probe")
        reply = session.post(f"{url}/track/", data=body, headers=FORM, timeout=10)
        (load.accepted if reply.status_code == 200 else load.refused).update(ids)
        if reply.status_code == 503:
            assert reply.headers.get("Retry-After"), reply.headers
            return session.get(f"{url}/health?ready=1", timeout=5)
        time.sleep(0.1)
    raise AssertionError("no worker refused a request")


def _readiness(health: dict) -> dict:
    out = {
        "ready": health["ready"],
        "buffer": {k: health["buffer"].get(k) for k in ("mode", "full", "refusing") if k in health["buffer"]},
    }
    out["destinations"] = {
        name: {k: d.get(k) for k in ("ready", "state", "refusing") if k in d} for name, d in health["destinations"].items()
    }
    return out


def _line(text: str, word: str) -> str:
    return next((line for line in text.splitlines() if word in line), "")


# --- a full disk ---------------------------------------------------------------------------------


def _fill(path: Path) -> Path:
    """Fill the file system holding `path`; the returned file is what to delete to free it."""
    filler = path / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_disk_full_answers_503_and_loses_nothing_acknowledged(env, tmp_path, tmpfs, mode):
    """DATA_DIR, DEAD_LETTER_DIR and BUFFER_DIR on one small tmpfs that fills up under load:
    clients get 503 + Retry-After as soon as rows cannot be kept, /health readiness says so,
    and once space is freed every acknowledged event lands. A flush whose retries ran out
    while the disk was full may have put its rows in the dead letter (when a failed write
    freed room for it); those land with `replay`, as an operator would run it."""
    disk = tmpfs(tmp_path / "disk", "16m")
    env.update(
        BUFFER=mode,
        DATA_DIR=str(disk / "data"),
        DEAD_LETTER_DIR=str(disk / "spool"),
        BUFFER_DIR=str(disk / "buffer"),
        BATCH_MAX_SECONDS="0.5",
        RETRY_MAX_ATTEMPTS="3",
        RETRY_BASE_SECONDS="0.05",
        RETRY_MAX_SECONDS="1",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    try:
        before = run_load(f"{url}/track/", 50, 20, threads=4, run=f"full-{mode}-0")
        assert before.statuses == {200: 50}
        if mode == "disk":
            wait_for_buffer_homes(disk / "buffer", server, 2)
        filler = _fill(disk)
        load = run_load(f"{url}/track/", 600, 20, threads=4, run=f"full-{mode}")
        assert load.statuses.get(503, 0) > 0, load.statuses
        health = health_of_a_refusing_worker(url, load)
        assert health.status_code == 503 and health.json()["ready"] is False, health.text
        filler.unlink()
        wait_until(lambda: requests.get(f"{url}/health?ready=1", timeout=5).status_code == 200, 30, 0.5, what="readiness")
        load.accepted |= before.accepted
        wait_until_kept(load, env)
        after = run_load(f"{url}/track/", 20, 20, threads=2, run=f"full-{mode}-after")
        assert after.statuses == {200: 20}
        load.accepted |= after.accepted
    except BaseException:
        print(server.log()[-4000:])
        raise
    finally:
        stopped = server.stop()
    assert stopped == 0
    replayed = replay(env)
    counts = report(f"disk full, BUFFER={mode}", load, landed(env))
    print(f"  HTTP statuses while full: {load.statuses}; /health of a refusing worker: {_readiness(health.json())}")
    print(f"  {replayed}")
    assert counts["lost"] == 0 and counts["duplicates"] == 0 and counts["never_sent"] == 0


def test_a_worker_started_on_a_full_disk_refuses_until_there_is_room(env, tmp_path, tmpfs):
    """A worker that starts while BUFFER_DIR's disk is full (gunicorn replacing one that
    crashed, or one that reached MAX_REQUESTS) cannot claim its directory. It must start and
    answer 503 no_space until space is freed, not exit: gunicorn's master takes a worker
    that fails to boot for "App failed to load" and shuts the whole server down."""
    disk = tmpfs(tmp_path / "disk", "16m")
    env.update(DATA_DIR=str(disk / "data"), DEAD_LETTER_DIR=str(disk / "spool"), BUFFER_DIR=str(disk / "buffer"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = gunicorn(env, port, workers=1, log=tmp_path / "gunicorn.log")
    try:
        before = run_load(f"{url}/track/", 20, 20, threads=2, run="boot-full-0")
        assert before.statuses == {200: 20}
        [first] = wait_for_buffer_homes(disk / "buffer", server, 1)
        filler = _fill(disk)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(pids := workers(server)) == 1 and first not in pids, 60, 0.1, what="another worker")
        [second] = workers(server)
        load = LoadResult()
        health = health_of_a_refusing_worker(url, load)
        assert health.status_code == 503, health.text
        assert health.json()["buffer"].get("refusing") == "no_space", health.text
        assert workers(server) == [second], "the worker started on a full disk exited"
        filler.unlink()
        wait_until(lambda: requests.get(f"{url}/health?ready=1", timeout=5).status_code == 200, 30, 0.5, what="readiness")
        after = run_load(f"{url}/track/", 20, 20, threads=2, run="boot-full-after")
        assert after.statuses == {200: 20}
        load.accepted |= before.accepted | after.accepted
        # What the killed worker acknowledged is adopted from its directory once there is room.
        wait_until_kept(load, env)
    except BaseException:
        print(server.log()[-4000:])
        raise
    finally:
        stopped = server.stop()
    counts = report("worker started on a full disk", load, landed(env))
    print(f"  /health of the worker started on a full disk: {_readiness(health.json())}")
    assert counts["lost"] == 0 and stopped == 0


@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_size_caps_answer_503_and_lose_nothing_acknowledged(env, tmp_path, mode):
    """Where a tmpfs cannot be mounted the same holds with size caps: the destination is
    down, the dead letter (DEAD_LETTER_MAX_BYTES) and, with BUFFER=disk, the buffer
    (BUFFER_MAX_BYTES) are small. Clients get 503 once rows cannot be kept; when the
    destination is back, every acknowledged event lands, directly or by `replay`."""
    control = tmp_path / "faulty.mode"
    env.update(
        BUFFER=mode,
        DESTINATIONS="tests.support.faulty:make",
        FAULTY_CONTROL=str(control),
        FAULTY_DIR=str(tmp_path / "faulty"),
        DEAD_LETTER_MAX_BYTES=str(256 * 1024),
        BUFFER_MAX_BYTES=str(128 * 1024),
        BATCH_MAX_SECONDS="0.5",
        RETRY_MAX_ATTEMPTS="2",
        RETRY_BASE_SECONDS="0.05",
        RETRY_MAX_SECONDS="0.5",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    try:
        control.write_text("down")
        # Long enough to span several failing flushes (BATCH_MAX_SECONDS=0.5) however fast the
        # machine: the caps are reached, and refusals begin, only once flushes have failed.
        load = run_load(f"{url}/track/", 2000, 20, threads=4, run=f"cap-{mode}")
        assert load.statuses.get(503, 0) > 0 and load.statuses.get(200, 0) > 0, load.statuses
        health = health_of_a_refusing_worker(url, load)
        assert health.status_code == 503 and health.json()["ready"] is False, health.text
        control.write_text("up")
        wait_until(lambda: requests.get(f"{url}/health?ready=1", timeout=5).status_code == 200, 30, 0.5, what="readiness")
    finally:
        control.write_text("up")
        stopped = server.stop()
    assert stopped == 0, server.log()[-3000:]
    replayed = replay(env)
    counts = report(f"size caps, BUFFER={mode}", load, insert_ids(files.rows(tmp_path / "faulty", "events")))
    print(f"  HTTP statuses: {load.statuses}; /health of a refusing worker: {_readiness(health.json())}")
    print(f"  {replayed}")
    assert counts["lost"] == 0 and counts["never_sent"] == 0


# --- start-up ------------------------------------------------------------------------------------


def start_output(env: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    args = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{free_port()}", "-w", "2", "app:app"]
    done = subprocess.run(args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    return done.returncode, (done.stdout + done.stderr).strip()


def test_a_full_buffer_dir_at_start_is_one_clear_line(env, tmp_path, tmpfs):
    disk = tmpfs(tmp_path / "disk", "2m")
    _fill(disk)
    env["BUFFER_DIR"] = str(disk / "buffer")
    code, output = start_output(env, tmp_path)
    assert code != 0
    assert output.splitlines() == [
        f"configuration error: BUFFER_DIR={env['BUFFER_DIR']!r} cannot be used: the disk is full (no space left on device)"
        " (variable names are case-insensitive)"
    ]


def test_a_read_only_buffer_dir_at_start_is_one_clear_line(env, tmp_path, tmpfs):
    disk = tmpfs(tmp_path / "disk", "2m", read_only=True)
    env["BUFFER_DIR"] = str(disk / "buffer")
    code, output = start_output(env, tmp_path)
    assert code != 0
    assert output.splitlines() == [
        f"configuration error: BUFFER_DIR={env['BUFFER_DIR']!r} cannot be used: the file system is read-only"
        " (variable names are case-insensitive)"
    ]


def test_a_buffer_dir_that_is_a_file_at_start_is_one_clear_line(env, tmp_path):
    (tmp_path / "taken").write_text("")
    env["BUFFER_DIR"] = str(tmp_path / "taken")
    code, output = start_output(env, tmp_path)
    assert code != 0
    assert output.splitlines() == [
        f"configuration error: BUFFER_DIR={env['BUFFER_DIR']!r} cannot be used: it is not a directory"
        " (variable names are case-insensitive)"
    ]
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
