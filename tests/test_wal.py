"""The write-ahead buffer in-process: framing, torn tails, acknowledgements, recovery, limits.

What a real SIGKILL and a real full disk do under gunicorn is in tests/test_wal_scenarios.py.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core import metrics
from core.settings import ConfigError, Settings
from destinations.wal import BufferFull
from destinations.wal.log import LOCK, BufferConfig, WriteAheadLog
from destinations.wal.payload import decode
from destinations.wal.segments import SMALL_PAYLOAD, SegmentFile, ack_lines, frame, read_acks, remaining, scan
from tests.support import files
from tests.support.processes import ROOT
from tests.support.wal import dead_owner, events, insert_ids, segments


def destination(app, name: str = "files"):
    return next(d for d in app.extensions["mpproxy"].destinations if d.name == name)


def abandon(app) -> None:
    """What SIGKILL does to a worker, in-process: its flock goes, nothing is drained or deleted."""
    rt = app.extensions["mpproxy"]
    for d in rt.destinations:
        d._stop.set()
        d._wake.set()
    rt.buffer.recovery.stop()
    rt.closed = True  # the fixture's close() must not drain what a dead process could not
    os.close(rt.buffer.wal._lock_fd)


# --- framing ------------------------------------------------------------------------------------


def test_frames_round_trip_and_a_torn_tail_keeps_the_intact_records():
    data = b"".join(frame(i, f'{{"n":{i}}}'.encode() * (i + 1)) for i in range(5))
    assert [index for index, _ in scan(data).records] == [0, 1, 2, 3, 4]
    cut = data[: len(data) - 7]  # a crash in the middle of the last append
    found = scan(cut)
    assert [index for index, _ in found.records] == [0, 1, 2, 3]
    assert found.damaged_regions == 1 and found.damaged_bytes == len(frame(4, b'{"n":4}' * 5)) - 7


def test_a_damaged_record_in_the_middle_costs_only_itself():
    frames = [frame(i, b'{"row":"' + b"x" * 100 + b'"}') for i in range(4)]
    data = bytearray(b"".join(frames))
    data[len(frames[0]) + 30] ^= 0xFF  # flip a byte inside record 1's payload
    found = scan(bytes(data))
    assert [index for index, _ in found.records] == [0, 2, 3]
    assert found.damaged_bytes == len(frames[1]) and found.damaged_regions == 1


def test_stored_and_compressed_frames_read_back_alike():
    payloads = [b'{"n":%d,"pad":"%s"}' % (i, b"y" * 300) for i in range(4)]
    data = b"".join(frame(i, p, compress=i % 2 == 0) for i, p in enumerate(payloads))
    assert scan(data).records == list(enumerate(payloads))
    # Small payloads (one event) get ISA-L's cheapest level, larger ones its better ratio.
    assert len(frame(0, payloads[0])) < len(frame(0, payloads[0], compress=False)) / 2
    large = b'{"n":0,"pad":"%s"}' % (b"y" * SMALL_PAYLOAD)
    assert len(frame(0, large)) < len(frame(0, large, compress=False)) / 50


def test_garbage_is_all_damage_and_never_raises():
    found = scan(os.urandom(3000))
    assert found.records == [] and found.damaged_bytes == 3000


def test_a_failed_append_leaves_no_torn_frame(tmp_path):
    segment = SegmentFile(tmp_path / "000001.seg")
    segment.append(b'{"a":1}')
    os.close(segment.fd)
    segment.fd = os.open(tmp_path / "000001.seg", os.O_RDONLY)  # writes now fail (EBADF)
    with pytest.raises(OSError):
        segment.append(b'{"b":2}')
    assert scan((tmp_path / "000001.seg").read_bytes()).records == [(0, b'{"a":1}')]
    segment.close()


def test_acknowledged_pieces_are_subtracted(tmp_path):
    path = tmp_path / "000001.ack"
    path.write_bytes(ack_lines("files", [(0, "events", 0, 10), (1, "events", 0, 3), (1, "events", 7, 3)]) + b"files\t2\tev")
    acks = read_acks(path)  # the torn last line is ignored
    assert remaining(10, acks[("files", 0, "events")]) == []
    assert remaining(10, acks[("files", 1, "events")]) == [(3, 4)]
    assert remaining(5, acks.get(("files", 2, "events"), [])) == [(0, 5)]


# --- durability: the fsync rounds ------------------------------------------------------------------


def fsync_rounds() -> float:
    return next(s.value for m in metrics.FSYNC_SECONDS.collect() for s in m.samples if s.name.endswith("_count"))


def test_a_request_waits_for_the_round_that_covers_its_frame(tmp_path):
    wal = WriteAheadLog(BufferConfig(directory=str(tmp_path), fsync_ms=20))
    before = fsync_rounds()
    ticket = wal.append(b'{"a":1}')
    ticket.release()
    wal.wait_durable(ticket)
    assert wal.synced >= ticket.position
    assert fsync_rounds() >= before + 1
    late = wal.append(b'{"b":2}')  # nobody waits for it: closing still syncs it
    late.release()
    wal.close()
    assert wal.synced >= late.position
    assert not (wal._syncer and wal._syncer.alive)


def test_requests_within_one_interval_share_one_round(tmp_path):
    import time

    wal = WriteAheadLog(BufferConfig(directory=str(tmp_path), fsync_ms=1000))
    first = wal.append(b'{"n":0}')
    wal.wait_durable(first)  # the first round starts at once: nothing ran in the last interval
    before = fsync_rounds()
    tickets = []
    for n in range(1, 6):  # arriving 50 ms apart, all within the interval
        tickets.append(wal.append(b'{"n":%d}' % n))
        time.sleep(0.05)
    for ticket in tickets:
        wal.wait_durable(ticket)
        ticket.release()
    first.release()
    assert fsync_rounds() == before + 1  # five requests, one fsync round
    wal.close()


def test_waking_a_syncer_whose_wake_up_is_still_pending_is_harmless(tmp_path):
    """The syncer's sleep timed out just as an append woke it: the wake-up stays pending
    while it runs a round, and the next append finds it marked asleep again."""
    wal = WriteAheadLog(BufferConfig(directory=str(tmp_path), fsync_ms=10))
    with wal._sync_lock:
        wal._syncer_sleeping = True
        wal._wake_syncer()  # the append that came just after the timeout
        wal._syncer_sleeping = True  # the syncer, idle again, about to sleep
        wal._wake_syncer()  # before the syncer reached its acquire: once raised "release unlocked lock"
    assert not wal._wake.locked()  # its next sleep returns at once and it looks again
    wal.close()


def test_a_failed_fsync_refuses_its_requests_and_the_log_moves_to_a_new_segment(tmp_path, monkeypatch):
    wal_log = importlib.import_module("destinations.wal.log")

    wal = WriteAheadLog(BufferConfig(directory=str(tmp_path), fsync_ms=0))
    real = wal_log._fsync_all

    def failing(fds):
        monkeypatch.setattr(wal_log, "_fsync_all", real)  # the disk fails once
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_log, "_fsync_all", failing)
    doomed = wal.append(b'{"a":1}')
    with pytest.raises(BufferFull) as refused:
        wal.wait_durable(doomed)
    assert refused.value.reason == "fsync_error"
    doomed.release()
    kept = wal.append(b'{"b":2}')
    assert kept.segment is not doomed.segment and doomed.segment.sealed
    wal.wait_durable(kept)  # the next round succeeds
    kept.release()
    wal.close()


GEVENT_SYNCER = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import sys
    import gevent
    from core import metrics
    from destinations.wal.log import BufferConfig, WriteAheadLog

    def rounds():
        return next(s.value for s in metrics.FSYNC_SECONDS.collect()[0].samples if s.name.endswith("_count"))

    wal = WriteAheadLog(BufferConfig(directory=sys.argv[1], fsync_ms=10))
    covered = []

    def request(n):
        for _ in range(n):
            ticket = wal.append(b'{"e":1}')
            ticket.release()
            wal.wait_durable(ticket)
            covered.append(wal.synced >= ticket.position)

    with gevent.Timeout(30):
        gevent.joinall([gevent.spawn(request, 20) for _ in range(32)], raise_error=True)
    assert wal._wakeup.in_loop  # the syncer wakes requests through the event loop
    assert covered == [True] * 640, covered.count(False)
    assert 1 <= rounds() < 640, rounds()  # observed in the loop; requests shared rounds
    wal.close()
    assert not wal._wakeup.in_loop  # closing the log stops watching the loop

    # A syncer that ends for any reason wakes the requests waiting for it, which start another.
    dying = WriteAheadLog(BufferConfig(directory=sys.argv[2], fsync_ms=10))
    real, calls = dying._sync_loop, []

    def dies_first():
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("the syncer thread ends")
        real()

    dying._sync_loop = dies_first
    ticket = dying.append(b'{"e":2}')
    with gevent.Timeout(10):
        dying.wait_durable(ticket)
    assert dying.synced >= ticket.position and len(calls) == 2
    ticket.release()
    dying.close()
    print("ok")
    """
)


