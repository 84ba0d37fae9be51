"""The serverless entry points, invoked locally the way each platform invokes them.

- Cloud Functions: main.py under the Functions Framework's own server (what Cloud
  Functions runs: gunicorn with threads), over real HTTP.
- Lambda: lambda_handler.handler with API Gateway HTTP API (2.0), REST API (1.0) and
  function URL events (tests/support/platform_events.py).
- Azure Functions: function_app.py's HTTP trigger with the host's HttpRequest, called
  from a thread pool as the Python worker does.

Each gets the same four requests: a mixpanel-browser base64 batch (form body), a gzip
JSON body from the Swift SDK, a browser GET with `?data=`, and a CORS preflight. Each
checks the status, headers and body the SDK gets, the client IP taken from the
platform's header (with a spoofed X-Forwarded-For entry in front), and the rows the
files destination stored before the handler returned: RUNTIME implies DELIVERY=sync,
no flusher thread, no gevent patching, nothing left for atexit.
"""

from __future__ import annotations

import gzip
import importlib
import json
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import requests

from core import green
from tests.fixtures_core import b64, read_rows
from tests.support import platform_events as pe
from tests.support.processes import VENV_BIN, Server, free_port, wait_until

ORIGIN = "https://shop.example"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"

BROWSER_BATCH = [
    {
        "event": "Page view",
        "properties": {
            "$insert_id": f"brw-{n}",
            "time": 1700000000.123 + n,
            "distinct_id": "$device:b-1",
            "$device_id": "b-1",
            "token": "tok-web",
            "mp_lib": "web",
            "$browser": "Chrome",
            "$current_url": "https://shop.example/cart?item=é",
        },
    }
    for n in range(2)
]
SWIFT_BATCH = [
    {
        "event": "Swift tap",
        "properties": {"token": "tok-swift", "distinct_id": "sw-1", "time": 1700000009456, "mp_lib": "swift", "$os": "iOS"},
        "$mp_metadata": {"$mp_event_id": "swift-evt-1", "$mp_session_id": "s1"},
    }
]


def _get_event() -> tuple[dict, str]:
    """A browser GET event whose base64 holds `+` and `/` (what query parsing breaks)."""
    for n in range(500):
        event = {
            "event": "Clicked",
            "properties": {"$insert_id": "get-1", "distinct_id": "g-1", "token": "tok-web", "n": n, "q": "é~?>ü" + "~" * (n % 4)},
        }
        encoded = b64(event)
        if "+" in encoded and "/" in encoded:
            return event, encoded
    raise AssertionError("no payload with + and / in its base64")


GET_EVENT, GET_DATA = _get_event()

