"""Delivery scenarios with real processes: gunicorn with gevent workers, load on 127.0.0.1.

Each scenario prints what it sent, landed, spooled and replayed (`pytest -s` shows it).
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.support import files
from tests.support.load import browser_batch, run_load
from tests.support.metrics import metric_sum
from tests.support.processes import flask_command, free_port, gunicorn, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "DATA_DIR": str(tmp_path / "data"),
        "DEAD_LETTER_DIR": str(tmp_path / "spool"),
        "BUFFER_DIR": str(tmp_path / "buffer"),
        "FAULTY_DIR": str(tmp_path / "faulty"),
        "FAULTY_CONTROL": str(tmp_path / "faulty.mode"),
        "LOG_LEVEL": "WARNING",
        "DELIVERY": "batch",
    }


def insert_ids(rows: list[dict]) -> list[str]:
    return [r["insert_id"] for r in rows]


def test_outage_loses_nothing(env, tmp_path):
    """The faulty destination goes down a third of the way through a load run and comes
    back at two thirds. Every accepted record reaches it, directly or by replay."""
    env.update(
        DESTINATIONS="files,tests.support.faulty:make",
        BATCH_MAX_SECONDS="0.3",
        RETRY_MAX_ATTEMPTS="3",
        RETRY_BASE_SECONDS="0.05",
        RETRY_MAX_SECONDS="1",
        FAULTY_MAX_BUFFER_BYTES="65536",
    )
    control = Path(env["FAULTY_CONTROL"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    total_requests, batch = 300, 10

    def switch(progress: int) -> None:
        if progress == total_requests // 3:
            control.write_text("down")
        elif progress == 2 * total_requests // 3:
            control.write_text("up")

    try:
        load = run_load(f"{url}/track/?ip=1", total_requests, batch, threads=4, run="outage", on_progress=switch)
        sent = total_requests * batch
        assert load.statuses == {200: total_requests}, load.statuses
        assert len(load.accepted) == sent

        # Let both destinations finish: every record is either written or spooled.
        def settled() -> bool:
            written = metric_sum(url, "mpproxy_rows_out_total", destination="faulty")
            spooled = metric_sum(url, "mpproxy_dead_lettered_rows_total", destination="faulty")
            return written + spooled == sent and len(files.rows(Path(env["DATA_DIR"]), "events")) == sent

        wait_until(settled, 60, 0.5, what="delivery to settle")
        assert metric_sum(url, "mpproxy_records_in_total", destination="faulty") == sent
        assert metric_sum(url, "mpproxy_records_in_total", destination="files") == sent
        assert metric_sum(url, "mpproxy_rows_out_total", destination="files") == sent
        direct = metric_sum(url, "mpproxy_rows_out_total", destination="faulty")
        spooled = metric_sum(url, "mpproxy_dead_lettered_rows_total", destination="faulty")
        assert spooled > 0, "the outage should have forced rows into the spool"
        assert metric_sum(url, "mpproxy_buffer_rows", destination="faulty") == 0

        # After recovery, new records flow straight through again.
        after = run_load(f"{url}/track/?ip=1", 50, batch, threads=2, run="recovered")
        assert after.statuses == {200: 50}
        load.accepted |= after.accepted
        sent += 500
        wait_until(settled, 60, 0.5, what="delivery after recovery")
        assert metric_sum(url, "mpproxy_rows_out_total", destination="faulty") > direct  # written directly again
        direct = metric_sum(url, "mpproxy_rows_out_total", destination="faulty")
        spooled = metric_sum(url, "mpproxy_dead_lettered_rows_total", destination="faulty")
    finally:
        assert server.stop() == 0, server.log()[-2000:]

    assert sorted(insert_ids(files.rows(Path(env["DATA_DIR"]), "events"))) == sorted(load.accepted)
    replay = flask_command(env, "replay")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert f"{int(spooled)} replayed" in replay.stdout
    landed = insert_ids(files.rows(Path(env["FAULTY_DIR"]), "events"))
    assert len(landed) == sent and set(landed) == load.accepted  # all of them, each exactly once
    print(f"\noutage: sent {sent}, landed directly {int(direct)}, spooled {int(spooled)}, replayed {int(spooled)}, lost 0")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_flushes_everything_that_got_a_200(env, tmp_path, sig):
    env.update(DESTINATIONS="files", BATCH_MAX_SECONDS="600", BATCH_MAX_RECORDS="1000000")
    port = free_port()
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")

    def terminate(progress: int) -> None:
        if progress == 150:
            threading.Thread(target=server.signal, args=(sig,), daemon=True).start()

    load = run_load(f"http://127.0.0.1:{port}/track/", 400, 10, threads=4, run="term", on_progress=terminate)
    assert server.proc is not None
    server.proc.wait(60)
    assert server.proc.returncode == 0, server.log()[-2000:]
    landed = insert_ids(files.rows(Path(env["DATA_DIR"]), "events"))
    assert len(load.accepted) >= 1500
    assert load.accepted <= set(landed), f"{len(load.accepted - set(landed))} accepted records lost"
    assert len(landed) == len(set(landed))
    assert set(landed) <= load.accepted | load.refused
    print(f"\n{sig.name}: answered 200 for {len(load.accepted)} records, landed {len(landed)}, lost 0")


def test_idle_flush_needs_no_new_request(env, tmp_path):
    env.update(DESTINATIONS="files", BATCH_MAX_SECONDS="2")
    port = free_port()
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    try:
        body, ids = browser_batch(0, 1, "idle")
        sent_at = time.monotonic()
        assert requests.post(f"http://127.0.0.1:{port}/track/", data=body, timeout=5).text == "1"
        wait_until(lambda: files.rows(Path(env["DATA_DIR"]), "events"), 15, 0.1, what="idle flush")
        print(f"\nidle flush: landed {time.monotonic() - sent_at:.1f}s after the only request")
        assert insert_ids(files.rows(Path(env["DATA_DIR"]), "events")) == ids
    finally:
        server.stop()


def test_mixpanel_batch_delivery_keeps_several_calls_out_at_once(env, tmp_path, mp):
    """MIXPANEL_DELIVERY=batch sends 50 events per /track call: one call at a time, a flush
    would wait a round trip per 50 events (about a thousand events/s per worker against the
    real Mixpanel). A slow double shows that calls overlap, and each event arrives once."""
    env.update(
        DESTINATIONS="mixpanel",
        MIXPANEL_DELIVERY="batch",
        MIXPANEL_API_HOST=mp.url,
        MIXPANEL_BATCH_MAX_SECONDS="0.2",
    )
    mp.behaviour.delay = 0.3
    port = free_port()
    server = gunicorn(env, port, workers=1, log=tmp_path / "gunicorn.log")
    try:
        body, ids = browser_batch(0, 500, "overlap")
        assert requests.post(f"http://127.0.0.1:{port}/track/", data=body, timeout=5).text == "1"
        wait_until(lambda: len(mp.records("track")) >= len(ids), 30, 0.1, what="500 events at the double")
        calls = mp.requests("track")
        print(f"\nMixpanel batch: {len(calls)} calls, at most {mp.peak_in_flight} at once")
        assert sorted(r["properties"]["$insert_id"] for r in mp.records("track")) == sorted(ids)
        assert len(calls) == 10 and all(len(call.records) == 50 for call in calls)
        assert 2 <= mp.peak_in_flight <= 8
    finally:
        server.stop()


def test_mixpanel_batch_records_wait_in_the_write_ahead_buffer_through_a_sigkill(env, tmp_path, mp):
    """With MIXPANEL_DELIVERY=batch the SDK's records (not rows) wait for Mixpanel in the
    write-ahead buffer: SIGKILLed before any flush, the proxy delivers every acknowledged
    event after a restart, once, with its properties exactly as the SDK sent them."""
    env.update(DESTINATIONS="mixpanel", MIXPANEL_DELIVERY="batch", MIXPANEL_API_HOST=mp.url, BUFFER="disk")
    env["MIXPANEL_BATCH_MAX_SECONDS"] = "600"  # nothing leaves before the kill
    port = free_port()
    server = gunicorn(env, port, workers=1, log=tmp_path / "gunicorn.log")
    sent: dict[str, dict] = {}
    for request_no in range(4):
        body, ids = browser_batch(request_no, 50, "wal-mp")
        assert requests.post(f"http://127.0.0.1:{port}/track/", data=body, timeout=5).text == "1"
        events = json.loads(base64.b64decode(body.removeprefix("data=")))
        sent.update({e["properties"]["$insert_id"]: e["properties"] for e in events})
    server.signal(signal.SIGKILL)
    assert server.proc is not None
    server.proc.wait(10)
    assert mp.records("track") == [], "the events left before the kill: the scenario proved nothing"

    env["MIXPANEL_BATCH_MAX_SECONDS"] = "0.2"
    again = gunicorn(env, free_port(), workers=1, log=tmp_path / "gunicorn-restart.log")
    try:
        wait_until(lambda: len(mp.records("track")) >= len(sent), 60, 0.2, what="every acknowledged event at the double")
    finally:
        assert again.stop() == 0, again.log()[-3000:]
    arrived = mp.records("track")
    print(f"\nSIGKILL with Mixpanel batch delivery: {len(sent)} acknowledged, {len(arrived)} delivered after the restart")
    assert sorted(r["properties"]["$insert_id"] for r in arrived) == sorted(sent)
    for record in arrived:
        properties = record["properties"]
        assert {k: properties[k] for k in sent[properties["$insert_id"]]} == sent[properties["$insert_id"]]


def test_a_working_destination_that_falls_behind_slows_requests_down_instead_of_spilling(env, tmp_path, mp):
    """The proxy takes events faster than a slow (but working) Mixpanel takes them: once the
    buffer is full, requests wait for the flush to make room (backpressure) rather than
    dead-lettering rows that Mixpanel would have taken, and every event arrives once."""
    env.update(
        DESTINATIONS="mixpanel",
        MIXPANEL_DELIVERY="batch",
        MIXPANEL_API_HOST=mp.url,
        MIXPANEL_BATCH_MAX_SECONDS="0.2",
        MIXPANEL_MAX_BUFFER_BYTES="65536",
    )
    mp.behaviour.delay = 0.05
    port = free_port()
    server = gunicorn(env, port, workers=1, log=tmp_path / "gunicorn.log")
    try:
        load = run_load(f"http://127.0.0.1:{port}/track/", 200, 50, threads=8, run="behind")
        assert load.statuses == {200: 200}, load.statuses
        wait_until(lambda: len(mp.records("track")) >= len(load.accepted), 60, 0.2, what="every event at the double")
        spooled = list(Path(env["DEAD_LETTER_DIR"]).rglob("*.ndjson"))
        arrived = [r["properties"]["$insert_id"] for r in mp.records("track")]
        print(f"\nfalling behind: {len(load.accepted)} accepted, {len(arrived)} arrived, {len(spooled)} spool files")
        assert spooled == []
        assert sorted(arrived) == sorted(load.accepted)
        url = f"http://127.0.0.1:{port}"
        assert metric_sum(url, "mpproxy_dead_lettered_rows_total", destination="mixpanel") == 0
        # The waits show in /metrics, so an operator can tell a destination that holds replies back.
        waits = metric_sum(url, "mpproxy_backpressure_waits_total", destination="mixpanel")
        seconds = metric_sum(url, "mpproxy_backpressure_seconds_total", destination="mixpanel")
        print(f"backpressure: {waits:.0f} requests waited {seconds:.2f} s in all")
        assert 0 < waits <= 200 and seconds > 0  # 200 requests
    finally:
        server.stop()


def test_hanging_destination_does_not_hold_up_replies_or_others(env, tmp_path):
    env.update(
        DESTINATIONS="files,tests.support.faulty:make",
        BATCH_MAX_SECONDS="0.2",
        DESTINATION_TIMEOUT_SECONDS="1",
        RETRY_MAX_ATTEMPTS="2",
        RETRY_MAX_SECONDS="3",
    )
    control = Path(env["FAULTY_CONTROL"])
    control.write_text("hang")
    port = free_port()
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    try:
        load = run_load(f"http://127.0.0.1:{port}/track/", 40, 5, threads=4, run="hang")
        assert load.statuses == {200: 40}
        wait_until(lambda: len(files.rows(Path(env["DATA_DIR"]), "events")) == 200, 30, what="files delivery")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: metric_sum(url, "mpproxy_dead_lettered_rows_total", destination="faulty") == 200, 60, 0.5)
    finally:
        control.write_text("up")
        server.stop()
    assert sorted(insert_ids(files.rows(Path(env["DATA_DIR"]), "events"))) == sorted(load.accepted)


def test_s3_outage_loses_nothing(env, tmp_path):
    """The S3 stand-in (moto, in this process so its data survives a restart) is stopped
    between load phases and restarted: batches that could not be written are spooled
    while it is down (replies stay 200) and replayed afterwards."""
    import gzip
    import json

    from moto.server import ThreadedMotoServer

    from tests.support.emulators import s3_client

    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    s3_url = f"http://127.0.0.1:{moto_port}"
    s3_client(s3_url).create_bucket(Bucket="lake")
    env.update(
        DESTINATIONS="files,s3",
        S3_BUCKET="lake",
        S3_REGION="us-east-1",
        S3_ENDPOINT_URL=s3_url,
        S3_ACCESS_KEY_ID="test",
        S3_SECRET_ACCESS_KEY="test",
        BATCH_MAX_SECONDS="0.3",
        RETRY_MAX_ATTEMPTS="3",
        RETRY_BASE_SECONDS="0.05",
        RETRY_MAX_SECONDS="1",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    batch = 10
    state = {"moto": moto}

    def s3_settled(expected_out: float, expected_spooled: float) -> Callable[[], bool]:
        return lambda: (
            (
                metric_sum(url, "mpproxy_rows_out_total", destination="s3"),
                metric_sum(url, "mpproxy_dead_lettered_rows_total", destination="s3"),
            )
            == (expected_out, expected_spooled)
        )

    try:
        # Phase 1: S3 up. Phase 2: S3 stopped. Phase 3: S3 restarted. 100 requests each.
        load = run_load(f"{url}/track/", 100, batch, threads=4, run="s3-up")
        wait_until(s3_settled(1000, 0), 30, 0.2, what="phase 1 delivery")
        state["moto"].stop()
        down = run_load(f"{url}/track/", 100, batch, threads=4, run="s3-down")
        wait_until(s3_settled(1000, 1000), 60, 0.2, what="phase 2 spooling")
        state["moto"] = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
        state["moto"].start()
        back = run_load(f"{url}/track/", 100, batch, threads=4, run="s3-back")
        wait_until(s3_settled(2000, 1000), 30, 0.2, what="phase 3 delivery")
        for phase in (down, back):
            load.accepted |= phase.accepted
            assert phase.statuses == {200: 100}
        sent = 3000
        direct, spooled = 2000, 1000
    finally:
        assert server.stop() == 0, server.log()[-2000:]

    try:
        replay = flask_command(env, "replay")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        client = s3_client(s3_url)
        landed: list[str] = []
        objects = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix="events/"):
            for item in page.get("Contents", []):
                objects += 1
                body = gzip.decompress(client.get_object(Bucket="lake", Key=item["Key"])["Body"].read())
                landed += [json.loads(line)["insert_id"] for line in body.splitlines()]
    finally:
        state["moto"].stop()
    assert len(landed) == sent and set(landed) == load.accepted
    print(f"\ns3 outage: sent {sent}, landed directly {int(direct)}, spooled {int(spooled)}, replayed {int(spooled)}, lost 0")


def spooled_ids(spool: Path) -> list[str]:
    from destinations.deadletter import DeadLetter

    return [row["insert_id"] for batch in DeadLetter(str(spool)).batches() for row in batch.rows]


def test_shutdown_while_a_destination_hangs_spools_what_it_could_not_write(env, tmp_path):
    """The destination never answers and its per-attempt timeout (15 s) is longer than the
    drain gets (GRACEFUL_TIMEOUT=8): every acknowledged record must still be on disk."""
    env.update(
        DESTINATIONS="files,tests.support.faulty:make",
        BATCH_MAX_SECONDS="0.2",
        GRACEFUL_TIMEOUT="8",
        DESTINATION_TIMEOUT_SECONDS="15",
    )
    Path(env["FAULTY_CONTROL"]).write_text("hang")
    port = free_port()
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    try:
        load = run_load(f"http://127.0.0.1:{port}/track/", 100, 10, threads=4, run="hang-stop")
        assert load.statuses == {200: 100}
        time.sleep(0.5)  # let the flushers pick up a batch and hang on it
        assert server.stop(timeout=30) == 0, server.log()[-2000:]
    finally:
        Path(env["FAULTY_CONTROL"]).write_text("up")
        server.stop()
    spooled = spooled_ids(Path(env["DEAD_LETTER_DIR"]))
    written = insert_ids(files.rows(Path(env["FAULTY_DIR"]), "events"))
    assert load.accepted <= set(spooled) | set(written), "acknowledged rows lost while draining"
    print(f"\nhang + shutdown: 1000 acknowledged, {len(written)} written, {len(spooled)} spooled, lost 0")


def test_sync_delivery_to_a_hanging_destination_spools_within_the_deadline(env, tmp_path):
    env.update(DESTINATIONS="files,tests.support.faulty:make", DELIVERY="sync", DESTINATION_TIMEOUT_SECONDS="1")
    Path(env["FAULTY_CONTROL"]).write_text("hang")
    port = free_port()
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    try:
        load = run_load(f"http://127.0.0.1:{port}/track/?verbose=1", 8, 5, threads=4, run="hang-sync")
    finally:
        Path(env["FAULTY_CONTROL"]).write_text("up")
        server.stop()
    assert load.statuses == {200: 8}  # stored in the spool, so the SDK need not retry
    assert sorted(spooled_ids(Path(env["DEAD_LETTER_DIR"]))) == sorted(load.accepted)
    assert sorted(insert_ids(files.rows(Path(env["DATA_DIR"]), "events"))) == sorted(load.accepted)
