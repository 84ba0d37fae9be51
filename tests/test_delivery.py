"""Delivery in-process: batching, retries, dead letters, back-pressure, /drop and the commands."""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from core import metrics
from core.records import Ingest, Record
from core.settings import Settings
from destinations.base import Capabilities, RowSink, SinkResult
from destinations.deadletter import DeadLetter, DeadLetterFull
from destinations.delivery import DeliveryConfig, RowDestination
from destinations.rows import to_rows
from destinations.schema import build_schemas
from tests.support import files
from tests.support.processes import wait_until


def events(n: int, start: int = 0, prefix: str = "e") -> list[dict]:
    return [
        {"event": "view", "properties": {"distinct_id": f"u{i}", "time": 1700000000 + i, "$insert_id": f"{prefix}{i}"}}
        for i in range(start, start + n)
    ]


@pytest.fixture
def faulty(tmp_path: Path):
    control = tmp_path / "faulty.mode"

    class Control:
        dir = tmp_path / "faulty"
        env = {
            "faulty_control": str(control),
            "faulty_dir": str(tmp_path / "faulty"),
            "retry_max_attempts": "3",
            "retry_base_seconds": "0.01",
            "retry_max_seconds": "1",
        }

        @staticmethod
        def set(mode: str) -> None:
            control.write_text(mode)

    return Control


def destination(app, name: str):
    return next(d for d in app.extensions["mpproxy"].destinations if d.name == name)


def counter(metric, *labels) -> float:
    return metric.labels(*labels)._value.get()


def batch_app(make_app, faulty, **settings):
    """The failure-injecting destination alone, batched, flushed only when a test says so."""
    return make_app(
        destinations="tests.support.faulty:make", delivery="batch", batch_max_seconds="3600", **settings, **faulty.env
    )


def test_batch_mode_holds_rows_until_a_flush(make_app, tmp_path):
    app = make_app(delivery="batch", batch_max_seconds="3600")
    client = app.test_client()
    for i in range(20):
        assert client.post("/track", json=events(5, i * 5)).data == b"1"
    assert files.objects(tmp_path / "data", "events") == []
    assert destination(app, "files").health()["buffered_rows"] == 100
    destination(app, "files").flush()
    assert len(files.objects(tmp_path / "data", "events")) == 1  # 20 requests, one object
    assert sorted(r["insert_id"] for r in files.rows(tmp_path / "data", "events")) == sorted(f"e{i}" for i in range(100))


def test_batch_flushes_when_the_record_limit_is_reached(make_app, tmp_path):
    app = make_app(delivery="batch", batch_max_seconds="3600", batch_max_records="10")
    client = app.test_client()
    client.post("/track", json=events(25))
    destination(app, "files").flush()  # whatever the woken flusher has not taken already
    wait_until(lambda: len(files.rows(tmp_path / "data", "events")) == 25, 10, what="the flush")
    assert len(files.objects(tmp_path / "data", "events")) == 3  # chunks of at most 10 rows


def test_a_forked_process_starts_a_flusher_of_its_own(make_app, tmp_path):
    """A flusher the parent started does not exist in a forked child (gunicorn forks its
    workers, after building the app with --preload): the child must start its own."""
    app = make_app(delivery="batch", buffer="memory", batch_max_seconds="3600", batch_max_records="10")
    client = app.test_client()
    client.post("/track", json=events(10))  # 10 rows wake the parent's flusher
    wait_until(lambda: len(files.rows(tmp_path / "data", "events")) == 10, 10, what="the parent's flush")
    pid = os.fork()
    if pid == 0:  # the child: only its own flusher can write these
        status = 1
        try:
            client.post("/track", json=events(10, 10))
            wait_until(lambda: len(files.rows(tmp_path / "data", "events")) == 20, 10, what="the child's flush")
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(r["insert_id"] for r in files.rows(tmp_path / "data", "events")) == sorted(f"e{i}" for i in range(20))


def test_close_drains_the_buffer(make_app, tmp_path):
    app = make_app(delivery="batch", batch_max_seconds="3600")
    app.test_client().post("/track", json=events(3))
    app.extensions["mpproxy"].close()
    assert len(files.rows(tmp_path / "data", "events")) == 3


