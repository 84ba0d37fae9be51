"""A bounded fuzz run over the ingest endpoints under real gunicorn (issue 11).

A seeded generator (FUZZ_SEED, default fixed; FUZZ_SECONDS, default 15) mixes valid SDK
requests with every hostile shape issue 11 found: huge integers, lone surrogates,
NaN/Infinity, broken JSON and base64, deep nesting, multi-member, truncated and
padded gzip, malformed chunked framing, bodies shorter than their Content-Length,
trickled bodies, long URLs, traversal in pass-through paths, made-up library names,
CORS preflights and smuggling-style headers. It checks that no response is a 5xx, that
no worker restarted or logged a traceback, and that every valid event acknowledged
with a 200 reached both Mixpanel (the double) and the files after a graceful stop.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from tests.fixtures_core import read_rows, run_proxy  # noqa: F401
from tests.support.rawhttp import exchange, request_head, trickle

SEED = int(os.environ.get("FUZZ_SEED", "20261201"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "15"))
ENDPOINTS = ["/track", "/track/", "/engage/", "/groups/", "/import", "/import/"]
PASS_THROUGH = ["/flags/", "/decide/", "/record/", "/settings/"]


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    by_shape: dict[str, Counter] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    valid_acknowledged: set[str] = field(default_factory=set)

    def note(self, shape: str, status: int | None, detail: str = "") -> None:
        self.statuses[status] += 1
        self.by_shape.setdefault(shape, Counter())[status] += 1
        if status is not None and status >= 500:
            self.server_errors.append(f"{shape}: {status} {detail[:200]}")


# --- values ---------------------------------------------------------------------------------


def hostile_value(rng: random.Random) -> str:
    """A JSON value as text, hostile more often than not."""
    choices = [
        lambda: str(rng.choice([10**400, -(10**500), 2**64, -(2**63) - 1, 10**4000])),
        lambda: rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1E+400", "1e-400", "0.1e309"]),
        lambda: rng.choice(['"\\ud800"', '"a\\udfffb"', '"\\ud83d\\ude00"', '"\\uDBFF\\uDBFF"', '"\\u0000"', '"\\ud83d"']),
        lambda: json.dumps("".join(rng.choices(string.printable + "éü中😀\u2028\u2029", k=rng.randint(0, 60)))),
        lambda: "[" * (depth := rng.choice([10, 200, 900, 1500, 5000])) + "1" + "]" * depth,
        lambda: json.dumps(rng.choice([None, True, False, 0, -1, 1.5, "", [], {}])),
        lambda: json.dumps(rng.choice(["2024-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00", "yesterday", "1e12", "-5"])),
        lambda: json.dumps("x" * rng.choice([1000, 100_000])),
    ]
    return rng.choice(choices)()


def event_text(rng: random.Random, hostile: bool) -> str:
    props = ['"distinct_id":"fuzz"', '"token":"fuzz-token"']
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(["time", "ip", "$insert_id", "v", "k\\ud800", "$browser", "nested", "time"])
        props.append(f'"{key}":{hostile_value(rng) if hostile else json.dumps(rng.random())}')
    name = rng.choice(['"e"', '"\\ud800"', '""', "null", "1", '"ok"']) if hostile else '"ok"'
    shape = rng.random()
    if hostile and shape < 0.1:
        return rng.choice(["null", "[]", "1", '"s"', '{"properties":"s"}', '{"event":"e","properties":[1]}'])
    return '{"event":' + name + ',"properties":{' + ",".join(props) + "}}"


def profile_text(rng: random.Random, endpoint: str) -> str:
    op = rng.choice(["$set", "$set_once", "$add", "$unset", "$remove", "$union", "$delete", "$bogus"])
    ident = '"$distinct_id":"fuzz"' if "engage" in endpoint else '"$group_key":"g","$group_id":"1"'
    return '{"$token":"t",' + ident + f',"{op}":{{"a":{hostile_value(rng)}}}}}'


def mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 8)):
        if not data:
            break
        where = rng.randrange(len(data))
        action = rng.random()
        if action < 0.4:
            data[where] = rng.randrange(256)
        elif action < 0.7:
            del data[where : where + rng.randint(1, 20)]
        else:
            data[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 10)))
    return bytes(data)


def gzip_variant(rng: random.Random, body: bytes) -> bytes:
    compressed = gzip.compress(body)
    kind = rng.choice(["plain", "members", "truncated", "garbage", "padding", "bomb", "empty-members"])
    if kind == "members":
        cut = rng.randint(0, len(body))
        return gzip.compress(body[:cut]) + gzip.compress(body[cut:])
    if kind == "truncated":
        return compressed[: rng.randint(0, len(compressed) - 1)]
    if kind == "garbage":
        return compressed + os.urandom(rng.randint(1, 30))
    if kind == "padding":
        return compressed + b"\x00" * rng.randint(1, 512)
    if kind == "bomb":
        return gzip.compress(b"[" + b" " * (2 << 20) + b"]")
    if kind == "empty-members":
        return gzip.compress(b"") * rng.choice([3, 1200]) + compressed
    return compressed


# --- one request ------------------------------------------------------------------------------


def fuzz_once(rng: random.Random, url: str, port: int, session: requests.Session, tally: Tally, counter: list[int]) -> None:
    roll = rng.random()
    endpoint = rng.choice(ENDPOINTS)
    if roll < 0.25:  # valid events, in the SDKs' shapes: they must all land
        counter[0] += 1
        ids = [f"fuzz-valid-{SEED}-{counter[0]}-{i}" for i in range(rng.randint(1, 5))]
        items = [
            {"event": "valid", "properties": {"distinct_id": "fuzz", "token": "t", "time": 1700000000 + n, "$insert_id": i}}
            for n, i in enumerate(ids)
        ]
        raw = json.dumps(items).encode()
        how = rng.choice(["json", "form", "get", "gzip", "ndjson"])
        target = rng.choice(["/track", "/track/", "/import"])
        headers = {"Authorization": "Basic Zm9vOg=="}
        if how == "json":
            reply = session.post(url + target, data=raw, headers={**headers, "Content-Type": "application/json"})
        elif how == "form":
            reply = session.post(url + target, data={"data": base64.b64encode(raw).decode()}, headers=headers)
        elif how == "get":
            reply = session.get(url + target, params={"data": base64.b64encode(raw).decode()}, headers=headers)
        elif how == "gzip":
            cut = rng.randint(0, len(raw))
            body = rng.choice(
                [gzip.compress(raw), gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]), gzip.compress(raw) + b"\0" * 8]
            )
            reply = session.post(url + target, data=body, headers={**headers, "Content-Encoding": "gzip"})
        else:
            lines = b"".join(json.dumps(item).encode() + b"\n" for item in items)
            reply = session.post(url + target, data=lines, headers={**headers, "Content-Type": "application/x-ndjson"})
        tally.note(f"valid-{how}", reply.status_code, reply.text)
        if reply.status_code == 200:
            tally.valid_acknowledged.update(ids)
        return
    if roll < 0.55:  # hostile JSON, raw or wrapped
        if "engage" in endpoint or "groups" in endpoint:
            text = "[" + ",".join(profile_text(rng, endpoint) for _ in range(rng.randint(1, 3))) + "]"
        else:
            text = "[" + ",".join(event_text(rng, hostile=True) for _ in range(rng.randint(1, 4))) + "]"
        body = text.encode("utf-8", "surrogatepass")
        wrap = rng.choice(["raw", "raw", "form", "b64form", "gzip", "mutated", "bad-utf8"])
        headers: dict[str, str] = {}
        if wrap == "form":
            body = b"data=" + requests.utils.quote(body).encode()
        elif wrap == "b64form":
            body = b"data=" + base64.b64encode(body).replace(b"+", rng.choice([b"+", b"%2B", b" "]))
        elif wrap == "gzip":
            body = gzip_variant(rng, body)
            headers["Content-Encoding"] = rng.choice(["gzip", "x-gzip", "deflate", "GZIP"])
        elif wrap == "mutated":
            body = mutate(rng, body)
        elif wrap == "bad-utf8":
            body = body.replace(b'"e"', b'"\xed\xa0\x80\xff"')
        query = rng.choice(["", "?verbose=1", "?ip=0", "?verbose=1&strict=1", "?data=%%%"])
        reply = session.post(url + endpoint + query, data=body, headers=headers)
        tally.note(f"hostile-{wrap}", reply.status_code, reply.text)
        return
    if roll < 0.68:  # framing attacks on a bare socket
        fuzz_framing(rng, port, endpoint, tally)
        return
    if roll < 0.76:  # long URLs and odd query data
        size = rng.choice([100, 4000, 9000, 30000, 60000, 65520, 65600, 70000, 200000])
        data = "".join(rng.choices(string.ascii_letters + string.digits + "+/=%", k=size))
        try:
            reply = session.get(f"{url}{endpoint}?data={data}")
            tally.note(f"url-{size // 1000}k", reply.status_code, reply.text)
        except requests.ConnectionError:
            tally.note(f"url-{size // 1000}k", None)  # the server closed before the client finished sending
        return
    if roll < 0.86:  # pass-through and library paths
        segment = rng.choice(["..%23", "%2e%2e", "..", ".", "a%3Fb", "a%26b", "%2F", "ok-id", "%00", "%25%32%65", "x" * 300])
        path = rng.choice(
            [
                f"/flags/{segment}/first-time-events",
                rng.choice(PASS_THROUGH) + f"?context={segment}",
                f"/mixpanel-{segment}.min.js",
                f"/mixpanel-recorder-{''.join(rng.choices(string.ascii_letters, k=8))}.min.js",
                f"/libs/{segment}",
                "/lib.min.js%0A",
            ]
        )
        # What SDKs use: the pass-through hands back the upstream's status, and the double
        # (http.server) answers 501 to methods it does not implement.
        reply = session.request(rng.choice(["GET", "POST"]), url + path, data=b"{}")
        tally.note("paths", reply.status_code, path)
        return
    if roll < 0.93:  # CORS and operator routes
        origin = rng.choice(["null", "https://shop.example", "https://evil.example", "", "file://", "NULL"])
        path = rng.choice(["/track/", "/health", "/ping", "/drop", "/metrics", "/flags/", "/lib.min.js"])
        reply = session.options(url + path, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        tally.note("cors", reply.status_code)
        granted = reply.headers.get("Access-Control-Allow-Origin")
        if granted and (granted.lower() == "null" or path in ("/health", "/ping", "/drop", "/metrics")):
            tally.server_errors.append(f"cors granted {granted!r} on {path}")
        return
    # Random bytes, random encodings, random methods.
    body = os.urandom(rng.randint(0, 300))
    headers = {"Content-Encoding": rng.choice(["", "gzip", "br", "identity", "deflate, gzip", "zstd"])}
    reply = session.request(rng.choice(["POST", "GET", "PUT", "PATCH"]), url + endpoint, data=body, headers=headers)
    tally.note("random-bytes", reply.status_code)


def fuzz_framing(rng: random.Random, port: int, endpoint: str, tally: Tally) -> None:
    body = b'[{"event":"framing","properties":{"distinct_id":"f","token":"t"}}]'
    kind = rng.choice(
        [
            "chunk-bad",
            "chunk-huge",
            "chunk-no-end",
            "chunk-bare-lf",
            "chunk-ext",
            "short-cl",
            "cl-te",
            "te-cl",
            "te-odd",
            "pipelined",
            "bad-line",
            "big-header",
            "script-name",
        ]
    )
    headers = {"Content-Type": "application/json"}
    if kind.startswith("chunk"):
        headers["Transfer-Encoding"] = "chunked"
        size = rng.choice([b"zz", b"-5", b"ffffffffffffffffff", b"%x" % len(body), b" 5", b"0x10"])
        payload = {
            "chunk-bad": size + b"\r\n" + body + b"\r\n0\r\n\r\n",
            "chunk-huge": b"ffffffffffffffff\r\n" + body,
            "chunk-no-end": b"%x\r\n" % len(body) + body + b"\r\n",
            "chunk-bare-lf": b"%x\n" % len(body) + body + b"\n0\n\n",
            "chunk-ext": b"%x;" % len(body) + os.urandom(5).hex().encode() + b"\r\n" + body + b"\r\n0\r\n\r\n",
        }[kind]
        data = request_head("POST", endpoint, headers) + payload
    elif kind == "short-cl":
        headers["Content-Length"] = str(len(body) + rng.randint(1, 1000))
        data = request_head("POST", endpoint, headers) + body[: rng.randint(0, len(body))]
    elif kind == "cl-te":
        headers.update({"Content-Length": str(len(body)), "Transfer-Encoding": "chunked"})
        data = request_head("POST", endpoint, headers) + body
    elif kind == "te-cl":
        headers.update(
            {"Transfer-Encoding": rng.choice(["chunked", " chunked", "chunked, identity", "xchunked"]), "Content-Length": "4"}
        )
        data = request_head("POST", endpoint, headers) + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    elif kind == "te-odd":
        headers["Transfer-Encoding"] = rng.choice(["gzip, chunked", "identity", "chunked, chunked"])
        data = request_head("POST", endpoint, headers) + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    elif kind == "pipelined":
        headers["Content-Length"] = str(len(body))
        one = request_head("POST", endpoint, headers) + body
        data = one + one[: rng.randint(1, len(one))]
    elif kind == "bad-line":
        data = rng.choice(
            [b"GARBAGE\r\n\r\n", b"GET /track HTTP/9.9\r\n\r\n", b"GET  /track HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00"]
        )
    elif kind == "script-name":
        data = request_head("GET", endpoint + "?data=e30", {"SCRIPT_NAME": rng.choice(["/nope", "/tr", endpoint])})
    else:
        data = request_head("GET", endpoint, {"X-Big": "a" * rng.choice([9000, 20000])})
    reply = exchange(port, data, half_close=True, timeout=10, close_wait=0.01)
    tally.note(f"framing-{kind}", reply.status, reply.body.decode("latin-1"))


# --- the run --------------------------------------------------------------------------------------


def test_fuzz_ingest_under_gunicorn(run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(
        workers=2,
        destinations="mixpanel,files",
        mixpanel_api_host=mp.url,
        mixpanel_cdn_url=f"{mp.url}/libs/",
        delivery="batch",
        batch_max_seconds="1",
        body_read_timeout_seconds="2",
        max_body_bytes="1048576",
        drop_token="fuzz-drop-token-1",
        graceful_timeout="10",
    )
    rng = random.Random(SEED)
    tally = Tally()
    counter = [0]
    session = requests.Session()
    port = proxy.server.port  # type: ignore[attr-defined]

    # A few clients trickle their bodies the whole time (cut after BODY_READ_TIMEOUT_SECONDS).
    stop = threading.Event()

    def trickler() -> None:
        head = request_head("POST", "/track", {"Content-Type": "application/json", "Content-Length": "500"})
        while not stop.is_set():
            reply = trickle(port, head, b"[" + b" " * 499, every=0.4, timeout=10)
            tally.note("trickle", reply.status)

    threads = [threading.Thread(target=trickler, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()

    deadline = time.monotonic() + SECONDS
    sent = 0
    while time.monotonic() < deadline:
        try:
            fuzz_once(rng, proxy.url, port, session, tally, counter)
        except requests.ConnectionError as exc:
            tally.note("connection-error", None, str(exc))
            session = requests.Session()
        sent += 1
    stop.set()
    for thread in threads:
        thread.join(15)
    session.close()  # an idle keep-alive connection would hold the graceful stop
    assert proxy.stop() == 0

    summary = f"seed {SEED}, {sent} requests: " + ", ".join(f"{k}={v}" for k, v in sorted(tally.statuses.items(), key=str))
    assert not tally.server_errors, summary + "\n" + "\n".join(tally.server_errors[:20])
    log = proxy.log()
    assert log.count("Booting worker with pid") == 2, summary  # no worker restarted
    for bad in ("WORKER TIMEOUT", "Traceback", "unhandled error", "Worker exited"):
        assert bad not in log, f"{bad!r} in the log ({summary})"
    # Every valid event acknowledged with 200 reached Mixpanel and the files (at least once).
    assert tally.valid_acknowledged, summary
    stored = {r["insert_id"] for r in read_rows(proxy.data_dir, "events")}
    assert tally.valid_acknowledged <= stored, summary
    forwarded = {
        r["properties"]["$insert_id"]
        for r in mp.records("track") + mp.records("import")
        if isinstance(r, dict) and isinstance(r.get("properties"), dict) and isinstance(r["properties"].get("$insert_id"), str)
    }
    assert tally.valid_acknowledged <= forwarded, summary
    # The corpus reached the shapes it is meant to cover.
    shapes = set(tally.by_shape)
    for needed in ("hostile-raw", "hostile-gzip", "framing-chunk-bad", "framing-short-cl", "trickle", "paths", "cors"):
        assert needed in shapes, (needed, summary)
    print(summary)
    for shape, counts in sorted(tally.by_shape.items()):
        print(f"  {shape}: {dict(sorted(counts.items(), key=str))}")
