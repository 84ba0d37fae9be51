"""Every request shape each Mixpanel SDK sends, decoded into the exact records that reach
Mixpanel, answered with the exact reply that SDK needs (docs/wire-formats.md)."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest

from tests.fixtures_core import b64, b64_with, read_rows

ROOT = Path(__file__).resolve().parents[1]
CLIENT = "203.0.113.7"
TEXT = "text/plain"
JSON = "application/json"
BASIC = "Basic " + base64.b64encode(b"secret-for-import:").decode()


@dataclass
class Case:
    name: str
    method: str
    path: str  # with query string
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    sent: list[Any] = field(default_factory=list)  # what reached Mixpanel
    reply: bytes | Callable[[Any], None] = b"1"
    mimetype: str = TEXT
    upstream_ip: str = "1"  # the ip flag the proxy sends Mixpanel
    # The SDK's own JSON, where Mixpanel gets it byte for byte (a JSON array the proxy read as
    # it was, whose records only gained the client IP, which then goes in X-Forwarded-For).
    as_sent: bytes | None = None


def _event(name: str, **props: Any) -> dict[str, Any]:
    return {"event": name, "properties": props}


def _with_ip(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "properties": {**item["properties"], "ip": CLIENT}}


def _compact(value: Any) -> bytes:
    """JSON as the SDKs' encoders write it: compact, UTF-8 (what tests.fixtures_core.b64 encodes)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _verbose_ok(rows: int) -> Callable[[Any], None]:
    def check(body: Any) -> None:
        assert body["status"] == 1 and body["error"] is None
        assert [(d["name"], d["status"], d["inserted_rows"], d["failed_rows"]) for d in body["destinations"]] == [
            ("mixpanel", "success", rows, 0)
        ]
        assert all("error" not in d and isinstance(d["duration_ms"], float) for d in body["destinations"])

    return check


# --- payloads per SDK -----------------------------------------------------------------------

BROWSER_BATCH = [
    _event(
        "Signed up",
        distinct_id="$device:18f0a",
        token="tok-web",
        time=1700000000.123,
        plan="héllo wörld ?> ~~",
        **{"$insert_id": "a1b2c3", "$browser": "Chrome", "mp_lib": "web"},
    ),
    _event(
        "Page view",
        distinct_id="$device:18f0a",
        token="tok-web",
        time=1700000001.5,
        **{"$insert_id": "d4e5f6", "$current_url": "/a?b"},
    ),
]
BROWSER_ONE = _event("Clicked", distinct_id="u-9", token="tok-web", time=1700000002.25, label="?>?>~~ ÿ", **{"$insert_id": "g7"})
BEACON = [
    _event("$mp_page_leave", distinct_id="u-9", token="tok-web", time=1700000003.0, **{"$insert_id": "h8", "note": "?>?>~~"})
]
PYTHON_EVENT = _event(
    "Bought",
    distinct_id="py 1",
    token="tok-py",
    time=1700000004.5,
    item="two words + plus & amp=eq",
    mp_lib="python",
    **{"$insert_id": "p1"},
)
NODE_BATCH = [
    _event("node batch", distinct_id="n1", time=1700000005000, token="tok-node", note="?>?>~~ ÿ", mp_lib="node"),
    _event("node batch", distinct_id="n2", time=1700000006000, token="tok-node", note="~~~???", mp_lib="node"),
]
NODE_ONE = _event("node single", distinct_id="n3", token="tok-node", extra="~~~???", mp_lib="node", time=1700000007)
ANDROID = [
    {
        "event": "App open",
        "properties": {
            "token": "tok-android",
            "distinct_id": "a-1",
            "time": 1700000008123,
            "$os": "Android",
            "mp_lib": "android",
        },
        "$mp_metadata": {"$mp_event_id": "5f1e", "$mp_session_id": "s1", "$mp_session_seq_id": 3},
    }
]
SWIFT = [
    {
        "event": "Swift tap",
        "properties": {"token": "tok-swift", "distinct_id": "sw-1", "time": 1700000009456, "mp_lib": "swift", "$os": "iOS"},
        "$mp_metadata": {"$mp_event_id": "abcd", "$mp_session_id": "s2"},
    }
]
SWIFT_LEGACY = [_event("Legacy swift", token="tok-swift", distinct_id="sw-2", time=1700000010.0, pad="x" * 80, odd="~~~???")]
IOS_PROFILE = [{"$token": "tok-ios", "$distinct_id": "ios-1", "$set": {"$name": "Ada", "tier": 2}}]
IOS_GROUP = [{"$token": "tok-ios", "$group_key": "company", "$group_id": "acme", "$set": {"seats": 12}}]
IMPORTS = [
    _event("old event", distinct_id="i1", time=1600000000, **{"$insert_id": "imp-1"}),
    _event("old event", distinct_id="i2", time=1600000001, **{"$insert_id": "imp-2"}),
]


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data)