def test_transient_failure_is_retried_then_dead_lettered_and_replayed(make_app, faulty, tmp_path):
    faulty.set("down")
    app = make_app(destinations="files,tests.support.faulty:make", **faulty.env)
    before_retries = counter(metrics.RETRIES, "faulty")
    reply = app.test_client().post("/track?verbose=1", json=events(4))
    assert reply.status_code == 200
    result = {d["name"]: d for d in reply.get_json()["destinations"]}
    assert result["files"]["status"] == "success"
    assert result["faulty"]["status"] == "queued" and "injected outage" in result["faulty"]["error"]
    assert counter(metrics.RETRIES, "faulty") == before_retries + 2  # 3 attempts
    spool = DeadLetter(str(tmp_path / "spool"))
    (batch,) = list(spool.batches())
    assert (batch.destination, batch.table, batch.attempts) == ("faulty", "events", 3)
    assert batch.reason.startswith("transient: injected outage")
    assert [r["insert_id"] for r in batch.rows] == ["e0", "e1", "e2", "e3"]

    faulty.set("up")
    runner = app.test_cli_runner()
    out = runner.invoke(args=["replay"])
    assert out.exit_code == 0, out.output
    assert "4 replayed" in out.output
    assert [r["insert_id"] for r in files.rows(faulty.dir, "events")] == ["e0", "e1", "e2", "e3"]
    assert list(spool.batches()) == []
    again = runner.invoke(args=["replay"])
    assert "0 batches" in again.output  # idempotent: nothing left to re-send
    assert len(files.rows(faulty.dir, "events")) == 4


def test_permanent_failure_goes_straight_to_the_dead_letter(make_app, faulty, tmp_path):
    faulty.set("reject")
    app = make_app(destinations="tests.support.faulty:make", **faulty.env)
    before = counter(metrics.RETRIES, "faulty")
    app.test_client().post("/track", json=events(2))
    assert counter(metrics.RETRIES, "faulty") == before
    (batch,) = list(DeadLetter(str(tmp_path / "spool")).batches())
    assert batch.attempts == 1 and batch.reason.startswith("permanent")


def test_replay_keeps_batches_that_still_fail(make_app, faulty, tmp_path):
    faulty.set("down")
    app = make_app(destinations="tests.support.faulty:make", **faulty.env)
    app.test_client().post("/track", json=events(2))
    out = app.test_cli_runner().invoke(args=["replay"])
    assert out.exit_code == 1 and "2 still failing" in out.output
    assert DeadLetter(str(tmp_path / "spool")).pending_rows() == 2


def test_full_buffer_spills_to_the_spool_not_memory(make_app, faulty, tmp_path):
    faulty.set("down")
    app = batch_app(make_app, faulty, max_buffer_bytes="2048")
    client = app.test_client()
    dest = destination(app, "faulty")
    peak = 0
    for i in range(10):
        assert client.post("/track", json=events(5, i * 5)).status_code == 200
        peak = max(peak, dest.health()["buffered_bytes"])
    assert peak <= 2048
    spool = DeadLetter(str(tmp_path / "spool"))
    # Spilled, or dead-lettered by the flush (it frees room fast: retries here take milliseconds).
    assert spool.pending_rows() >= 50 - 2048 // 250, spool.pending_rows()
    app.extensions["mpproxy"].close()  # drain: the destination is still down, so the rest is spooled too
    assert spool.pending_rows() == 50


@pytest.mark.parametrize("chunk_rows", [None, "3"], ids=["sink-sized-chunks", "3-row-chunks"])
def test_a_stuck_flush_spills_the_whole_buffer_at_once(make_app, faulty, tmp_path, chunk_rows):
    """A destination that hangs with a flush out: once the buffer is full it goes to the dead
    letter whole (a few large batches), not request by request nor chunk by chunk (Mixpanel's
    hold 50 rows), and every row is kept once."""
    faulty.set("up")
    extra = {"faulty_max_rows": chunk_rows} if chunk_rows else {}
    # The flusher itself takes the first request's rows and hangs with them.
    app = batch_app(make_app, faulty, max_buffer_bytes="8192", faulty_batch_max_seconds="0.05", **extra)
    client = app.test_client()
    dest = destination(app, "faulty")
    faulty.set("hang")
    assert client.post("/track", json=events(5, 0)).status_code == 200
    wait_until(lambda: bool(dest._inflight), 10, 0.01, what="the flush to hang in the destination")
    for i in range(1, 40):
        assert client.post("/track", json=events(5, i * 5)).status_code == 200
        # What the stuck flush holds counts against the bound too.
        assert dest.health()["buffered_bytes"] + dest._flushing_bytes <= 8192
    spool = DeadLetter(str(tmp_path / "spool"))
    spilled = [b for b in spool.batches() if b.reason == "buffer_full"]
    assert spilled and all(len(b.rows) > 5 for b in spilled), [len(b.rows) for b in spilled]  # never one request's alone
    faulty.set("up")
    wait_until(lambda: not dest._inflight, 10, 0.01, what="the stuck flush to finish")
    app.extensions["mpproxy"].close()
    landed = [r["insert_id"] for r in files.rows(faulty.dir, "events")]
    kept = Counter(landed + [r["insert_id"] for b in spool.batches() for r in b.rows])
    assert kept == Counter(f"e{i}" for i in range(200))