def test_under_gevent_the_syncer_wakes_waiting_requests_through_the_loop(tmp_path):
    """The syncer is an OS thread; in a gevent worker it hands each round back to the event
    loop (core/green.py Wakeup) instead of setting gevent objects from its own thread."""
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_SYNCER, *map(str, dirs)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    assert "the syncer thread ends" in done.stderr  # NativeThread logged how the first syncer ended


# --- in a running app ------------------------------------------------------------------------------


def test_rows_are_on_disk_before_the_reply_and_deleted_once_delivered(make_app, tmp_path):
    app = make_app(delivery="batch", batch_max_seconds="3600")
    client = app.test_client()
    for i in range(3):
        assert client.post("/track", json=events(5, f"a{i}-")).data == b"1"
    (segment,) = segments(tmp_path / "buffer")
    records = [decode(payload) for _, payload in scan(segment.read_bytes()).records]
    assert [r.destinations for r in records] == [["files"]] * 3
    assert sum(len(r.tables["events"]) for r in records) == 15
    destination(app).flush()
    app.extensions["mpproxy"].buffer.recovery.run_once()  # seals the idle segment: all of it is delivered
    assert segments(tmp_path / "buffer") == []
    assert len(files.rows(tmp_path / "data", "events")) == 15


def test_a_reply_waiting_for_its_fsync_round_holds_none_of_the_request_s_records(make_app, monkeypatch, tmp_path):
    """The records (and the rows and body made from them) are freed before the reply waits for
    its round, while still in the CPU's caches (proxy/ingest.py `handle`)."""
    app = make_app(delivery="batch", batch_max_seconds="3600")
    buffer = app.extensions["mpproxy"].buffer
    alive: list[int] = []
    wait = buffer.wait_durable

    def held(value: object) -> bool:
        properties = value.get("properties") if isinstance(value, dict) else None
        return isinstance(properties, dict) and str(properties.get("$insert_id", "")).startswith("held-")

    def counting(ticket) -> None:
        gc.collect()  # only what is still referenced counts, not garbage awaiting the collector
        alive.append(sum(1 for value in gc.get_objects() if held(value)))
        wait(ticket)

    monkeypatch.setattr(buffer, "wait_durable", counting)
    body = json.dumps(events(5, "held-"))  # sent as JSON text: the test's own dicts are gone before the request
    assert app.test_client().post("/track", data=body, content_type="application/json").data == b"1"
    assert alive == [0]
    destination(app).flush()
    assert sorted(insert_ids(files.rows(tmp_path / "data", "events"))) == [f"held-{i}" for i in range(5)]