def _crlf_wrapped(text: str) -> str:
    return "\r\n".join(text[i : i + 64] for i in range(0, len(text), 64))


CASES = [
    Case(
        "browser batch: base64 form POST, verbose=1 in query",
        "POST",
        "/track/?verbose=1&ip=1&_=1700000000999",
        b"data=" + quote(b64_with(BROWSER_BATCH, "+", "/"), safe="").encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
        BROWSER_BATCH,
        _verbose_ok(2),
        JSON,
        as_sent=_compact(BROWSER_BATCH),
    ),
    Case(
        "browser GET: base64 data in the query string",
        "GET",
        f"/track/?data={quote(b64_with(BROWSER_ONE, '+', '/'), safe='')}&ip=1&_=1700000001000",
        sent=[_with_ip(BROWSER_ONE)],
    ),
    Case(
        "browser sendBeacon: text/plain body holding data=...",
        "POST",
        "/track/?ip=1&_=1700000002000",
        b"data=" + quote(b64_with(BEACON, "+", "/"), safe="").encode(),
        {"Content-Type": "text/plain;charset=UTF-8"},
        BEACON,
        as_sent=_compact(BEACON),
    ),
    Case(
        "python: JSON in a form body, verbose and ip in the body, spaces as +",
        "POST",
        "/track",
        urlencode({"data": json.dumps(PYTHON_EVENT), "verbose": 1, "ip": 0}).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
        [PYTHON_EVENT],
        _verbose_ok(1),
        JSON,
        upstream_ip="0",
    ),
    Case(
        "node track_batch: raw base64 with literal + and / in the form body",
        "POST",
        "/track?ip=0&verbose=0",
        b"data=" + b64_with(NODE_BATCH, "+", "/").encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
        NODE_BATCH,
        upstream_ip="0",
    ),
    Case(
        "node track: base64 in the query string",
        "GET",
        "/track?" + urlencode({"ip": 0, "verbose": 0, "data": b64_with(NODE_ONE, "+", "/")}),
        sent=[NODE_ONE],
        upstream_ip="0",
    ),
    Case(
        "android: gzip form body with JSON data",
        "POST",
        "/track/?ip=1",
        _gzip(urlencode({"data": json.dumps(ANDROID)}).encode()),
        {"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"},
        [_with_ip(e) for e in ANDROID],
    ),
    Case(
        "swift: gzip raw JSON body",
        "POST",
        "/track/?ip=1",
        _gzip(json.dumps(SWIFT).encode()),
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        SWIFT,
        as_sent=json.dumps(SWIFT).encode(),
    ),
    Case(
        "swift legacy: base64 wrapped with CRLF every 64 characters, not percent-encoded",
        "POST",
        "/track/?ip=1",
        b"data=" + _crlf_wrapped(b64_with(SWIFT_LEGACY, "+", "/")).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
        [_with_ip(e) for e in SWIFT_LEGACY],
    ),
    Case(
        "iOS: profile update as a percent-encoded JSON form body",
        "POST",
        "/engage/?ip=1",
        urlencode({"data": json.dumps(IOS_PROFILE)}).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
        [{**IOS_PROFILE[0], "$ip": CLIENT}],
    ),
    Case(
        "iOS: group update, one object, not an array",
        "POST",
        "/groups/?ip=1",
        urlencode({"data": json.dumps(IOS_GROUP[0])}).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
        IOS_GROUP,  # groups carry no $ip
    ),
    Case(
        "/import: JSON array with Basic auth and project_id/strict",
        "POST",
        "/import?strict=1&project_id=123",
        json.dumps(IMPORTS).encode(),
        {"Content-Type": "application/json", "Authorization": BASIC},
        [_with_ip(e) for e in IMPORTS],
        b'{"code":200,"num_records_imported":2,"status":"OK"}',
        JSON,
    ),
    Case(
        "python import_data: JSON form body, verbose and api_key in the body, Basic auth",
        "POST",
        "/import",
        urlencode({"data": json.dumps(IMPORTS[0]), "verbose": 1, "ip": 0, "api_key": "legacy-key"}).encode(),
        {"Content-Type": "application/x-www-form-urlencoded", "Authorization": BASIC},
        [IMPORTS[0]],
        _verbose_ok(1),
        JSON,
        upstream_ip="0",
    ),
    Case(
        "/import: NDJSON",
        "POST",
        "/import?strict=1&project_id=123",
        b"\n".join(json.dumps(e).encode() for e in IMPORTS) + b"\n",
        {"Content-Type": "application/x-ndjson", "Authorization": BASIC},
        [_with_ip(e) for e in IMPORTS],
        b'{"code":200,"num_records_imported":2,"status":"OK"}',
        JSON,
    ),
    Case(
        "/import: gzip NDJSON",
        "POST",
        "/import/?strict=1&project_id=123",
        _gzip(b"\n".join(json.dumps(e).encode() for e in IMPORTS)),
        {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip", "Authorization": BASIC},
        [_with_ip(e) for e in IMPORTS],
        b'{"code":200,"num_records_imported":2,"status":"OK"}',
        JSON,
    ),
]


@pytest.fixture
def client(make_app, mp):
    return make_app(destinations="mixpanel", mixpanel_api_host=mp.url).test_client()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_sdk_request_shape(case: Case, client, mp) -> None:
    headers = {"X-Forwarded-For": CLIENT, **case.headers}
    reply = client.open(case.path, method=case.method, data=case.body, headers=headers)

    assert reply.status_code == 200, reply.data
    # The whole header, byte for byte as the SDKs have always had it.
    assert reply.headers["Content-Type"] == {TEXT: "text/plain; charset=utf-8", JSON: "application/json"}[case.mimetype]
    if callable(case.reply):
        case.reply(json.loads(reply.data))
    else:
        assert reply.data == case.reply
    endpoint = case.path.strip("/").split("?")[0].strip("/")
    assert mp.records(endpoint) == case.sent
    upstream = mp.requests(endpoint)
    assert len(upstream) == 1
    sent = upstream[0]
    assert sent.method == "POST" and sent.headers["content-encoding"] == "gzip"
    if case.as_sent is not None:
        assert gzip.decompress(sent.body) == case.as_sent
    if endpoint == "import":
        assert sent.headers["authorization"] == BASIC
        asked = dict(parse_qsl(urlsplit(case.path).query))
        assert sent.query == {k: v for k, v in asked.items() if k in ("strict", "project_id")}
    else:
        assert "authorization" not in sent.headers
        assert sent.query == {"ip": case.upstream_ip, "verbose": "1"}
    if case.upstream_ip == "1":
        assert sent.headers["x-forwarded-for"] == CLIENT and sent.headers["x-real-ip"] == CLIENT
    else:
        assert "x-forwarded-for" not in sent.headers and "x-real-ip" not in sent.headers


def _browser_form(items: list[Any]) -> bytes:
    return b"data=" + quote(b64(items), safe="").encode()


def test_mixpanel_gets_the_sdk_s_json_and_the_rows_get_the_client_ip(make_app, mp, tmp_path) -> None:
    """Verbatim forwarding (lever 3): a browser batch the proxy changes only by the client IP
    reaches Mixpanel as the SDK's own JSON, with the IP in X-Forwarded-For and `ip=1`, as
    Mixpanel's own tracking proxy sends it; the stored rows carry the IP as ever."""
    client = make_app(destinations="mixpanel,files", mixpanel_api_host=mp.url).test_client()
    reply = client.post("/track/?ip=1", data=_browser_form(BROWSER_BATCH), headers={"X-Forwarded-For": CLIENT})
    assert reply.status_code == 200, reply.data
    [sent] = mp.requests("track")
    assert gzip.decompress(sent.body) == _compact(BROWSER_BATCH)
    assert (sent.query["ip"], sent.headers["x-forwarded-for"], sent.headers["x-real-ip"]) == ("1", CLIENT, CLIENT)
    rows = read_rows(tmp_path / "data", "events")
    assert sorted(row["insert_id"] for row in rows) == ["a1b2c3", "d4e5f6"]
    assert all(row["properties"]["ip"] == CLIENT for row in rows)


@pytest.mark.parametrize(
    ("change", "settings", "items"),
    [
        ("an event without time", {}, [BROWSER_BATCH[0], _event("No time", distinct_id="u", token="tok-web")]),
        ("properties missing", {}, [BROWSER_BATCH[0], {"event": "Bare"}]),
        ("MIXPANEL_TOKEN", {"mixpanel_token": "tok-override"}, BROWSER_BATCH),
        ("TRANSFORM", {"transform": f"{ROOT}/examples/strip_pii.py:transform"}, BROWSER_BATCH),
    ],
)
def test_records_the_proxy_changes_are_re_encoded_with_the_client_ip(change, settings, items, make_app, mp) -> None:
    """Where normalising or TRANSFORM changes more than the client IP, Mixpanel gets the
    records as changed, re-encoded, each carrying the IP: never the SDK's JSON."""
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url, **settings).test_client()
    reply = client.post("/track/?ip=1", data=_browser_form(items), headers={"X-Forwarded-For": CLIENT})
    assert reply.status_code == 200, reply.data
    [sent] = mp.requests("track")
    assert gzip.decompress(sent.body) != _compact(items)
    records = mp.records("track")
    assert [r["event"] for r in records] == [item["event"] for item in items]
    assert all(r["properties"]["ip"] == CLIENT and "time" in r["properties"] for r in records)
    if "mixpanel_token" in settings:
        assert {r["properties"]["token"] for r in records} == {"tok-override"}