def test_spool_that_cannot_take_data_answers_503(make_app, faulty):
    faulty.set("down")
    app = make_app(destinations="files,tests.support.faulty:make", dead_letter_max_bytes="1500", **faulty.env)
    client = app.test_client()
    statuses = [client.post("/track?verbose=1", json=events(5, i * 5)).status_code for i in range(6)]
    assert statuses[0] == 200 and statuses[-1] == 503
    reply = client.post("/track", json=events(1, 100))
    assert reply.status_code == 503 and reply.data == b"0" and reply.headers["Retry-After"]


def test_destination_exception_is_isolated(make_app, mp, faulty, tmp_path):
    faulty.set("up")
    app = make_app(
        destinations="mixpanel,files,tests.support.faulty:make", mixpanel_api_host=mp.url, mixpanel_token="t", **faulty.env
    )
    destination(app, "faulty").sink.write = None  # an outright bug: calling it raises TypeError
    reply = app.test_client().post("/track?verbose=1", json=events(2))
    body = reply.get_json()
    assert reply.status_code == 200 and body["status"] == 1
    assert len(mp.records("track")) == 2 and len(files.rows(tmp_path / "data", "events")) == 2


def test_delivery_config_overrides_and_serverless_default(make_settings):
    settings = make_settings(batch_max_seconds="5", s3_batch_max_seconds="1", delivery="")
    assert DeliveryConfig.from_settings(settings, "s3").max_seconds == 1
    assert DeliveryConfig.from_settings(settings, "files").max_seconds == 5
    assert DeliveryConfig.from_settings(settings, "files").mode == "batch"
    assert DeliveryConfig.from_settings(make_settings(runtime="AWS", delivery=""), "files").mode == "sync"
    assert DeliveryConfig.from_settings(make_settings(batch_max_records="1", delivery="batch"), "files").mode == "sync"


def test_setup_command_creates_and_probes(make_app, tmp_path):
    app = make_app()
    out = app.test_cli_runner().invoke(args=["setup"])
    assert out.exit_code == 0 and "files: ready" in out.output
    assert (tmp_path / "data").is_dir()
    assert not list((tmp_path / "data").rglob("*probe*"))  # the probe cleans up after itself


def test_drop_is_off_without_a_token(make_app):
    assert make_app().test_client().post("/drop").status_code == 403


def test_drop_needs_the_bearer_token_and_refuses_production(make_app):
    client = make_app(drop_token="s3cret-drop").test_client()
    assert client.post("/drop").status_code == 401
    assert client.post("/drop", headers={"Authorization": "Bearer wrong"}).status_code == 401
    prod = make_app(drop_token="s3cret-drop", environment="production").test_client()
    assert prod.post("/drop", headers={"Authorization": "Bearer s3cret-drop"}).status_code == 403
    cloud_run = make_app(drop_token="s3cret-drop", k_service="proxy").test_client()
    assert cloud_run.post("/drop", headers={"Authorization": "Bearer s3cret-drop"}).status_code == 403
    forced = make_app(drop_token="s3cret-drop", environment="production", drop_allow_production="true").test_client()
    assert forced.post("/drop", headers={"Authorization": "Bearer s3cret-drop"}).status_code == 200


def test_drop_removes_only_this_proxys_exact_prefixes(make_app, tmp_path):
    app = make_app(drop_token="s3cret-drop")
    client = app.test_client()
    client.post("/track", json=events(2))
    client.post("/engage", json={"$distinct_id": "u", "$set": {"a": 1}})
    data = tmp_path / "data"
    keep = [data / "events_archive" / "x.json.gz", data / "other" / "events" / "y.json.gz", data / "eventsx.json.gz"]
    for path in keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"keep")
    reply = client.post("/drop", headers={"Authorization": "Bearer s3cret-drop"})
    assert reply.status_code == 200
    dropped = reply.get_json()["results"]["files"]["dropped"]
    assert len(dropped) == 2 and all(d.startswith(("events/", "users/")) for d in dropped)
    assert files.objects(data, "events") == [] and files.objects(data, "users") == []
    assert all(p.exists() for p in keep)


