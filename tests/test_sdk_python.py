"""The real Python SDK (PyPI `mixpanel` 5.4) against the proxy under gunicorn: no call
may raise (the SDK crashes on a bare `1`: it always sends verbose=1 in the body),
Mixpanel gets exactly its records, and local files get the rows."""

from __future__ import annotations

import base64

import pytest
from mixpanel import Consumer, Mixpanel, MixpanelException

from tests.fixtures_core import read_rows, run_proxy  # noqa: F401
from tests.support.mixpanel_double import Behaviour

TOKEN = "tok-py"
EVENT_COLUMNS = {"event", "event_time", "insert_time", "token", "device_id", "insert_id", "user_id", "distinct_id", "properties"}


def _exercise(client: Mixpanel) -> None:
    client.track("user 1", "Signed up", {"plan": "two words + plus & amp=eq", "$device_id": "dev-1", "$user_id": "user 1"})
    client.people_set("user 1", {"$name": "Ada Lovelace", "tier": 2})
    client.group_set("company", "acme", {"seats": 12})
    client.import_data("legacy-api-key", "user 1", "Old event", 1600000000, {"$insert_id": "py-imp-1"}, api_secret="py-secret")


def _check(mp, proxy) -> None:
    [tracked] = mp.records("track")
    props = tracked["properties"]
    assert tracked["event"] == "Signed up"
    assert isinstance(props["time"], float) and len(props["$insert_id"]) == 32
    assert props == {
        "token": TOKEN,
        "distinct_id": "user 1",
        "time": props["time"],
        "$insert_id": props["$insert_id"],
        "mp_lib": "python",
        "$lib_version": props["$lib_version"],
        "plan": "two words + plus & amp=eq",
        "$device_id": "dev-1",
        "$user_id": "user 1",
    }  # the SDK sends ip=0 in its form body: no ip added
    [profile] = mp.records("engage")
    assert profile == {
        "$token": TOKEN,
        "$time": profile["$time"],
        "$distinct_id": "user 1",
        "$set": {"$name": "Ada Lovelace", "tier": 2},
    }
    [group] = mp.records("groups")
    assert group == {
        "$token": TOKEN,
        "$time": group["$time"],
        "$group_key": "company",
        "$group_id": "acme",
        "$set": {"seats": 12},
    }
    [imported] = mp.records("import")
    iprops = imported["properties"]
    assert imported == {
        "event": "Old event",
        "properties": {
            "token": TOKEN,
            "distinct_id": "user 1",
            "time": 1600000000,
            "$insert_id": "py-imp-1",
            "mp_lib": "python",
            "$lib_version": iprops["$lib_version"],
        },
    }
    [import_request] = mp.requests("import")
    assert import_request.headers["authorization"] == "Basic " + base64.b64encode(b"py-secret:").decode()
    for request in mp.requests():
        assert "x-forwarded-for" not in request.headers
        if not request.path.startswith("/import"):
            assert request.query["ip"] == "0"

    events = {r["event"]: r for r in read_rows(proxy.data_dir, "events")}
    assert set(events) == {"Signed up", "Old event"}
    row = events["Signed up"]
    assert set(row) == EVENT_COLUMNS
    assert (row["token"], row["device_id"], row["user_id"], row["distinct_id"]) == (TOKEN, "dev-1", "user 1", "user 1")
    assert row["insert_id"] == props["$insert_id"] and row["properties"] == props
    old = events["Old event"]
    assert (old["insert_id"], old["event_time"]) == ("py-imp-1", "2020-09-13T12:26:40.000000Z")
    [user] = read_rows(proxy.data_dir, "users")
    assert set(user) == {"token", "distinct_id", "ip", "insert_time", "operation", "properties"}
    assert (user["token"], user["distinct_id"], user["ip"], user["operation"]) == (TOKEN, "user 1", None, "$set")
    assert user["properties"] == {"$name": "Ada Lovelace", "tier": 2}
    [group_row] = read_rows(proxy.data_dir, "groups")
    assert set(group_row) == {"token", "group_key", "group_id", "operation", "insert_time", "properties"}
    assert (group_row["group_key"], group_row["group_id"], group_row["operation"]) == ("company", "acme", "$set")
    assert group_row["properties"] == {"seats": 12}


def test_python_sdk_with_endpoint_urls(run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(destinations="mixpanel,files", mixpanel_api_host=mp.url)
    consumer = Consumer(
        events_url=f"{proxy.url}/track",
        people_url=f"{proxy.url}/engage",
        groups_url=f"{proxy.url}/groups",
        import_url=f"{proxy.url}/import",
        retry_limit=0,
    )
    try:
        _exercise(Mixpanel(TOKEN, consumer=consumer))
    finally:
        consumer._session.close()  # no idle keep-alive connection left to delay the proxy's shutdown
    _check(mp, proxy)


def test_python_sdk_with_api_host_over_https(run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(tls=True, destinations="mixpanel,files", mixpanel_api_host=mp.url)
    consumer = Consumer(api_host=proxy.url.removeprefix("https://"), verify_cert=False, retry_limit=0)
    try:
        _exercise(Mixpanel(TOKEN, consumer=consumer))
    finally:
        consumer._session.close()  # no idle keep-alive connection left to delay the proxy's shutdown
    _check(mp, proxy)


def test_python_sdk_raises_cleanly_when_mixpanel_rejects(run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(destinations="mixpanel", mixpanel_api_host=mp.url)
    mp.behaviour = Behaviour(reject=True)
    consumer = Consumer(events_url=f"{proxy.url}/track", retry_limit=0)
    with pytest.raises(MixpanelException, match="rejected by test"):
        Mixpanel(TOKEN, consumer=consumer).track("user 1", "Signed up")
    consumer._session.close()