def test_a_profile_batch_as_sent_keeps_its_own_bytes_upstream(make_app, mp) -> None:
    """/engage and /groups carry the client IP upstream the same way: a JSON array body goes
    as it came, without the `$ip` the stored rows get."""
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url).test_client()
    body = json.dumps(IOS_PROFILE).encode()
    reply = client.post("/engage/?ip=1", data=body, headers={"X-Forwarded-For": CLIENT, "Content-Type": JSON})
    assert reply.status_code == 200, reply.data
    [sent] = mp.requests("engage")
    assert gzip.decompress(sent.body) == body
    assert mp.records("engage") == IOS_PROFILE and sent.headers["x-forwarded-for"] == CLIENT


def test_payloads_really_contain_the_characters_form_parsers_break() -> None:
    for value in (BROWSER_BATCH, BROWSER_ONE, BEACON, NODE_BATCH, NODE_ONE, SWIFT_LEGACY):
        encoded = b64(value)
        assert "+" in encoded and "/" in encoded
    assert "\r\n" in _crlf_wrapped(b64(SWIFT_LEGACY))


ENDPOINT_ITEMS = {
    "track": _event("e", distinct_id="d", time=1700000000),
    "engage": {"$distinct_id": "d", "$set": {"a": 1}},
    "groups": {"$group_key": "k", "$group_id": "g", "$set": {"a": 1}},
    "import": _event("e", distinct_id="d", time=1700000000, **{"$insert_id": "x"}),
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINT_ITEMS))
@pytest.mark.parametrize("slash", ["", "/"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_every_endpoint_with_and_without_slash_get_and_post(endpoint, slash, method, make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url, mixpanel_token="tok").test_client()
    data = b64(ENDPOINT_ITEMS[endpoint])
    headers = {"Authorization": BASIC} if endpoint == "import" else {}
    if method == "GET":
        reply = client.get(f"/{endpoint}{slash}", query_string={"data": data, "ip": "0"}, headers=headers)
    else:
        reply = client.post(f"/{endpoint}{slash}?ip=0", data={"data": data}, headers=headers)
    assert reply.status_code == 200, reply.data
    # `data=` is how SDKs call every endpoint, /import included: they need `1` back.
    assert (reply.data, reply.mimetype) == (b"1", TEXT)
    [record] = mp.records(endpoint)
    expected = dict(ENDPOINT_ITEMS[endpoint])
    if endpoint in ("track", "import"):
        expected["properties"] = {**expected["properties"], "token": "tok"}
    else:
        expected["$token"] = "tok"
    assert record == expected


@pytest.mark.parametrize(
    ("query", "form", "verbose"),
    [
        ({"verbose": "1"}, {}, True),
        ({}, {"verbose": "1"}, True),
        ({"verbose": "0"}, {}, False),
        ({}, {}, False),
    ],
)
def test_verbose_from_query_or_form_body(query, form, verbose, make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url).test_client()
    item = _event("e", distinct_id="d", time=1700000000, token="t")
    reply = client.post("/track", query_string=query, data={"data": b64(item), **form})
    assert reply.status_code == 200
    if verbose:
        assert reply.mimetype == JSON and reply.get_json()["status"] == 1
    else:
        assert (reply.data, reply.mimetype) == (b"1", TEXT)
