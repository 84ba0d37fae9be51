"""Property tests: no body, header or query string makes the proxy answer 5xx or lose a worker."""

from __future__ import annotations

import base64
import gzip
import json
import random
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.fixtures_core import run_proxy  # noqa: F401
from tests.support.processes import ROOT

DIST = str(ROOT / "node_modules" / "mixpanel-browser" / "dist")
PATHS = ["/track", "/track/", "/engage/", "/groups", "/import", "/import/", "/record/", "/flags/", "/decide", "/lib.min.js", "/x"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
records = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"event": json_values, "properties": json_values},
        optional={"$mp_metadata": json_values, "time": json_values},
    ),
    st.fixed_dictionaries({"$distinct_id": json_values, "$set": json_values}, optional={"$token": json_values}),
)
payloads = st.one_of(records, st.lists(records, max_size=5))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    value = draw(payloads)
    text = json.dumps(value)
    shape = draw(st.sampled_from(["raw", "ndjson", "form-json", "form-b64", "b64-plus", "crlf", "bytes", "text"]))
    if shape == "raw":
        body = text.encode()
    elif shape == "ndjson":
        items = value if isinstance(value, list) else [value]
        body = "\n".join(json.dumps(i) for i in items).encode()
    elif shape == "form-json":
        body = b"data=" + requests.utils.quote(text).encode()
    elif shape in ("form-b64", "b64-plus", "crlf"):
        encoded = base64.b64encode(text.encode()).decode()
        if shape == "crlf":
            encoded = "\r\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
        body = ("data=" + encoded + "&verbose=" + draw(st.sampled_from(["1", "0", "x"]))).encode()
    elif shape == "bytes":
        body = draw(st.binary(max_size=300))
    else:
        body = draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        body = gzip.compress(body)
    if draw(st.integers(0, 9)) == 0:
        body = body[: draw(st.integers(0, len(body)))]  # truncated
    return body


headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Encoding": st.sampled_from(["gzip", "x-gzip", "deflate", "br", "identity", "GZIP ", "zstd, gzip"]),
        "Content-Type": st.sampled_from(
            ["application/json", "application/x-www-form-urlencoded", "text/plain;charset=UTF-8", "multipart/form-data"]
        ),
        "X-Forwarded-For": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
        "Authorization": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    },
)
queries = st.dictionaries(
    st.sampled_from(["data", "verbose", "ip", "strict", "project_id", "_", "callback", "img"]),
    st.text(max_size=40),
    max_size=4,
)


@pytest.fixture
def client(make_app, mp):
    app = make_app(destinations="mixpanel,files", mixpanel_api_host=mp.url, mixpanel_lib_dir=DIST, max_body_bytes="200000")
    return app.test_client()


@pytest.mark.filterwarnings("ignore:Do not use the `random` module")  # the proxy's retry jitter, not the strategy
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    path=st.sampled_from(PATHS),
    method=st.sampled_from(["GET", "POST"]),
    body=bodies(),
    headers=headers,
    query=queries,
)
def test_no_request_gets_a_5xx(client, path, method, body, headers, query) -> None:
    reply = client.open(path, method=method, data=body, headers=headers, query_string=query)
    event(f"HTTP {reply.status_code}")
    assert reply.status_code < 500, (reply.status_code, reply.data[:300])
    if reply.status_code == 400 and reply.mimetype == "application/json":
        message = reply.get_json().get("error", "")
        assert "\n" not in message


def _worker_pids(master: int) -> set[int]:
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.add(int(stat.parent.name))
    return pids