def test_a_killed_process_is_adopted_and_only_what_it_had_not_delivered_is_sent(make_app, tmp_path):
    first = make_app(delivery="batch", batch_max_seconds="3600")
    client = first.test_client()
    for i in range(3):
        client.post("/track", json=events(4, f"early{i}-"))
    destination(first).flush()  # delivered and acknowledged, but the segment is still the active one
    for i in range(2):
        client.post("/track", json=events(4, f"late{i}-"))
    abandon(first)
    delivered = insert_ids(files.rows(tmp_path / "data", "events"))
    assert len(delivered) == 12

    before = metrics.RECOVERED_ROWS.labels("files")._value.get()
    second = make_app(delivery="batch", batch_max_seconds="3600")
    rt = second.extensions["mpproxy"]
    assert rt.buffer.recovery.run_once() == 1
    destination(second).flush()
    rt.buffer.recovery.run_once()
    landed = insert_ids(files.rows(tmp_path / "data", "events"))
    assert sorted(landed) == sorted(delivered + [f"late{i}-{j}" for i in range(2) for j in range(4)])  # each once
    assert metrics.RECOVERED_ROWS.labels("files")._value.get() - before == 8
    assert segments(tmp_path / "buffer") == []
    assert rt.buffer.health()["recovered_rows"] == 8


