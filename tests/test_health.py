"""/health tells the truth: each destination's state, and `?ready=1` answers 503 while one
is failing and 200 once it has written again, under real gunicorn."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.fixtures_core import run_proxy  # noqa: F401 - fixture
from tests.support.mixpanel_double import Behaviour
from tests.support.processes import free_port, wait_until


def event(i: int) -> dict:
    return {"event": "view", "properties": {"distinct_id": f"u{i}", "time": 1700000000 + i, "$insert_id": f"h{i}"}}


def health(url: str, ready: bool = True) -> tuple[int, dict]:
    reply = requests.get(f"{url}/health" + ("?ready=1" if ready else ""), timeout=5)
    return reply.status_code, reply.json()


def test_readiness_follows_a_destination_down_and_up_under_gunicorn(run_proxy, tmp_path: Path, capsys) -> None:  # noqa: F811
    control = tmp_path / "faulty.mode"
    proxy = run_proxy(
        destinations="files,tests.support.faulty:make",
        faulty_control=str(control),
        faulty_dir=str(tmp_path / "faulty"),
        delivery="batch",
        batch_max_seconds="0.2",
        retry_max_attempts="2",
        retry_base_seconds="0.01",
        retry_max_seconds="1",
    )
    status, body = health(proxy.url)
    assert status == 200 and body["status"] == "ok" and body["failing"] == []
    assert body["destinations"]["faulty"]["state"] == "ok"

    control.write_text("down")
    reply = requests.post(f"{proxy.url}/track?verbose=1", json=[event(1), event(2)], timeout=10)
    assert reply.status_code == 200  # the SDK is not held up: rows wait in the buffer, then the dead letter
    wait_until(lambda: health(proxy.url)[1]["destinations"]["faulty"]["state"] == "dead_lettering", 30, what="dead_lettering")
    status, down = health(proxy.url)
    faulty = down["destinations"]["faulty"]
    assert status == 503 and down["status"] == "degraded" and down["failing"] == ["faulty"]
    assert faulty["ready"] is False and faulty["last_error"] == "transient: injected outage"
    assert faulty["dead_lettered_rows"] == 2 and faulty["retries"] >= 1 and faulty["last_error_age_seconds"] >= 0
    assert down["destinations"]["files"]["state"] == "ok"  # the others are unaffected
    plain_status, plain = health(proxy.url, ready=False)
    assert plain_status == 200 and plain["status"] == "degraded"  # the plain form reports, it does not fail

    control.write_text("up")
    reply = requests.post(f"{proxy.url}/track?verbose=1", json=[event(3)], timeout=10)
    assert reply.status_code == 200
    wait_until(lambda: health(proxy.url)[0] == 200, 30, what="recovery")
    status, up = health(proxy.url)
    faulty = up["destinations"]["faulty"]
    assert up["status"] == "ok" and faulty["state"] == "ok" and faulty["written_rows"] == 1
    assert faulty["last_success_age_seconds"] >= 0 and faulty["last_error"] == "transient: injected outage"  # history stays
    with capsys.disabled():
        print("\n/health?ready=1 while down ->", 503, json.dumps(down, indent=1))
        print("/health?ready=1 after recovery ->", status, json.dumps(up, indent=1))


def test_synchronous_mixpanel_reports_unavailable_then_ok(make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url, mixpanel_timeout_seconds="0.5").test_client()
    mp.behaviour = Behaviour(status=503)
    assert client.post("/track", json=[event(1)]).status_code == 503
    reply = client.get("/health?ready=1")
    mixpanel = reply.get_json()["destinations"]["mixpanel"]
    assert reply.status_code == 503 and mixpanel["state"] == "unavailable"
    assert mixpanel["last_error"] == "Mixpanel answered HTTP 503"
    mp.behaviour = Behaviour()
    assert client.post("/track", json=[event(2)]).status_code == 200
    reply = client.get("/health?ready=1")
    assert reply.status_code == 200 and reply.get_json()["destinations"]["mixpanel"]["state"] == "ok"


def test_unreachable_mixpanel_is_unavailable(make_app) -> None:
    client = make_app(
        destinations="mixpanel", mixpanel_api_host=f"http://127.0.0.1:{free_port()}", mixpanel_timeout_seconds="0.3"
    ).test_client()
    assert client.post("/track", json=[event(1)]).status_code == 503
    reply = client.get("/health?ready=1")
    assert reply.status_code == 503
    assert reply.get_json()["destinations"]["mixpanel"]["last_error"].startswith("Mixpanel unavailable")