CALLS = {
    "browser batch": pe.Call(
        "POST",
        "/track/",
        "verbose=1&ip=1&_=1700000000123",
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": ORIGIN, "User-Agent": BROWSER_UA},
        urlencode({"data": b64(BROWSER_BATCH)}).encode(),
    ),
    "swift gzip": pe.Call(
        "POST",
        "/track/",
        "ip=1",
        {"Content-Type": "application/json", "Content-Encoding": "gzip", "User-Agent": "Mixpanel/4.2 CFNetwork"},
        gzip.compress(json.dumps(SWIFT_BATCH).encode()),
        client_ip="2001:db8::42",
    ),
    "browser GET": pe.Call(
        "GET", "/track/", f"data={quote(GET_DATA, safe='')}&ip=1&_=1700000000999", {"Origin": ORIGIN, "User-Agent": BROWSER_UA}
    ),
    "preflight": pe.Call(
        "OPTIONS",
        "/track/",
        "verbose=1&ip=1",
        {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    ),
}


def check_replies(replies: dict[str, pe.Reply]) -> None:
    """What each SDK must get back."""
    batch = replies["browser batch"]
    assert batch.status == 200
    assert batch.headers["content-type"].startswith("application/json")
    assert batch.headers["access-control-allow-origin"] == ORIGIN
    assert batch.headers["access-control-allow-credentials"] == "true"
    assert "origin" in batch.headers["vary"].lower()
    verbose = json.loads(batch.body)
    assert verbose["status"] == 1 and verbose["error"] is None
    # Written inside the request (DELIVERY=sync), not queued for a background flush.
    files = [(d["name"], d["status"], d["inserted_rows"]) for d in verbose["destinations"] if d["name"] == "files"]
    assert files == [("files", "success", 2)]

    swift = replies["swift gzip"]
    assert (swift.status, swift.body) == (200, b"1")  # Swift needs exactly 200 and an integer body
    assert swift.headers["content-type"].startswith("text/plain")

    get = replies["browser GET"]
    assert (get.status, get.body) == (200, b"1")
    assert get.headers["access-control-allow-origin"] == ORIGIN

    preflight = replies["preflight"]
    assert preflight.status == 204 and preflight.body == b""
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type"
    assert preflight.headers["access-control-allow-credentials"] == "true"


def check_rows(data_dir: Path) -> list[dict]:
    """Every event landed once, with the client address the platform saw."""
    rows = read_rows(data_dir, "events")
    by_id = {row["insert_id"]: row for row in rows}
    assert len(rows) == len(by_id) == 4, rows
    expected_ip = {
        "brw-0": CALLS["browser batch"].client_ip,
        "brw-1": CALLS["browser batch"].client_ip,
        "swift-evt-1": CALLS["swift gzip"].client_ip,
        "get-1": CALLS["browser GET"].client_ip,
    }
    assert {k: by_id[k]["properties"]["ip"] for k in expected_ip} == expected_ip
    assert by_id["brw-0"]["properties"]["$current_url"] == "https://shop.example/cart?item=é"
    assert by_id["swift-evt-1"]["event"] == "Swift tap" and by_id["swift-evt-1"]["distinct_id"] == "sw-1"
    assert by_id["get-1"]["properties"]["n"] == GET_EVENT["properties"]["n"]
    return rows


def check_unpatched_and_idle() -> None:
    """Nothing here needs gevent's patching, a flusher thread or an exit hook."""
    assert not green.patched()
    assert [t.name for t in threading.enumerate() if t.name.startswith("flush-")] == []


@pytest.fixture
def entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., object]]:
    """Import an entry module afresh with this test's environment (it builds its app at import)."""
    loaded: list[object] = []

    def load(name: str, **env: str):  # noqa: ANN202
        for key in ("RUNTIME", "DELIVERY", "TRUSTED_PROXY_HOPS", "FRONTEND_URL", "MIXPANEL_TOKEN", "BASE_PATH"):
            monkeypatch.delenv(key, raising=False)
        values = {"DESTINATIONS": "files", "DATA_DIR": str(tmp_path / "data"), "DEAD_LETTER_DIR": str(tmp_path / "spool")}
        for key, value in {**values, **env}.items():
            monkeypatch.setenv(key, value)
        sys.modules.pop(name, None)
        module = importlib.import_module(name)
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        module.proxy_app.extensions["mpproxy"].close()
        sys.modules.pop(module.__name__, None)


LAMBDA_EVENTS = {
    # HTTP APIs and function URLs base64-encode form and binary bodies; a REST API passes
    # text bodies as text and, with `*/*` binary media types, binary ones base64-encoded.
    "http-api-v2": (pe.http_api_v2, {"browser batch": True, "swift gzip": True}),
    "function-url": (pe.function_url, {"browser batch": True, "swift gzip": True}),
    "rest-api-v1": (pe.rest_api_v1, {"browser batch": False, "swift gzip": True}),
}


@pytest.mark.parametrize("kind", sorted(LAMBDA_EVENTS))
def test_lambda(kind: str, entry_point, tmp_path: Path) -> None:
    module = entry_point("lambda_handler")
    settings = module.proxy_app.extensions["mpproxy"].settings
    assert (settings.runtime, settings.trusted_proxy_hops) == ("AWS", 0)
    build, base64_bodies = LAMBDA_EVENTS[kind]
    replies = {}
    for name, call in CALLS.items():
        result = module.handler(build(call, base64_bodies.get(name, False)), None)
        replies[name] = pe.lambda_reply(result)
        assert result["isBase64Encoded"] is False  # text and JSON go back as text
    check_replies(replies)
    rows = check_rows(tmp_path / "data")
    assert all(row["properties"]["ip"] != "6.6.6.6" for row in rows)
    check_unpatched_and_idle()