def test_a_live_owner_is_never_adopted(make_app, tmp_path):
    first = make_app(delivery="batch", batch_max_seconds="3600")
    first.test_client().post("/track", json=events(3, "mine-"))
    second = make_app(delivery="batch", batch_max_seconds="3600")
    assert second.extensions["mpproxy"].buffer.recovery.claim() == []
    assert len(segments(tmp_path / "buffer")) == 1


def test_a_segment_truncated_mid_record_delivers_the_intact_ones(make_app, tmp_path):
    owner = dead_owner(tmp_path / "buffer", [events(3, f"r{i}-") for i in range(4)], cut=11)
    before = metrics.CORRUPT_TAILS._value.get()
    app = make_app(delivery="batch", batch_max_seconds="3600")
    rt = app.extensions["mpproxy"]
    rt.buffer.recovery.run_once()
    destination(app).flush()
    rt.buffer.recovery.run_once()
    assert sorted(insert_ids(files.rows(tmp_path / "data", "events"))) == sorted(f"r{i}-{j}" for i in range(3) for j in range(3))
    assert metrics.CORRUPT_TAILS._value.get() - before == 1
    assert rt.buffer.health()["damaged_bytes"] > 0
    assert not owner.exists() and segments(tmp_path / "buffer") == []


def test_buffer_max_bytes_refuses_with_503_and_readiness_says_so(make_app, tmp_path):
    app = make_app(delivery="batch", batch_max_seconds="3600", buffer_max_bytes=str(64 * 1024))
    client = app.test_client()
    statuses = [client.post("/track?verbose=1", json=events(100, f"b{i}-")) for i in range(60)]
    accepted = [r for r in statuses if r.status_code == 200]
    refused = [r for r in statuses if r.status_code == 503]
    assert accepted and refused and len(accepted) + len(refused) == 60
    assert refused[0].headers["Retry-After"] and "full" in refused[0].get_json()["error"]
    health = client.get("/health?ready=1")
    assert health.status_code == 503 and health.get_json()["buffer"]["full"] is True
    assert health.get_json()["buffer"]["ready"] is False and health.get_json()["failing"] == ["buffer"]
    assert client.get("/health").status_code == 200  # the report form always answers 200
    destination(app).flush()  # the destination takes what was acknowledged: room again
    app.extensions["mpproxy"].buffer.recovery.run_once()
    assert client.get("/health?ready=1").status_code == 200
    assert client.post("/track", json=events(1, "after-")).status_code == 200
    app.extensions["mpproxy"].close()
    expected = {f"b{i}-{j}" for i, r in enumerate(statuses) if r.status_code == 200 for j in range(100)} | {"after-0"}
    assert set(insert_ids(files.rows(tmp_path / "data", "events"))) == expected


def test_rows_the_dead_letter_could_not_take_at_shutdown_stay_on_disk_for_the_next_start(make_app, tmp_path):
    control = tmp_path / "faulty.mode"
    control.write_text("down")
    env = {
        "destinations": "tests.support.faulty:make",
        "faulty_control": str(control),
        "faulty_dir": str(tmp_path / "faulty"),
        "retry_max_attempts": "2",
        "retry_base_seconds": "0.01",
        "dead_letter_max_bytes": "1024",
        "delivery": "batch",
        "batch_max_seconds": "3600",
    }
    first = make_app(**env)
    before = metrics.DROPPED.labels("faulty", "dead_letter_full")._value.get()
    for i in range(3):
        assert first.test_client().post("/track", json=events(10, f"k{i}-")).status_code == 200
    first.extensions["mpproxy"].close(timeout=2)
    assert metrics.DROPPED.labels("faulty", "dead_letter_full")._value.get() == before  # not lost: kept
    assert len(segments(tmp_path / "buffer")) == 1

    control.write_text("up")
    second = make_app(**env)
    second.extensions["mpproxy"].buffer.recovery.run_once()
    second.extensions["mpproxy"].close()
    assert sorted(insert_ids(files.rows(tmp_path / "faulty", "events"))) == sorted(
        f"k{i}-{j}" for i in range(3) for j in range(10)
    )
    assert segments(tmp_path / "buffer") == []


