"""The transform hooks, through the running app: Mixpanel and the local files both see the result."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.settings import ConfigError
from tests.support.files import rows as file_rows

ROOT = Path(__file__).resolve().parents[1]


def events(*names: str) -> list[dict]:
    return [{"event": n, "properties": {"distinct_id": "u", "time": 1700000000, "$insert_id": f"id-{n}"}} for n in names]


@pytest.fixture
def post(make_app, mp):
    def run(payload, endpoint="/track", **env):
        app = make_app(destinations="mixpanel,files", mixpanel_api_host=mp.url, mixpanel_token="tok", **env)
        reply = app.test_client().post(f"{endpoint}?verbose=1", json=payload)
        return app, reply

    return run


def test_dict_result_replaces_the_record_everywhere(post, mp, tmp_path):
    _, reply = post(events("a"), transform="tests.support.transforms:tag")
    assert reply.status_code == 200 and reply.get_json()["status"] == 1
    (sent,) = mp.records("track")
    assert sent["properties"]["transformed"] is True
    assert sent["properties"]["when"] == "2024-01-01T00:00:00+00:00"
    (row,) = file_rows(tmp_path / "data", "events")
    assert row["properties"] == sent["properties"]


def test_none_drops_the_record_and_counts_it(post, mp, tmp_path):
    from core import metrics

    before = metrics.DROPPED.labels("all", "transform_dropped")._value.get()
    _, reply = post(events("keep", "secret", "keep2"), transform="tests.support.transforms:drop_secret")
    assert reply.status_code == 200
    assert [r["event"] for r in mp.records("track")] == ["keep", "keep2"]
    assert [r["event"] for r in file_rows(tmp_path / "data", "events")] == ["keep", "keep2"]
    assert metrics.DROPPED.labels("all", "transform_dropped")._value.get() == before + 1


def test_everything_dropped_still_answers_success(post, mp):
    _, reply = post(events("secret"), transform="tests.support.transforms:drop_secret")
    assert reply.status_code == 200 and reply.get_json()["status"] == 1
    assert mp.records("track") == []


def test_list_result_makes_several_records(post, mp, tmp_path):
    post(events("a"), transform="tests.support.transforms:split")
    assert [r["event"] for r in mp.records("track")] == ["a", "a (copy)"]
    assert sorted(r["insert_id"] for r in file_rows(tmp_path / "data", "events")) == ["id-a", "id-a-copy"]


def test_raising_hook_passes_the_record_unchanged_by_default(post, mp, caplog):
    caplog.set_level(logging.INFO)
    _, reply = post(events("ok", "bad"), transform="tests.support.transforms:boom")
    assert reply.status_code == 200
    assert [r["event"] for r in mp.records("track")] == ["ok", "bad"]
    assert "RuntimeError" in caplog.text
    assert "secret-payload-value" not in caplog.text and "id-bad" not in caplog.text  # no payload in logs


def test_raising_hook_can_drop(post, mp):
    post(events("ok", "bad"), transform="tests.support.transforms:boom", transform_on_error="drop")
    assert [r["event"] for r in mp.records("track")] == ["ok"]


def test_a_failing_hook_cannot_leak_its_mutations(post, mp):
    post(events("a"), transform="tests.support.transforms:mutate_and_raise")
    (sent,) = mp.records("track")
    assert "mutated" not in sent["properties"]


def test_hook_loaded_from_a_file_path(post, mp):
    payload = [
        {"event": "a", "properties": {"distinct_id": "u", "$email": "x@example.com", "email": "y@example.com", "plan": "pro"}}
    ]
    post(payload, transform=f"{ROOT}/examples/strip_pii.py:transform")
    (sent,) = mp.records("track")
    assert "$email" not in sent["properties"] and "email" not in sent["properties"]
    assert sent["properties"]["plan"] == "pro"


def test_strip_pii_example_on_profiles(post, mp):
    payload = {"$distinct_id": "u", "$set": {"$email": "x@example.com", "plan": "pro"}, "$unset": ["$phone", "other"]}
    post(payload, endpoint="/engage", transform=f"{ROOT}/examples/strip_pii.py:transform")
    (sent,) = mp.records("engage")
    assert sent["$set"] == {"plan": "pro"} and sent["$unset"] == ["other"]


def test_truncate_ip_example_touches_only_the_warehouse_copy(make_app, mp, tmp_path):
    app = make_app(
        destinations="mixpanel,files",
        mixpanel_api_host=mp.url,
        mixpanel_token="tok",
        warehouse_transform=f"{ROOT}/examples/truncate_ip.py:transform",
    )
    client = app.test_client()
    client.post("/track", json=events("a"), headers={"X-Forwarded-For": "203.0.113.77"})
    client.post("/engage", json={"$distinct_id": "u", "$set": {"a": 1}}, headers={"X-Forwarded-For": "2001:db8:1:2::9"})
    assert mp.records("track")[0]["properties"]["ip"] == "203.0.113.77"
    assert mp.records("engage")[0]["$ip"] == "2001:db8:1:2::9"
    assert file_rows(tmp_path / "data", "events")[0]["properties"]["ip"] == "203.0.113.0"
    assert file_rows(tmp_path / "data", "users")[0]["ip"] == "2001:db8:1::"


@pytest.mark.parametrize(
    "spec",
    ["nocolon", "tests.support.transforms:missing", "no.such.module:f", "/nope/file.py:f", "tests.support.transforms:ROOT"],
)
def test_bad_transform_specs_stop_start_up(make_settings, spec):
    from app import create_app

    with pytest.raises(ConfigError, match="TRANSFORM"):
        create_app(make_settings(transform=spec))


def test_bad_on_error_value(make_settings):
    from app import create_app

    with pytest.raises(ConfigError, match="TRANSFORM_ON_ERROR"):
        create_app(make_settings(transform="tests.support.transforms:tag", transform_on_error="explode"))