def test_lambda_serves_the_js_library_as_text(entry_point, tmp_path: Path) -> None:
    """JavaScript goes back as text (not base64), byte for byte, on every event format."""
    lib = tmp_path / "lib"
    lib.mkdir()
    source = "/* mixpanel é */ (function(){ return 1 + 1; })();\n".encode()
    (lib / "lib.min.js").write_bytes(source)
    module = entry_point("lambda_handler", MIXPANEL_LIB_DIR=str(lib))
    for build in (pe.http_api_v2, pe.function_url, pe.rest_api_v1):
        result = module.handler(build(pe.Call("GET", "/lib.min.js"), False), None)
        reply = pe.lambda_reply(result)
        assert (reply.status, result["isBase64Encoded"], reply.body) == (200, False, source)
        assert "javascript" in reply.headers["content-type"]


def test_lambda_reads_secrets_from_secrets_manager(entry_point, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SECRETS_ARN: settings from a Secrets Manager secret, read at cold start (moto's server)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for key, value in {
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{port}",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("secretsmanager")
        arn = client.create_secret(Name="mpproxy/test", SecretString=json.dumps({"MIXPANEL_TOKEN": "tok-from-secret"}))["ARN"]
        module = entry_point("lambda_handler", SECRETS_ARN=arn)
        reply = pe.lambda_reply(module.handler(pe.http_api_v2(CALLS["browser GET"], False), None))
        assert (reply.status, reply.body) == (200, b"1")
        [row] = read_rows(tmp_path / "data", "events")
        assert row["token"] == "tok-from-secret"
    finally:
        server.stop()


def test_azure_functions(entry_point, tmp_path: Path, mp) -> None:
    """With Mixpanel as a second destination, dispatch runs both on the gevent pool, from
    the worker's threads, in a process gevent never patched."""
    module = entry_point("function_app", DESTINATIONS="mixpanel,files", MIXPANEL_API_HOST=mp.url)
    settings = module.proxy_app.extensions["mpproxy"].settings
    assert (settings.runtime, settings.trusted_proxy_hops) == ("AZURE", 1)
    [function] = module.app.get_functions()
    trigger = function.get_user_function()
    replies = {}
    # The Python worker runs synchronous functions on a thread pool.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(trigger, pe.azure_request(call), None) for name, call in CALLS.items()}
        replies = {name: pe.azure_reply(future.result()) for name, future in futures.items()}
    check_replies(replies)
    check_rows(tmp_path / "data")
    check_unpatched_and_idle()
    forwarded = {r["properties"]["$insert_id"] for r in mp.records("track") if "$insert_id" in r["properties"]}
    assert forwarded == {"brw-0", "brw-1", "get-1"}
    assert len(mp.records("track")) == 4


def test_azure_host_json_serves_routes_at_the_root() -> None:
    host = json.loads((Path(__file__).parents[1] / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensions"]["http"]["routePrefix"] == ""


@pytest.fixture
def functions_framework(tmp_path: Path) -> Iterator[str]:
    """main.py under `functions-framework`, the server Cloud Functions runs it with."""
    port = free_port()
    env = {"DESTINATIONS": "files", "DATA_DIR": str(tmp_path / "data"), "DEAD_LETTER_DIR": str(tmp_path / "spool")}
    for key in ("RUNTIME", "DELIVERY", "TRUSTED_PROXY_HOPS", "FRONTEND_URL", "BASE_PATH"):
        env[key] = ""
    args = [str(VENV_BIN / "functions-framework"), "--source", "main.py", "--target", "handler"]
    server = Server([*args, "--host", "127.0.0.1", "--port", str(port)], env=env, log=tmp_path / "ff.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/ping", timeout=1).ok, 30, what="functions-framework")
    except TimeoutError:
        server.stop()
        raise RuntimeError(server.log()[-3000:]) from None
    yield url
    server.stop()


def test_cloud_functions(functions_framework: str, tmp_path: Path) -> None:
    replies = {}
    for name, call in CALLS.items():
        headers = {
            **call.headers,
            # Google's front end appends the client to X-Forwarded-For.
            "X-Forwarded-For": call.forwarded_for(),
            "X-Forwarded-Proto": "https",
            "X-Cloud-Trace-Context": "105445aa7843bc8bf206b12000100000/1;o=1",
            "Traceparent": "00-105445aa7843bc8bf206b12000100000-0000000000000001-01",
        }
        url = f"{functions_framework}{call.path}" + (f"?{call.query}" if call.query else "")
        response = requests.request(call.method, url, headers=headers, data=call.body or None, timeout=10)
        replies[name] = pe.Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)
    check_replies(replies)
    check_rows(tmp_path / "data")
    ping = requests.get(f"{functions_framework}/ping", timeout=5).json()
    assert ping["status"] == "ok"