def test_random_bodies_leave_gunicorn_workers_alive(run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(workers=2, destinations="mixpanel,files", mixpanel_api_host=mp.url)
    master = proxy.server.proc.pid
    before = _worker_pids(master)
    assert len(before) == 2
    rng = random.Random(1234)
    session = requests.Session()
    statuses = []
    for i in range(200):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
        if i % 3 == 0:
            body = gzip.compress(body)
        if i % 5 == 0:
            body = b"data=" + base64.b64encode(body)
        headers = {"Content-Encoding": "gzip"} if i % 4 == 0 else {}
        if i % 7 == 0:
            headers["X-Forwarded-For"] = ",".join(rng.choice(["1.2.3.4", "", "::1", "junk", "300.1.1.1"]) for _ in range(3))
        path = rng.choice(PATHS[:6])
        statuses.append(session.post(f"{proxy.url}{path}?verbose={i % 2}", data=body, headers=headers, timeout=10).status_code)
    streamed = session.post(f"{proxy.url}/track/", data=(b"A" * (1 << 20) for _ in range(12)), timeout=30)
    statuses.append(streamed.status_code)
    assert streamed.status_code == 413  # a chunked body is cut off at MAX_BODY_BYTES, never buffered whole
    session.close()
    assert all(status < 500 for status in statuses), statuses
    assert requests.get(f"{proxy.url}/ping", timeout=5).json()["status"] == "ok"
    assert _worker_pids(master) == before
    assert "Traceback" not in proxy.log()


@st.composite
def browser_forms(draw: st.DrawFn) -> bytes:
    """`data=<base64>` bodies as SDKs and hand-made clients percent-encode them: upper- or
    lower-case escapes, raw `+`/`/`/`=`, missing padding, stray bytes."""
    raw = base64.b64encode(json.dumps(draw(payloads)).encode()).decode()
    if draw(st.booleans()):
        raw = raw.rstrip("=")
    out = []
    for char in raw:
        style = draw(st.sampled_from(["raw", "upper", "lower"])) if char in "+/=" else "raw"
        out.append(char if style == "raw" else f"%{ord(char):02X}" if style == "upper" else f"%{ord(char):02x}")
    body = "data=" + "".join(out)
    if draw(st.integers(0, 9)) == 0:
        junk = draw(st.sampled_from(["&verbose=1", "%", "%2", " ", "\n", "==", "*", "%41"]))
        at = draw(st.integers(5, len(body)))
        body = body[:at] + junk + body[at:]
    return body.encode()


@pytest.mark.filterwarnings("ignore:Do not use the `random` module")  # retry jitter in another test's flusher, not the strategy
@settings(max_examples=400, deadline=None)
@given(browser_forms())
def test_the_fast_browser_path_decodes_exactly_like_the_form_parser(body):
    from urllib.parse import parse_qsl

    from proxy.payloads import PayloadError, _fast_base64_form, _loads, decode_data_value

    fast = _fast_base64_form(body)
    event("fast path" if fast is not None else "general path")
    if fast is None:
        return  # the general path decides, as it does for any form

    def outcome(decode_it):  # the decoded JSON (as text: NaN != NaN), or PayloadError: both paths must agree
        try:
            return json.dumps(decode_it(), sort_keys=True)
        except PayloadError:
            return PayloadError

    fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
    # What decode() does with the fast path's bytes, against the general form path.
    assert outcome(lambda: _loads(fast, "data")) == outcome(lambda: decode_data_value(fields["data"]))


@pytest.mark.parametrize("escapes", [0, 1, 63, 64, 65, 500])
def test_the_fast_browser_path_unescapes_any_number_of_escapes(escapes):
    # Both ways of undoing escapes: a piece per escape up to _FEW_ESCAPES, replace beyond.
    from urllib.parse import parse_qsl

    from proxy.payloads import _FEW_ESCAPES, _fast_base64_form, decode_data_value

    assert _FEW_ESCAPES == 64
    value = {"text": "?>~" * 800}  # JSON whose base64 is full of `+`
    raw = base64.b64encode(json.dumps(value).encode()).decode()
    assert raw.count("+") + raw.count("/") >= 500
    out, done = [], 0
    for char in raw:
        if char in "+/=" and done < escapes:
            out.append("%2B" if char == "+" else "%2f" if char == "/" else "%3D")
            done += 1
        else:
            out.append(char)
    body = ("data=" + "".join(out)).encode()
    assert done == escapes
    assert json.loads(_fast_base64_form(body)) == value
    assert decode_data_value(dict(parse_qsl(body.decode()))["data"]) == value


base64ish = st.text(
    alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" + "=" * 8 + "-_ \n&%*"),
    max_size=40,
).map(str.encode)


@settings(max_examples=2000, deadline=None)
@given(base64ish)
def test_simd_base64_accepts_only_what_strict_base64_accepts_and_decodes_it_alike(text):
    """The fast path tries pybase64 first and falls back to a2b_base64(strict_mode=True):
    safe only if pybase64 never takes what the strict decoder refuses, nor reads it differently."""
    import binascii

    import pybase64

    try:
        strict = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        strict = None
    try:
        simd = pybase64.b64decode(text, validate=True)
    except ValueError:
        event("pybase64 refuses")
        return
    assert simd == strict


# --- the C JSON reader (orjson) against the exact one (json.loads) -------------------------

exact_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, -(10**18) - 1, 10**19])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(value=exact_json, ascii_only=st.booleans())
def test_the_fast_reader_gives_exactly_what_json_loads_gives(value, ascii_only) -> None:
    """Every value, types included (an integer beyond 64 bits stays an exact int, never a
    float), and floats to the bit, escaped or raw UTF-8."""
    from proxy.payloads import _loads

    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    got = _loads(raw, "body")
    assert repr(got) == repr(json.loads(raw))