def test_dead_letter_files_are_self_describing(tmp_path):
    spool = DeadLetter(str(tmp_path))
    path = spool.put("s3", "events", [{"a": 1}], "transient: x", 5)
    line = json.loads(path.read_text())
    assert {k: line[k] for k in ("destination", "table", "reason", "attempts", "rows")} == {
        "destination": "s3",
        "table": "events",
        "reason": "transient: x",
        "attempts": 5,
        "rows": [{"a": 1}],
    }


def test_rows_neither_destination_nor_spool_takes_stay_buffered_then_land(make_app, faulty, tmp_path):
    faulty.set("down")
    app = batch_app(make_app, faulty, dead_letter_max_bytes="1024")
    dest = destination(app, "faulty")
    client = app.test_client()
    for i in range(4):
        assert client.post("/track", json=events(10, i * 10)).status_code == 200
    with pytest.raises(DeadLetterFull):
        dest.flush()  # the destination fails, the 1 KiB spool cannot take 40 rows: nothing may be lost
    assert dest.health()["buffered_rows"] == 40
    assert client.post("/track", json=events(1, 99)).status_code == 200  # still room in the buffer

    faulty.set("up")
    assert dest.flush() == 41
    assert sorted(r["insert_id"] for r in files.rows(faulty.dir, "events")) == sorted([f"e{i}" for i in range(40)] + ["e99"])
    assert dest.health()["buffered_rows"] == 0


def test_rows_lost_at_shutdown_are_counted_with_their_reason(make_app, faulty):
    faulty.set("down")
    app = batch_app(make_app, faulty, dead_letter_max_bytes="1024", buffer="memory")  # disk: tests/test_wal.py
    before = counter(metrics.DROPPED, "faulty", "dead_letter_full")
    for i in range(3):
        assert app.test_client().post("/track", json=events(10, i * 10)).status_code == 200
    app.extensions["mpproxy"].close(timeout=2)
    assert counter(metrics.DROPPED, "faulty", "dead_letter_full") - before == 30


class RecordingRowSink(RowSink):
    """A sink that takes row dicts and keeps every write."""

    name = "recording"
    capabilities = Capabilities(takes="rows", max_rows=10_000)

    def __init__(self) -> None:
        self.writes: list[tuple[str, list]] = []

    def write(self, table: str, items: list) -> SinkResult:
        self.writes.append((table, items))
        return SinkResult.all_of(items)


def row_destination(tmp_path: Path) -> tuple[RowDestination, RecordingRowSink, dict]:
    schemas = build_schemas(Settings({}))
    sink = RecordingRowSink()
    config = DeliveryConfig(max_seconds=3600)
    return RowDestination(sink, schemas, config, DeadLetter(str(tmp_path / "spool")), timeout=5), sink, schemas


def test_rows_wait_encoded_and_reach_a_rows_sink_exactly_as_made(tmp_path):
    """Rows wait in the buffer as their NDJSON lines and are decoded for the write: the sink
    gets the rows to_rows made, integers beyond 64 bits, floats and text included."""
    dest, sink, schemas = row_destination(tmp_path)
    odd = {
        "big": 2**70,
        "negative_big": -(2**64) - 1,
        "tenth": 0.1,
        "huge": 1e16,
        "text": "é 😀 \u2028",
        "list": [1, [2.5, None]],
    }
    records = tuple(
        Record("event", {"event": "odd", "properties": {**odd, "distinct_id": f"u{i}", "$insert_id": f"i{i}"}}, 1.7e9 + i)
        for i in range(3)
    )
    batch = to_rows(records, schemas)
    dest.write(Ingest("track", records, rows=batch))
    dest.flush()
    dest.close(1)
    ((table, written),) = sink.writes
    assert written == batch.tables[table]
    assert type(written[0]["properties"]["big"]) is int


def test_a_rows_sinks_buffer_holds_about_what_it_counts(tmp_path):
    """MAX_BUFFER_BYTES bounds memory only if the buffer holds what it counts: encoded rows.
    Row dicts took about three times their lines."""
    dest, _sink, schemas = row_destination(tmp_path)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # Each record with strings of its own, as decoding a request makes them.
        records = tuple(
            Record("event", {"event": "v", "properties": {f"prop_{i}": f"value {i} {n} " + "x" * 30 for i in range(20)}}, 1.7e9)
            for n in range(2000)
        )
        dest.write(Ingest("track", records, rows=to_rows(records, schemas)))
        del records
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        counted = dest.backlog()
    finally:
        tracemalloc.stop()
        dest.close(1)
    assert counted > 1_500_000
    assert held < counted * 1.3, f"{held:,} bytes held for {counted:,} counted"
