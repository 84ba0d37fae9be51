"""Hostile input and faults (issue 11): one test (or a few) per item, each with the
reproducer that failed before the fix. Transport-level items (chunked framing, short
bodies, slow bodies, long URLs, SIGTERM) run against the proxy under real gunicorn."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import random
import signal
import socket
import string
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy import payloads, staticlib
from proxy.staticlib import LibraryCache, NotFound
from tests.fixtures_core import b64, read_rows, run_proxy  # noqa: F401
from tests.support.mixpanel_double import Behaviour
from tests.support.processes import ROOT
from tests.support.rawhttp import exchange, request_head, trickle

DIST = ROOT / "node_modules" / "mixpanel-browser" / "dist"
RECORDER = "mixpanel-recorder-CZqK2y7C.min.js"
BASIC = "Basic " + base64.b64encode(b"service-user:service-secret-value").decode()


def event(name: str = "e", **props: Any) -> dict:
    return {"event": name, "properties": {"distinct_id": "d", "time": 1700000000, "token": "t", **props}}


def rows_of(app_data: Path, table: str = "events") -> list[dict]:
    return read_rows(app_data, table)


@pytest.fixture
def both(make_app, mp, tmp_path):
    """Mixpanel (the double) and files, written inside the request."""
    return make_app(destinations="mixpanel,files", mixpanel_api_host=mp.url).test_client()


# --- 1. huge integers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "time_value",
    [int("1" + "0" * 400), -int("9" * 500), "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"],
    ids=["1e400-int", "-9x500-int", "year-1-with-offset", "year-9999-with-offset"],
)
def test_unusable_time_takes_the_receive_time_and_keeps_the_original(time_value, both, mp, tmp_path) -> None:
    before = time.time()
    reply = both.post("/track?verbose=1", json=[event(time=time_value)])
    after = time.time()
    assert reply.status_code == 200, reply.data
    assert reply.get_json()["status"] == 1
    [row] = rows_of(tmp_path / "data")
    assert row["properties"]["time"] == time_value  # kept exactly, however large
    event_time = datetime.fromisoformat(row["event_time"].replace("Z", "+00:00")).timestamp()
    assert before - 0.001 <= event_time <= after + 0.001  # the receive time
    assert mp.records("track")[0]["properties"]["time"] == time_value


# --- 2. lone surrogates -----------------------------------------------------------------------


def test_lone_surrogates_become_the_replacement_character_everywhere(both, mp, tmp_path) -> None:
    # A browser truncating a string in the middle of an emoji sends exactly this.
    body = (
        b'[{"event":"e\\ud800","properties":{"distinct_id":"d","token":"t","time":1700000000,'
        b'"cut":"ab\\ud83d","low":"\\udc00x","emoji":"\\ud83d\\ude00","k\\udfff":1,'
        b'"nested":[{"deep":"\\uDBFF"}]}}]'
    )
    for _ in range(2):  # a poison record would fail the same way on every retry
        reply = both.post("/track?verbose=1&ip=0", data=body, headers={"Content-Type": "application/json"})
        assert reply.status_code == 200, reply.data
        assert reply.get_json()["status"] == 1
    expected_props = {
        "distinct_id": "d",
        "token": "t",
        "time": 1700000000,
        "cut": "ab\ufffd",
        "low": "\ufffdx",
        "emoji": "\U0001f600",
        "k\ufffd": 1,
        "nested": [{"deep": "\ufffd"}],
    }
    sent = mp.records("track")
    assert sent == [{"event": "e\ufffd", "properties": expected_props}] * 2
    rows = rows_of(tmp_path / "data")
    assert [r["properties"] for r in rows] == [expected_props] * 2
    assert rows[0]["event"] == "e\ufffd"


def test_lone_surrogates_in_base64_and_ndjson_bodies() -> None:
    raw = b'{"event":"x","properties":{"v":"\\ud800"}}'
    from_form = payloads.decode(b"data=" + base64.b64encode(raw), {})
    from_ndjson = payloads.decode(raw + b"\n" + raw + b"\n", {})
    assert from_form.items == [{"event": "x", "properties": {"v": "\ufffd"}}]
    assert from_ndjson.items == [{"event": "x", "properties": {"v": "\ufffd"}}] * 2
    # Surrogate halves encoded as raw bytes (CESU-8, what the browser SDK's own encoder
    # writes): a pair is the one character, a lone half becomes U+FFFD like the escape.
    lone = payloads.decode(b'[{"event":"x","properties":{"v":"\xed\xa0\x80"}}]', {})
    assert lone.items == [{"event": "x", "properties": {"v": "\ufffd"}}]
    pair = payloads.decode(b'[{"event":"x","properties":{"v":"\xed\xa0\xbc\xed\xbe\x89"}}]', {})
    assert pair.items == [{"event": "x", "properties": {"v": "\U0001f389"}}]
    # Bytes that are not UTF-8 (nor CESU-8) at all: the request is refused.
    with pytest.raises(payloads.PayloadError, match="UTF-8"):
        payloads.decode(b'[{"event":"x","properties":{"v":"\xff\xfe"}}]', {})


# --- 3. malformed chunked bodies ----------------------------------------------------------------

CHUNKED = request_head("POST", "/track", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
GOOD = b'[{"event":"chunked","properties":{"distinct_id":"d","token":"t"}}]'


MALFORMED_CHUNKED = {
    "not-hex": b"zz\r\n" + GOOD + b"\r\n0\r\n\r\n",
    "negative": b"-5\r\n" + GOOD + b"\r\n0\r\n\r\n",
    "huge": b"ffffffffffffffffffff\r\n" + GOOD + b"\r\n",
    "no-last-chunk": b"%x\r\n" % len(GOOD) + GOOD + b"\r\n",
    "bare-lf": b"%x\n" % len(GOOD) + GOOD + b"\n0\n\n",
    "no-crlf-after-data": b"%x\r\n" % len(GOOD) + GOOD + b"XX0\r\n\r\n",
}


def test_malformed_chunked_bodies_are_400_and_store_nothing(run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(destinations="mixpanel,files", mixpanel_api_host=mp.url)
    for name, body in MALFORMED_CHUNKED.items():
        reply = exchange(proxy.server.port, CHUNKED + body, half_close=True)
        assert reply.status == 400, (name, reply.head)
    well_formed = b"%x\r\n" % len(GOOD) + GOOD + b"\r\n0\r\n\r\n"
    assert exchange(proxy.server.port, CHUNKED + well_formed, half_close=True).status == 200
    assert [r["event"] for r in mp.records("track")] == ["chunked"]
    proxy.stop()
    assert [r["event"] for r in read_rows(proxy.data_dir, "events")] == ["chunked"]
    assert "Traceback" not in proxy.log()


def test_headers_that_would_be_server_errors_are_client_errors(run_proxy, mp) -> None:  # noqa: F811
    """Found by the fuzz run: a client's `SCRIPT_NAME` header made gunicorn answer 500 (and could
    shift the route), an unknown transfer coding 501."""
    proxy = run_proxy(destinations="mixpanel", mixpanel_api_host=mp.url)
    port = proxy.server.port
    data = b64([event("script-name")])
    for script_name in ("/nope", "/tr"):
        reply = exchange(port, request_head("GET", f"/track?data={data}", {"SCRIPT_NAME": script_name}), half_close=True)
        assert reply.status == 200, reply.head
    body = b"%x\r\n" % len(GOOD) + GOOD + b"\r\n0\r\n\r\n"
    for coding in ("xchunked", "chunked, x-custom"):
        head = request_head("POST", "/track", {"Content-Type": "application/json", "Transfer-Encoding": coding})
        assert exchange(port, head + body, half_close=True).status == 400, coding
    assert [r["event"] for r in mp.records("track")] == ["script-name", "script-name"]


# --- 4. multi-member gzip ----------------------------------------------------------------------


def test_every_gzip_member_is_decoded(both, mp, tmp_path) -> None:
    first = json.dumps(event("A", **{"$insert_id": "a"})).encode() + b"\n"
    second = json.dumps(event("B", **{"$insert_id": "b"})).encode() + b"\n"
    body = gzip.compress(first) + gzip.compress(second) + b"\x00" * 16  # zero padding is tolerated
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson", "Authorization": BASIC}
    reply = both.post("/import", data=body, headers=headers)
    assert reply.status_code == 200 and reply.get_json()["num_records_imported"] == 2
    assert [r["event"] for r in mp.records("import")] == ["A", "B"]
    assert [r["event"] for r in rows_of(tmp_path / "data")] == ["A", "B"]


@pytest.mark.parametrize(
    "body",
    [
        gzip.compress(json.dumps([event("A")]).encode()) + gzip.compress(json.dumps([event("B")]).encode()),
        gzip.compress(json.dumps([event("A")]).encode()) + b"trailing garbage",
        gzip.compress(json.dumps([event("A")]).encode()) + gzip.compress(b"[")[:-6],
    ],
    ids=["two-arrays", "trailing-garbage", "truncated-second-member"],
)
def test_a_gzip_body_that_is_not_whole_is_refused_not_cut(body, both, mp, tmp_path) -> None:
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json", "Authorization": BASIC}
    reply = both.post("/import", data=body, headers=headers)
    assert reply.status_code == 400
    assert mp.requests() == [] and rows_of(tmp_path / "data") == []


def test_gzip_members_are_bounded() -> None:
    many = gzip.compress(b"") * (payloads.MAX_GZIP_MEMBERS + 1)
    with pytest.raises(payloads.PayloadError, match="members"):
        payloads.gunzip(many, 1 << 20)
    assert payloads.gunzip(gzip.compress(b"") * 10 + gzip.compress(b"x"), 1 << 20) == b"x"
    with pytest.raises(payloads.PayloadTooLarge):
        payloads.gunzip(gzip.compress(b"a" * 600) + gzip.compress(b"b" * 600), 1000)


# --- 5. bodies shorter than their Content-Length ---------------------------------------------------


def test_a_body_shorter_than_its_content_length_is_400_and_stores_nothing(run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(destinations="mixpanel,files", mixpanel_api_host=mp.url)
    body = json.dumps([event("short")]).encode()
    head = request_head("POST", "/track", {"Content-Type": "application/json", "Content-Length": str(len(body) + 50)})
    head = head.replace(b"/track", b"/track?verbose=1")
    reply = exchange(proxy.server.port, head + body, half_close=True)
    assert reply.status == 400, reply.head
    assert (
        json.loads(reply.body)["error"] == f"request body ended after {len(body)} of its {len(body) + 50} bytes (Content-Length)"
    )
    proxy.stop()
    assert mp.records("track") == [] and read_rows(proxy.data_dir, "events") == []


# --- 6. NaN and Infinity ------------------------------------------------------------------------


def test_non_standard_numbers_become_null_for_every_destination(both, mp, tmp_path) -> None:
    body = (
        b'[{"event":"nan","properties":{"distinct_id":"d","token":"t","time":1700000000,'
        b'"a":NaN,"b":Infinity,"c":-Infinity,"d":1e999,"e":[NaN,1.5],"f":-1E+400,"g":2.5}}]'
    )
    reply = both.post("/track?verbose=1", data=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 200 and reply.get_json()["status"] == 1
    expected = {"a": None, "b": None, "c": None, "d": None, "e": [None, 1.5], "f": None, "g": 2.5}
    [sent] = mp.records("track")
    assert {k: sent["properties"][k] for k in expected} == expected
    assert b"NaN" not in mp.requests("track")[0].body and b"Infinity" not in gzip.decompress(mp.requests("track")[0].body)
    [row] = rows_of(tmp_path / "data")
    assert {k: row["properties"][k] for k in expected} == expected


# --- 7. long URLs -------------------------------------------------------------------------------


def browser_event(i: int) -> dict:
    """What mixpanel-browser sends for a page event, default properties included."""
    return {
        "event": "Viewed Pricing Page",
        "properties": {
            "$os": "Mac OS X",
            "$browser": "Chrome",
            "$current_url": f"https://shop.example.com/pricing?utm_source=newsletter&utm_medium=email&utm_campaign=spring-{i}",
            "$browser_version": 124,
            "$screen_height": 1117,
            "$screen_width": 1728,
            "mp_lib": "web",
            "$lib_version": "2.83.0",
            "$insert_id": f"{i:04d}k3v9x8q2p1m7n6b5",
            "time": 1717000000.123 + i,
            "distinct_id": "$device:18f5e9a2b3c4d5-0e1f2a3b4c5d6e-26001d51-1fa400-18f5e9a2b3c4d5",
            "$device_id": "18f5e9a2b3c4d5-0e1f2a3b4c5d6e-26001d51-1fa400-18f5e9a2b3c4d5",
            "$initial_referrer": "https://www.google.com/",
            "$initial_referring_domain": "www.google.com",
            "token": "0123456789abcdef0123456789abcdef",
            "mp_sent_by_lib_version": "2.83.0",
            "plan": "pro",
        },
    }


def test_a_50_event_get_batch_fits_the_default_url_limit_and_beyond_it_is_414(run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(destinations="mixpanel,files", mixpanel_api_host=mp.url)
    batch = [browser_event(i) for i in range(50)]
    reply = requests.get(f"{proxy.url}/track/", params={"data": b64(batch), "ip": "1", "_": "1717000000000"}, timeout=10)
    assert len(reply.request.url) > 8190  # gunicorn's largest limit without MAX_URL_BYTES
    assert reply.status_code == 200 and reply.text == "1"
    assert len(mp.records("track")) == 50
    # Beyond MAX_URL_BYTES (64 KiB by default): 414 with gunicorn's reason, before any of it is read further.
    too_long = requests.get(f"{proxy.url}/track/", params={"data": "A" * 70000}, timeout=10)
    assert too_long.status_code == 414 and "Request Line is too large" in too_long.text


def test_max_url_bytes_sets_the_limit(run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(destinations="mixpanel", mixpanel_api_host=mp.url, max_url_bytes="2048")
    fits = requests.get(f"{proxy.url}/track/", params={"data": b64([event()])}, timeout=10)
    assert fits.status_code == 200
    # "/track/?data=" is 13 bytes: 2049 is one past the limit (the app's JSON 414), 4013 far past
    # it (gunicorn's 414, the request line is not read further).
    just_past = requests.get(f"{proxy.url}/track/?data=" + "A" * 2036, timeout=10)
    assert just_past.status_code == 414
    assert just_past.json()["error"] == "URL exceeds MAX_URL_BYTES (2048 bytes): send the data in a POST body"
    far_past = requests.get(f"{proxy.url}/track/?data=" + "A" * 4000, timeout=10)
    assert far_past.status_code == 414 and "Request Line is too large" in far_past.text
    assert [r["event"] for r in mp.records("track")] == ["e"]


# --- 8. slow bodies -----------------------------------------------------------------------------


def test_a_stalled_body_gets_408_and_the_connection_closes(run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(destinations="mixpanel,files", mixpanel_api_host=mp.url, body_read_timeout_seconds="1")
    body = json.dumps([event("slow")]).encode()
    head = request_head("POST", "/track", {"Content-Type": "application/json", "Content-Length": str(len(body))})
    reply = trickle(proxy.server.port, head, body, every=0.3, timeout=20)
    assert reply.status == 408, reply.head
    assert b"not received within 1s" in reply.body or reply.body == b"0"
    assert reply.closed
    # Chunked uploads are held to the same deadline.
    chunked = request_head("POST", "/track", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert trickle(proxy.server.port, chunked, b"%x\r\n" % len(body) + body, every=0.3, timeout=20).status == 408
    assert mp.records("track") == []


def test_trickling_clients_release_their_connection_slots(run_proxy, mp) -> None:  # noqa: F811
    """Every connection slot held by a client trickling its body: /ping is answered as soon
    as BODY_READ_TIMEOUT_SECONDS has cut them, although they keep trickling."""
    proxy = run_proxy(destinations="files", body_read_timeout_seconds="2", worker_connections="12")
    body = json.dumps([event("slow", pad="x" * 200)]).encode()
    head = request_head("POST", "/track", {"Content-Type": "application/json", "Content-Length": str(len(body))})
    replies: list[Any] = []
    threads = [
        threading.Thread(target=lambda: replies.append(trickle(proxy.server.port, head, body, every=0.5, timeout=40)))
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1)  # the slots are taken
    ping = requests.get(f"{proxy.url}/ping", timeout=20)
    assert ping.status_code == 200
    for thread in threads:
        thread.join(45)
    assert sorted({r.status for r in replies}) == [408]


# --- 9. SIGTERM while uploads are stalled ----------------------------------------------------------


def test_sigterm_with_stalled_uploads_keeps_every_acknowledged_row(run_proxy, tmp_path) -> None:  # noqa: F811
    proxy = run_proxy(
        destinations="files",
        delivery="batch",
        batch_max_seconds="60",
        graceful_timeout="6",
        body_read_timeout_seconds="120",  # the stalled uploads outlast the graceful timeout
    )
    for batch in range(20):
        items = [event("ack", **{"$insert_id": f"{batch}-{i}"}) for i in range(100)]
        assert requests.post(f"{proxy.url}/track", json=items, timeout=10).text == "1"
    stalled = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", proxy.server.port))
        sock.sendall(request_head("POST", "/track", {"Content-Type": "application/json", "Content-Length": "1000"}) + b"[{")
        stalled.append(sock)
    time.sleep(0.5)
    proxy.server.signal(signal.SIGTERM)
    assert proxy.server.proc.wait(30) == 0
    for sock in stalled:
        sock.close()
    rows = read_rows(proxy.data_dir, "events")
    assert len(rows) == 2000 and len({r["insert_id"] for r in rows}) == 2000
    assert "draining buffers now" in proxy.log()


# --- 10. MIXPANEL_LIB_DIR stays inside its folder ----------------------------------------------------


def test_lib_dir_serves_only_regular_files_inside_it(make_app, tmp_path) -> None:
    lib = tmp_path / "lib"
    (lib / "async-modules").mkdir(parents=True)
    (lib / "mixpanel.min.js").write_text("/* the library */")
    (lib / "async-modules" / RECORDER).write_text("/* recorder */")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret outside the library folder")
    (lib / "mixpanel-recorder.min.js").symlink_to(outside)  # points out of the folder
    (lib / "mixpanel-targeting.min.js").symlink_to(lib / "async-modules" / RECORDER)  # stays inside
    (lib / "mixpanel-recorder.js").mkdir()  # not a regular file
    (lib / "mixpanel-targeting.js").symlink_to("/etc/hostname")
    client = make_app(mixpanel_lib_dir=str(lib)).test_client()
    assert client.get("/lib.min.js").data == b"/* the library */"
    assert client.get(f"/{RECORDER}").data == b"/* recorder */"
    assert client.get("/mixpanel-targeting.min.js").data == b"/* recorder */"
    for path in ("/mixpanel-recorder.min.js", "/mixpanel-recorder.js", "/mixpanel-targeting.js"):
        reply = client.get(path)
        assert reply.status_code == 404 and b"secret" not in reply.data, path


def test_lib_dir_reached_through_a_symlinked_folder(make_app, tmp_path) -> None:
    link = tmp_path / "dist-link"
    link.symlink_to(DIST)
    client = make_app(mixpanel_lib_dir=str(link)).test_client()
    assert client.get("/lib.min.js").data == (DIST / "mixpanel.min.js").read_bytes()


# --- 11. pass-through paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/flags/..%23/first-time-events",
        "/flags/%2e%2e/first-time-events",
        "/flags/..%2F..%2Ftrack/first-time-events",
        "/flags/x%3Fstrict%3D1/first-time-events",
        "/flags/x%26ip%3D0/first-time-events",
        "/flags/x%23y/first-time-events",
        "/flags/./first-time-events",
        "/flags/%2E/first-time-events",
        "/flags/.hidden/first-time-events",
        "/flags/a%00b/first-time-events",
        "/flags/%25%32%65%25%32%65/first-time-events",
    ],
)
def test_pass_through_paths_cannot_leave_their_endpoint(path, make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url).test_client()
    reply = client.post(path + "?a=1", data=b"{}")
    assert reply.status_code == 404
    assert mp.requests() == []


def test_pass_through_sends_a_valid_flag_id_to_its_endpoint(make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url).test_client()
    flag = "3f2b8c1e-9d4a-4e7b-a1c2-5d6e7f8a9b0c"
    reply = client.post(f"/flags/{flag}/first-time-events/?x=%3F%26", data=b"{}")
    assert reply.status_code == 200
    [sent] = mp.requests("flags")
    assert sent.path == f"/flags/{flag}/first-time-events"
    assert sent.query == {"x": "?&"}


# --- 12. library names ------------------------------------------------------------------------


class Cdn:
    """A stand-in CDN: a real HTTP server over a folder, counting what it is asked for."""

    def __init__(self, root: Path) -> None:
        self.paths: list[str] = []
        cdn = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                cdn.paths.append(self.path)
                super().do_GET()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/libs/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def cdn(tmp_path) -> Iterator[Cdn]:
    libs = tmp_path / "cdn" / "libs"
    libs.mkdir(parents=True)
    (libs / "mixpanel-2-latest.min.js").write_bytes((DIST / "mixpanel.min.js").read_bytes())
    for path in (DIST / "async-modules").iterdir():
        (libs / path.name).write_bytes(path.read_bytes())
    (libs / "mixpanel-recorder.min.js").write_bytes((DIST / "mixpanel-recorder.min.js").read_bytes())
    server = Cdn(tmp_path / "cdn")
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_made_up_library_names_cost_no_cdn_fetch(cdn) -> None:
    library = LibraryCache(cdn.url, None)
    rng = random.Random(11)
    names = [f"mixpanel-{''.join(rng.choices(string.ascii_lowercase + string.digits, k=8))}.min.js" for _ in range(200)]
    names += ["mixpanel-x.js\n", "mixpanel-recorder.min.js\n", "lib.min.js\n", "mixpanel-recorder.min.jsx", "evil.js"]
    for name in names:
        assert not staticlib.is_servable(name), repr(name)
        with pytest.raises(NotFound):
            library.get(name)
    assert cdn.paths == []


def test_invented_module_hashes_are_fetched_within_a_budget(cdn) -> None:
    library = LibraryCache(cdn.url, None)
    rng = random.Random(12)
    for _ in range(200):
        name = f"mixpanel-recorder-{''.join(rng.choices(string.ascii_letters + string.digits, k=8))}.min.js"
        with pytest.raises(NotFound):
            library.get(name)
    assert len(cdn.paths) == staticlib.UNVERIFIED_FETCHES_PER_HOUR
    # The budget is spent, yet the modules the library itself names are still served ...
    library.get("lib.min.js")
    assert library.get(RECORDER).body == (DIST / "async-modules" / RECORDER).read_bytes()
    assert library.get("mixpanel-recorder.min.js").body == (DIST / "mixpanel-recorder.min.js").read_bytes()
    # ... once each: the cache holds them, and a 404 is remembered.
    count = len(cdn.paths)
    for _ in range(3):
        library.get(RECORDER)
        with pytest.raises(NotFound):
            library.get("mixpanel-targeting.min.js")
    assert len(cdn.paths) == count + 1
    assert len(library._cache) <= staticlib.MAX_CACHED


def test_the_library_cache_is_bounded(make_app, mp, monkeypatch) -> None:
    """The double answers every `.js` name: far more hashed names than the cache holds."""
    monkeypatch.setattr(staticlib, "UNVERIFIED_FETCHES_PER_HOUR", 1000)
    library = LibraryCache(f"{mp.url}/libs/", None)
    for n in range(staticlib.MAX_CACHED * 2):
        library.get(f"mixpanel-targeting-{n:08d}.min.js")
    assert len(library._cache) == staticlib.MAX_CACHED
    monkeypatch.setattr(staticlib, "MAX_CACHED_BYTES", 3 * len(library.get("lib.min.js").body))
    library.get("lib.js")
    assert len(library._cache) == 3 and "lib.js" in library._cache


def test_library_routes_under_real_names(make_app, cdn) -> None:
    client = make_app(mixpanel_cdn_url=cdn.url).test_client()
    assert client.get("/lib.min.js").status_code == 200
    assert client.get(f"/{RECORDER}").status_code == 200
    assert client.get("/mixpanel-x.js%0A").status_code == 404
    assert client.get("/mixpanel-foo.min.js").status_code == 404


# --- 13. /drop in production ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"environment": "prod-eu"},
        {"environment": "Production_US"},
        {"environment": "prd", "k_service": "proxy"},
        {"dyno": "web.1"},
        {"render": "true"},
        {"functions_worker_runtime": "python"},
        {"aws_lambda_function_name": "proxy"},
    ],
)
def test_drop_is_refused_in_production(env, make_app, tmp_path, caplog) -> None:
    client = make_app(destinations="files", drop_token="drop-secret-123", **env).test_client()
    assert client.post("/track", json=[event()]).status_code == 200
    with caplog.at_level(logging.WARNING):
        reply = client.post("/drop", headers={"Authorization": "Bearer drop-secret-123", "X-Forwarded-For": "198.51.100.7"})
    assert reply.status_code == 403 and "production" in reply.get_json()["error"]
    assert len(rows_of(tmp_path / "data")) == 1
    [record] = [r for r in caplog.records if r.getMessage().startswith("/drop")]
    assert record.client_ip == "198.51.100.7" and record.peer == "127.0.0.1"


def test_every_drop_is_logged_with_its_caller(make_app, tmp_path, caplog) -> None:
    client = make_app(destinations="files", drop_token="drop-secret-123", environment="staging").test_client()
    client.post("/track", json=[event()])
    with caplog.at_level(logging.WARNING):
        bad = client.post("/drop", headers={"Authorization": "Bearer nope", "X-Forwarded-For": "6.6.6.6"})
        good = client.post("/drop", headers={"Authorization": "Bearer drop-secret-123", "X-Forwarded-For": "203.0.113.5"})
    assert bad.status_code == 401 and good.status_code == 200
    logged = [(r.getMessage(), r.client_ip, r.peer) for r in caplog.records if r.getMessage().startswith("/drop")]
    assert logged == [
        ("/drop refused: bad or missing bearer token", "6.6.6.6", "127.0.0.1"),
        ("/drop executed", "203.0.113.5", "127.0.0.1"),
    ]
    assert rows_of(tmp_path / "data") == []


# --- 14. CORS only where a browser SDK calls ----------------------------------------------------------


@pytest.mark.parametrize("frontend_url", ["", "https://shop.example"])
def test_cors_only_on_sdk_routes(frontend_url, make_app, mp) -> None:
    client = make_app(
        destinations="mixpanel", mixpanel_api_host=mp.url, frontend_url=frontend_url, drop_token="t0ken-123456"
    ).test_client()
    origin = {"Origin": "https://shop.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    for path in ("/health", "/ping", "/metrics"):
        for reply in (client.get(path, headers=origin), client.options(path, headers=preflight)):
            assert not [h for h in reply.headers.keys() if h.startswith("Access-Control-")], path
    drop = client.options("/drop", headers=preflight)
    assert "Access-Control-Allow-Origin" not in drop.headers and "Access-Control-Allow-Credentials" not in drop.headers
    for path in ("/track/", "/engage", "/groups/", "/import", "/record/", "/flags/", "/flags/f1/first-time-events", "/decide"):
        reply = client.options(path, headers=preflight)
        assert reply.status_code in (200, 204), path
        assert reply.headers["Access-Control-Allow-Origin"] == "https://shop.example", path
        assert reply.headers["Access-Control-Allow-Credentials"] == "true"
    for path in ("/lib.min.js", f"/{RECORDER}", f"/libs/{RECORDER}"):
        assert client.options(path, headers=preflight).headers["Access-Control-Allow-Origin"] == "https://shop.example"


@pytest.mark.parametrize("frontend_url", ["", "https://shop.example,null"])
def test_cors_never_grants_the_null_origin(frontend_url, make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url, frontend_url=frontend_url).test_client()
    for headers in ({"Origin": "null"}, {"Origin": "NULL"}, {"Origin": "null", "Access-Control-Request-Method": "POST"}):
        for reply in (
            client.post("/track/", data={"data": b64(event())}, headers=headers),
            client.options("/track/", headers=headers),
        ):
            assert "Access-Control-Allow-Origin" not in reply.headers
            assert "Access-Control-Allow-Credentials" not in reply.headers
            assert "Origin" in reply.headers.get("Vary", "")


def test_cors_under_a_base_path(make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url, base_path="/mp").test_client()
    origin = {"Origin": "https://shop.example"}
    assert client.post("/mp/track/", data={"data": b64(event())}, headers=origin).headers["Access-Control-Allow-Origin"]
    assert "Access-Control-Allow-Origin" not in client.get("/mp/health", headers=origin).headers


# --- 15. at-least-once delivery -------------------------------------------------------------------


def test_a_503_retried_by_the_sdk_is_stored_twice_with_one_insert_id(make_app, mp, tmp_path) -> None:
    """Mixpanel answers 503: the lake already has the rows, and the SDK retries. The copies
    share their insert_id, so de-duplication downstream (README, "Delivery guarantees") works,
    with and without an SDK `$insert_id`."""
    client = make_app(destinations="mixpanel,files", mixpanel_api_host=mp.url, mixpanel_timeout_seconds="1").test_client()
    items = [event("with-id", **{"$insert_id": "abc"}), event("hashed", extra=1)]
    mp.behaviour = Behaviour(status=503)
    first = client.post("/track/", data={"data": b64(items)})
    assert first.status_code == 503
    mp.behaviour = Behaviour()
    assert client.post("/track/", data={"data": b64(items)}).status_code == 200
    rows = rows_of(tmp_path / "data")
    assert [r["event"] for r in rows] == ["with-id", "hashed", "with-id", "hashed"]
    assert rows[0]["insert_id"] == rows[2]["insert_id"] == "abc"
    assert rows[1]["insert_id"] == rows[3]["insert_id"]


def test_readme_documents_delivery_guarantees_and_forwarded_for() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Delivery guarantees", 1)[1].split("\n## ", 1)[0]
    for needed in ("at-least-once", "insertId", "$insert_id", "QUALIFY ROW_NUMBER() OVER (PARTITION BY insert_id"):
        assert needed in section, needed
    forwarded = readme.split("## Client IP and X-Forwarded-For", 1)[1].split("\n## ", 1)[0]
    for platform in ("Cloud Run", "Heroku", "load balancer", "TRUSTED_PROXY_HOPS=0"):
        assert platform in forwarded, platform


# --- 16. X-Forwarded-For: the peer is what a direct client cannot forge ---------------------------------


def test_forwarded_for_from_a_direct_client_is_only_its_own_record(make_app, mp) -> None:
    """With the default TRUSTED_PROXY_HOPS=1 a client reaching the proxy directly chooses its
    recorded address, as it can choose `properties.ip` itself; the audit log keeps the peer."""
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url).test_client()
    client.post("/track/?ip=1", data={"data": b64(event())}, headers={"X-Forwarded-For": "203.0.113.99"})
    client.post("/track/?ip=1", data={"data": b64(event(ip="203.0.113.98"))})
    assert [r["properties"]["ip"] for r in mp.records("track")] == ["203.0.113.99", "203.0.113.98"]


def test_only_bodies_with_a_surrogate_escape_are_walked(monkeypatch) -> None:
    """The hot path's shape: a body without a `\\uD8..`-`\\uDF..` escape is parsed once and
    not walked again (Python's SDK escapes every non-ASCII character: `\\u00e9` is common)."""
    walked: list[Any] = []
    original = payloads._replace_lone_surrogates
    monkeypatch.setattr(payloads, "_replace_lone_surrogates", lambda value: walked.append(1) or original(value))
    payloads.decode(b"data=" + base64.b64encode(json.dumps([browser_event(i) for i in range(50)]).encode()), {})
    payloads.decode(json.dumps([event(x="caf\u00e9")], ensure_ascii=True).encode(), {})
    emoji = payloads.decode(json.dumps([event(x="\U0001f600")], ensure_ascii=True).encode(), {})
    assert walked == [] and emoji.items[0]["properties"]["x"] == "\U0001f600"  # a whole pair: nothing to repair
    lone = payloads.decode(json.dumps([event(x="\ud800")], ensure_ascii=True).encode(), {})
    assert walked == [1] and lone.items[0]["properties"]["x"] == "\ufffd"