def test_memory_mode_refuses_once_a_failing_destination_has_nowhere_to_put_rows(make_app, tmp_path):
    control = tmp_path / "faulty.mode"
    app = make_app(
        destinations="tests.support.faulty:make",
        faulty_control=str(control),
        faulty_dir=str(tmp_path / "faulty"),
        retry_max_attempts="2",
        retry_base_seconds="0.01",
        dead_letter_max_bytes="2048",
        delivery="batch",
        batch_max_seconds="3600",
        buffer="memory",
    )
    client = app.test_client()
    assert client.post("/track", json=events(10, "ok-")).status_code == 200
    control.write_text("down")
    dest = destination(app, "faulty")
    with pytest.raises(Exception):  # noqa: B017 - DeadLetterFull: neither the destination nor the spool took them
        dest.flush()
    refused = client.post("/track", json=events(10, "no-"))
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    health = client.get("/health?ready=1")
    assert health.status_code == 503 and health.get_json()["destinations"]["faulty"]["ready"] is False
    control.write_text("up")
    dest.flush()
    assert client.get("/health?ready=1").status_code == 200
    assert client.post("/track", json=events(10, "yes-")).status_code == 200
    app.extensions["mpproxy"].close()
    landed = set(insert_ids(files.rows(tmp_path / "faulty", "events")))
    assert {f"ok-{j}" for j in range(10)} | {f"yes-{j}" for j in range(10)} == landed


def test_settings_parse_the_fsync_policy():
    assert Settings.from_mapping({"buffer_fsync": "always"}).buffer_fsync_ms == 0
    assert Settings.from_mapping({"buffer_fsync": "never"}).buffer_fsync_ms is None
    assert Settings.from_mapping({"buffer_fsync": "25ms"}).buffer_fsync_ms == 25
    assert Settings.from_mapping({"runtime": "AWS"}).buffer == "memory"
    with pytest.raises(ConfigError, match="BUFFER_FSYNC"):
        Settings.from_mapping({"buffer_fsync": "sometimes"})
    with pytest.raises(ConfigError, match="BUFFER="):
        Settings.from_mapping({"buffer": "tape"})


def test_a_buffer_dir_that_is_a_file_is_one_clear_error(make_app, tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"^BUFFER_DIR=.*cannot be used: it is not a directory$"):
        make_app(delivery="batch", buffer_dir=str(tmp_path / "taken"))


def test_the_lock_file_is_held_for_the_life_of_the_worker(make_app, tmp_path):
    import fcntl

    app = make_app(delivery="batch", batch_max_seconds="3600")
    home = app.extensions["mpproxy"].buffer.wal.home
    fd = os.open(home / LOCK, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    app.extensions["mpproxy"].close()
    assert not Path(home).exists()  # nothing left to deliver: the directory is removed


def test_only_destinations_that_keep_rows_after_the_reply_need_the_disk_buffer(make_app, tmp_path):
    assert Settings.from_mapping({"destinations": "files"}).buffers_rows
    assert not Settings.from_mapping({"destinations": "mixpanel"}).buffers_rows
    assert Settings.from_mapping({"destinations": "mixpanel", "mixpanel_delivery": "batch"}).buffers_rows
    assert not Settings.from_mapping({"destinations": "files", "delivery": "sync"}).buffers_rows
    assert not Settings.from_mapping({"destinations": "files", "batch_max_records": "1"}).buffers_rows
    assert not Settings.from_mapping({"destinations": "files", "runtime": "AWS"}).buffers_rows
    assert Settings.from_mapping({"destinations": "files", "runtime": "AWS", "files_delivery": "batch"}).buffers_rows
    # Mixpanel's synchronous forwarding keeps nothing: an unusable BUFFER_DIR does not matter then.
    (tmp_path / "taken").write_text("")
    app = make_app(destinations="mixpanel", delivery="batch", buffer_dir=str(tmp_path / "taken"))
    assert app.extensions["mpproxy"].buffer is None
