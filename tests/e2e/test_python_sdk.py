"""The real Python SDK (PyPI `mixpanel`), with `Consumer` (one request per call) and
`BufferedConsumer` (batches), through the proxy under gunicorn into Mixpanel (the double)
and every destination at once. Each request is noted at the SDK's HTTP session (a
`requests` response hook) with the exact body it sent.

The proxy runs with MIXPANEL_TOKEN set, so the token normalisation is part of the check.
`alias` is left out: the SDK sends it through a `Consumer()` of its own to
api.mixpanel.com whatever consumer it was given (documented in the SDK), so no proxy can
see it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from mixpanel import BufferedConsumer, Consumer, Mixpanel

from tests.e2e import check, wire

pytestmark = pytest.mark.emulator
SECRET = "py-e2e-api-secret"
PEOPLE = {
    "$set": "people_set",
    "$set_once": "people_set_once",
    "$add": "people_increment",
    "$append": "people_append",
    "$union": "people_union",
    "$unset": "people_unset",
    "$remove": "people_remove",
    "$delete": "people_delete",
}
GROUPS = {
    "$set": "group_set",
    "$set_once": "group_set_once",
    "$union": "group_union",
    "$unset": "group_unset",
    "$remove": "group_remove",
    "$delete": "group_delete",
}
TRICKY = {
    "plan": "two words + plus & amp=eq",
    "text": 'line1\nline2 "q" \\ ünï 🎉',
    "nested": {"a": [1, 2, {"b": None}]},
    "$x": "$browser ?&=+",
}
NOT_APPLICABLE = {
    "alias": "not sent through the proxy: the Python SDK posts alias with its own Consumer() to api.mixpanel.com, "
    "whatever consumer is configured (documented in the SDK)"
}


def python_operation(endpoint: str, record: Any, request: wire.Sent) -> str:
    if endpoint == "engage":
        op = next((label for key, label in PEOPLE.items() if key in record), "people (other)")
    elif endpoint == "groups":
        op = next((label for key, label in GROUPS.items() if key in record), "groups (other)")
    elif endpoint == "import":
        op = "merge" if record.get("event") == "$merge" else "import_data"
    else:
        op = "track"
    return f"{op} [{request.transport}]"


def capture(consumer: Consumer | BufferedConsumer, name: str, sink: list[wire.Sent]) -> None:
    session = (consumer._consumer if isinstance(consumer, BufferedConsumer) else consumer)._session

    def noted(response: Any, *args: Any, **kwargs: Any) -> None:
        req = response.request
        body = req.body if isinstance(req.body, bytes) else (req.body or "").encode()
        headers = {k.lower(): v for k, v in req.headers.items()}
        sink.append(wire.Sent("python", req.method, req.url, headers, body, name, response.status_code))

    session.hooks["response"].append(noted)


def exercise(mp: Mixpanel, tag: str, unique: str, events: int, flush: Any = None) -> None:
    user, group = f"py-{tag}-{unique}", f"acme-{tag}-{unique}"
    for i in range(events):
        mp.track(user, "py track", {"i": i, "$device_id": f"dev-{unique}", "$user_id": user, **TRICKY})
    mp.import_data("legacy-api-key", user, "py import", 1767225600, {"$insert_id": f"imp-{tag}-{unique}"}, api_secret=SECRET)
    mp.merge("legacy-api-key", user, f"{user}-other", api_secret=SECRET)
    if flush:
        # BufferedConsumer keeps the credentials of the *last* send() for the whole flush:
        # the profile updates below would leave /import without them (a 401, proxy or not).
        flush()
    mp.people_set(user, {"$name": "Ada Lovelace", "tier": 2, **TRICKY})
    mp.people_set_once(user, {"first_seen": "2026-01-01T00:00:00"})
    mp.people_increment(user, {"logins": 2})
    mp.people_append(user, {"pages": "/pricing"})
    mp.people_union(user, {"tags": ["a", "b"]})
    mp.people_remove(user, {"tags": "a"})
    mp.people_unset(user, ["obsolete"])
    mp.people_delete(user)
    mp.group_set("company", group, {"seats": 12, "name": "Acme & Co"})
    mp.group_set_once("company", group, {"founded": 1999})
    mp.group_union("company", group, {"domains": ["acme.example"]})
    mp.group_remove("company", group, {"domains": "old.example"})
    mp.group_unset("company", group, ["obsolete"])
    mp.group_delete("company", group)


def test_python_sdk_through_the_proxy_into_every_destination(e2e_proxy, mp, tmp_path) -> None:
    unique = uuid.uuid4().hex[:8]
    configured = f"tok-py-configured-{unique}"
    proxy = e2e_proxy(mixpanel_token=configured)
    urls = {
        f"{name}_url": f"{proxy.url}/{path}"
        for name, path in (("events", "track"), ("people", "engage"), ("groups", "groups"), ("import", "import"))
    }
    sent: list[wire.Sent] = []
    single, buffered = Consumer(**urls, retry_limit=0), BufferedConsumer(max_size=50, **urls, retry_limit=0)
    capture(single, "Consumer", sent)
    capture(buffered, "BufferedConsumer", sent)
    started_ms = int(time.time() * 1000)
    try:
        exercise(Mixpanel(f"tok-py-{unique}", consumer=single), "single", unique, events=2)
        exercise(Mixpanel(f"tok-py-{unique}", consumer=buffered), "buffered", unique, 60, buffered.flush)  # 50 + 10
        buffered.flush()
    finally:
        single._session.close()
        buffered._consumer._session.close()
    finished_ms = int(time.time() * 1000) + 1000

    assert all(r.status == 200 for r in sent), [(r.url, r.status) for r in sent]
    batches = [len(wire.decode(r)) for r in sent if r.transport == "BufferedConsumer" and r.endpoint == "track"]
    assert sorted(batches) == [10, 50]
    records = wire.sent_records(sent, python_operation, client_ip="127.0.0.1", token=configured, times=(started_ms, finished_ms))
    assert len({r.operation for r in records}) == 2 * (1 + 2 + len(PEOPLE) + len(GROUPS))
    assert all(wire.flag(r.request, "ip") == "0" for r in records)  # the SDK sends ip=0 (in its form body)

    report = check.run("python", records, sent, mp, proxy, not_applicable=NOT_APPLICABLE)
    assert not report.problems, report.text
