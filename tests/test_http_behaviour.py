"""HTTP behaviour around the pipeline: CORS, pass-through, the JS library, errors,
Mixpanel's verdicts and outages, normalisation, start-up and logging."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import time
from pathlib import Path

import flask
import flask_cors.extension
import pytest
import requests

import proxy.cors
from app import ProxyFlask
from proxy import __version__
from tests.fixtures_core import b64, run_proxy  # noqa: F401
from tests.support.mixpanel_double import LIB_BODY, Behaviour
from tests.support.processes import ROOT, VENV_BIN, Server, free_port

DIST = ROOT / "node_modules" / "mixpanel-browser" / "dist"
RECORDER = "mixpanel-recorder-CZqK2y7C.min.js"
BASIC = "Basic " + base64.b64encode(b"service-user:service-secret-value").decode()


def event(name: str = "e", **props: object) -> dict:
    return {"event": name, "properties": {"distinct_id": "d", "time": 1700000000, "token": "t", **props}}


@pytest.fixture
def app(make_app, mp):
    return make_app(destinations="mixpanel", mixpanel_api_host=mp.url)


@pytest.fixture
def client(app):
    return app.test_client()


# --- CORS ------------------------------------------------------------------------------------


def test_cors_unset_reflects_the_origin_with_credentials(make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url).test_client()
    reply = client.post("/track/", data={"data": b64(event())}, headers={"Origin": "https://shop.example"})
    assert reply.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in reply.headers["Vary"]


def test_cors_without_an_origin_sends_only_vary(make_app, mp) -> None:
    """flask-cors runs only when there is an Origin (server-side SDKs send none): nothing to
    grant then, and every SDK route still says its answer varies by Origin."""
    app = make_app(destinations="mixpanel", mixpanel_api_host=mp.url)
    client = app.test_client()
    for reply in (
        client.post("/track/", data={"data": b64(event())}),
        client.options("/track/", headers={"Access-Control-Request-Method": "POST"}),
    ):
        assert reply.status_code < 300
        assert not [h for h in reply.headers.keys() if h.startswith("Access-Control-")]
        assert reply.headers.getlist("Vary") == ["Origin"]
    assert not client.get("/ping").headers.get("Vary")  # operator routes are not CORS routes
    granted = client.post("/track/", data={"data": b64(event())}, headers={"Origin": "https://shop.example"})
    assert granted.headers.getlist("Access-Control-Allow-Origin") == ["https://shop.example"]  # flask-cors ran, once


@pytest.mark.parametrize("frontend_url", ["https://a.example, https://b.example/", "https://b.example"])
def test_cors_list_echoes_only_listed_origins(frontend_url, make_app, mp) -> None:
    client = make_app(frontend_url=frontend_url, mixpanel_api_host=mp.url).test_client()
    allowed = client.post("/track/", data={"data": b64(event())}, headers={"Origin": "https://b.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://b.example"
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert allowed.headers.getlist("Vary") == ["Origin"]
    refused = client.post("/track/", data={"data": b64(event())}, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "Access-Control-Allow-Credentials" not in refused.headers
    assert "Origin" in refused.headers["Vary"]


def test_cors_none_disables_it(make_app) -> None:
    client = make_app(frontend_url="none").test_client()
    for reply in (
        client.post("/track/", data={"data": b64(event())}, headers={"Origin": "https://a.example"}),
        client.options("/track/", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}),
    ):
        assert not [h for h in reply.headers.keys() if h.startswith("Access-Control-")]


def test_cors_preflight_with_custom_headers(make_app) -> None:
    client = make_app(frontend_url="https://a.example").test_client()
    reply = client.options(
        "/track/",
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-custom-header",
        },
    )
    assert reply.status_code in (200, 204)
    assert reply.headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    assert reply.headers["Access-Control-Allow-Headers"] == "content-type, x-custom-header"
    assert "Origin" in reply.headers["Vary"]
    refused = client.options("/track/", headers={"Origin": "https://b.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_flask_cors_answers_are_remembered_per_path_origin_and_private_network_header(make_app, mp, monkeypatch) -> None:
    """flask-cors decides each (path, Origin, Private-Network header) once per worker and its
    answer is replayed; preflights are always its own; a full memory starts over."""
    decided: list[str] = []
    decide = flask_cors.extension.set_cors_headers

    def counted(response, options):
        decided.append(flask.request.headers.get("Origin"))
        return decide(response, options)

    monkeypatch.setattr(flask_cors.extension, "set_cors_headers", counted)
    client = make_app(frontend_url="https://a.example, https://b.example", mixpanel_api_host=mp.url).test_client()

    def cors(path: str = "/track/", method: str = "POST", **headers: str) -> list[tuple[str, str]]:
        reply = client.open(path, method=method, data={"data": b64(event())}, headers=headers)
        assert reply.status_code < 300
        return sorted((k, v) for k, v in reply.headers.items() if k.startswith("Access-Control-") or k == "Vary")

    granted_a = cors(Origin="https://a.example")
    assert ("Access-Control-Allow-Origin", "https://a.example") in granted_a
    assert cors(Origin="https://a.example") == granted_a and decided == ["https://a.example"]
    assert ("Access-Control-Allow-Origin", "https://b.example") in cors(Origin="https://b.example")
    refused = cors(Origin="https://evil.example")
    assert not [h for h, _ in refused if h.startswith("Access-Control-")] and refused == [("Vary", "Origin")]
    assert cors(Origin="https://evil.example") == refused and len(decided) == 3
    private = cors(Origin="https://a.example", **{"Access-Control-Request-Private-Network": "true"})
    assert ("Access-Control-Allow-Private-Network", "false") in private and len(decided) == 4
    assert cors("/engage/", Origin="https://a.example") == granted_a and len(decided) == 5  # another path
    preflight = {"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    assert cors(method="OPTIONS", **preflight) == cors(method="OPTIONS", **preflight)
    assert len(decided) == 7  # never remembered
    long_origin = "https://" + "a" * proxy.cors.MAX_REMEMBERED_KEY + ".example"
    assert cors(Origin=long_origin) == refused == cors(Origin=long_origin)
    assert len(decided) == 9  # too long a key to keep

    monkeypatch.setattr(proxy.cors, "MAX_REMEMBERED", 1)
    decided.clear()
    for origin in ("https://a.example", "https://b.example", "https://a.example"):
        assert ("Access-Control-Allow-Origin", origin) in cors("/groups/", Origin=origin)
    assert len(decided) == 3  # each one forgot the one before


def test_the_app_remembers_whether_each_function_is_synchronous() -> None:
    app = ProxyFlask("remembers")

    def view() -> str:
        return "ok"

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> str:
            return "ok"

    async def coroutine() -> str:
        return "ok"

    assert app.ensure_sync(view) is view and app.ensure_sync(view) is view
    assert list(app._sync) == [view]
    unhashable = Unhashable()
    assert app.ensure_sync(unhashable) is unhashable  # answered, not remembered
    wrapped = app.ensure_sync(coroutine)  # Flask's wrapper, made once
    assert wrapped is not coroutine and app.ensure_sync(coroutine) is wrapped
    assert wrapped() == "ok"
    assert list(app._sync) == [view, coroutine]


# --- pass-through ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "upstream_path"),
    [
        ("GET", "/flags/", "/flags/"),
        ("GET", "/flags", "/flags/"),
        ("POST", "/flags/my-flag/first-time-events", "/flags/my-flag/first-time-events"),
        ("GET", "/settings/", "/settings/"),
        ("GET", "/decide/", "/decide/"),
        ("POST", "/record/", "/record/"),
    ],
)
def test_pass_through_keeps_method_query_body_and_authorization(method, path, upstream_path, client, mp) -> None:
    auth = "Basic " + base64.b64encode(b"project-token:").decode()
    body = b'{"context":{"distinct_id":"d","a+b":"c/d"}}' if method == "POST" else b""
    reply = client.open(
        path + "?context=%7B%22x%22%3A1%7D&mp_lib=web&a=b+c",
        method=method,
        data=body,
        headers={"Authorization": auth, "Content-Type": "application/json", "X-Forwarded-For": "198.51.100.4"},
    )
    assert reply.status_code == 200
    [sent] = mp.requests(upstream_path.strip("/").split("/")[0])
    assert (sent.method, sent.path) == (method, upstream_path)
    assert sent.query == {"context": '{"x":1}', "mp_lib": "web", "a": "b c"}
    assert sent.body == body
    assert sent.headers["authorization"] == auth
    assert sent.headers["x-forwarded-for"] == "198.51.100.4" and sent.headers["x-real-ip"] == "198.51.100.4"
    if path.startswith(("/flags", "/settings", "/decide")):
        assert reply.get_json()["echo_auth"] == auth


def test_pass_through_when_mixpanel_is_down_is_503(make_app) -> None:
    client = make_app(mixpanel_api_host=f"http://127.0.0.1:{free_port()}", mixpanel_timeout_seconds="0.5").test_client()
    reply = client.get("/flags/?context=x")
    assert reply.status_code == 503


# --- the JS library --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "source", "cache"),
    [
        ("/lib.min.js", DIST / "mixpanel.min.js", "max-age=3600"),
        ("/lib.js", DIST / "mixpanel.globals.js", "max-age=3600"),
        (f"/{RECORDER}", DIST / "async-modules" / RECORDER, "immutable"),
        (f"/libs/{RECORDER}", DIST / "async-modules" / RECORDER, "immutable"),
        ("/mixpanel-recorder.min.js", DIST / "mixpanel-recorder.min.js", "max-age="),
    ],
)
def test_library_from_lib_dir(path, source, cache, make_app) -> None:
    client = make_app(mixpanel_lib_dir=str(DIST)).test_client()
    reply = client.get(path)
    assert reply.status_code == 200
    assert reply.data == source.read_bytes()
    assert reply.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert cache in reply.headers["Cache-Control"]


def test_library_source_map_and_unknown_names(make_app) -> None:
    client = make_app(mixpanel_lib_dir=str(DIST)).test_client()
    reply = client.get(f"/{RECORDER}.map")
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/json"
    for path in ("/mixpanel-nothing-here.min.js", "/evil.js", "/..%2Fpackage.json"):
        missing = client.get(path)
        assert missing.status_code == 404 and missing.get_json() == {"error": "not found", "status": 404}


def test_library_from_cdn_is_cached(make_app, mp) -> None:
    client = make_app(mixpanel_cdn_url=f"{mp.url}/libs/").test_client()
    for _ in range(3):
        reply = client.get("/lib.min.js")
        assert reply.status_code == 200 and reply.data == LIB_BODY
        assert reply.headers["Content-Type"] == "application/javascript; charset=utf-8"
        assert "max-age=" in reply.headers["Cache-Control"]
    module = client.get(f"/{RECORDER}")
    assert module.status_code == 200 and "immutable" in module.headers["Cache-Control"]
    assert [r.path for r in mp.requests()] == ["/libs/mixpanel-2-latest.min.js", f"/libs/{RECORDER}"]


def test_library_cdn_down_is_503(make_app) -> None:
    client = make_app(mixpanel_cdn_url=f"http://127.0.0.1:{free_port()}/libs/").test_client()
    assert client.get("/lib.min.js").status_code == 503


# --- small routes and errors -----------------------------------------------------------------


def test_ping_health_and_json_errors(client) -> None:
    ping = client.get("/ping")
    assert ping.status_code == 200 and ping.get_json() == {"status": "ok", "version": __version__}
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["destinations"]["mixpanel"]["ready"] is True
    missing = client.get("/no/such/path")
    assert missing.status_code == 404 and missing.get_json() == {"error": "not found", "status": 404}
    wrong = client.delete("/track")
    assert wrong.status_code == 405 and wrong.get_json() == {"error": "method not allowed", "status": 405}


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"data=!!!not-base64!!!", {}, 400),
        (b"data=" + base64.b64encode(b"not json"), {}, 400),
        (b"{broken json", {"Content-Type": "application/json"}, 400),
        (b"data=" + base64.b64encode(b"42"), {}, 400),
        (b"", {}, 400),
        (b"\xff\xfe\x00garbage", {}, 400),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400),
        (gzip.compress(json.dumps([event()]).encode())[:-12], {"Content-Encoding": "gzip"}, 400),
        (b"x", {"Content-Encoding": "br"}, 400),
    ],
)
def test_undecodable_payloads_are_400_with_one_line(body, headers, status, client, mp) -> None:
    for verbose in ("0", "1"):
        reply = client.post(f"/track/?verbose={verbose}", data=body, headers=headers)
        assert reply.status_code == status
        if verbose == "1":
            message = reply.get_json()["error"]
            assert message and "\n" not in message and len(message) < 200
        else:
            assert reply.data == b"0"
    assert mp.requests() == []


def test_body_limits_and_gzip_bombs_are_413(make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url, max_body_bytes="65536").test_client()
    big = client.post("/track/?verbose=1", data=b"data=" + b"A" * 70000)
    assert big.status_code == 413 and "65536" in big.get_json()["error"]
    bomb = gzip.compress(b"[" + b" " * (50 << 20) + b"]")
    assert len(bomb) < 65536
    blown = client.post("/import", data=bomb, headers={"Content-Encoding": "gzip", "Authorization": BASIC})
    assert blown.status_code == 413 and blown.get_json()["code"] == 413
    record = client.post("/record/", data=b"x" * 70000)
    assert record.status_code == 413
    assert mp.requests() == []


def test_odd_records_are_forwarded_and_mixpanel_judges(make_app, mp) -> None:
    client = make_app(destinations="mixpanel,files", mixpanel_api_host=mp.url, mixpanel_token="tok").test_client()
    odd = [None, {"event": "no props"}, {"event": "string time", "properties": {"time": "yesterday", "distinct_id": 1}}]
    reply = client.post("/track/?verbose=1", data={"data": json.dumps(odd)})
    assert reply.status_code == 200
    body = reply.get_json()
    assert body["status"] == 0 and body["error"] == "record is not an object"
    sent = mp.records("track")
    assert sent[0] is None
    assert sent[1]["properties"]["token"] == "tok" and isinstance(sent[1]["properties"]["time"], int)
    assert sent[2]["properties"]["time"] == "yesterday"
    for payload in ([None], [{"event": "x", "properties": "a string"}], [[1, 2]], [{}]):
        reply = client.post("/track/", data={"data": json.dumps(payload)})
        assert reply.status_code == 200 and reply.data == b"0"


# --- Mixpanel's verdicts and outages ---------------------------------------------------------


def test_mixpanel_zero_verdict_stays_zero(client, mp) -> None:
    mp.behaviour = Behaviour(reject=True)
    plain = client.post("/track/", data={"data": b64(event())})
    assert (plain.status_code, plain.data) == (200, b"0")
    verbose = client.post("/track/?verbose=1", data={"data": b64(event())})
    assert verbose.status_code == 200
    assert verbose.get_json()["status"] == 0 and verbose.get_json()["error"] == "rejected by test"


def test_mixpanel_down_is_503_so_sdks_retry(make_app) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    client = make_app(destinations="mixpanel", mixpanel_api_host=closed, mixpanel_timeout_seconds="0.5").test_client()
    plain = client.post("/track/", data={"data": b64(event())})
    assert (plain.status_code, plain.data) == (503, b"0")
    assert plain.headers["Retry-After"].isdigit()
    verbose = client.post("/engage/?verbose=1", data={"data": b64({"$distinct_id": "d", "$token": "t", "$set": {}})})
    assert verbose.status_code == 503 and verbose.get_json()["status"] == 0
    assert verbose.get_json()["destinations"][0]["name"] == "mixpanel"
    imported = client.post("/import", json=[event()], headers={"Authorization": BASIC})
    assert imported.status_code == 503 and imported.get_json()["code"] == 503


def test_429_then_200_is_retried(client, mp) -> None:
    mp.behaviour = Behaviour(status=429, times=1)
    reply = client.post("/track/?ip=0", data={"data": b64(event())})
    assert (reply.status_code, reply.data) == (200, b"1")
    assert len(mp.requests("track")) == 2
    assert mp.records("track") == [event()]


def test_500s_then_200_is_retried_for_import(client, mp) -> None:
    mp.behaviour = Behaviour(status=502, times=2)
    reply = client.post("/import", json=[event(**{"$insert_id": "z"})], headers={"Authorization": BASIC})
    assert reply.status_code == 200 and reply.get_json() == {"code": 200, "num_records_imported": 1, "status": "OK"}
    assert len(mp.requests("import")) == 3


def test_import_is_chunked_to_2000_records_and_counts_summed(client, mp) -> None:
    items = [event(f"e{i}", **{"$insert_id": f"id-{i}"}) for i in range(4500)]
    reply = client.post("/import?strict=1&ip=0", json=items, headers={"Authorization": BASIC})
    assert reply.status_code == 200
    assert reply.get_json() == {"code": 200, "num_records_imported": 4500, "status": "OK"}
    sent = mp.requests("import")
    assert [len(r.records) for r in sent] == [2000, 2000, 500]
    assert all(r.headers["authorization"] == BASIC and r.headers["content-encoding"] == "gzip" for r in sent)
    assert mp.records("import") == items


def test_import_failed_records_and_401_are_passed_back(client, mp) -> None:
    bad = client.post("/import", json=[event(), {"properties": {}}], headers={"Authorization": BASIC})
    assert bad.status_code == 400
    body = bad.get_json()
    assert body["code"] == 400 and body["num_records_imported"] == 1
    assert [f["index"] for f in body["failed_records"]] == [1]
    unauthorised = client.post("/import", json=[event()])
    assert unauthorised.status_code == 401 and unauthorised.get_json()["code"] == 401


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forwarded_for", "hops", "expected"),
    [
        ("203.0.113.9", "1", "203.0.113.9"),
        ("6.6.6.6, 203.0.113.9", "1", "203.0.113.9"),
        ("6.6.6.6, 203.0.113.9, 10.0.0.2", "2", "203.0.113.9"),
        ("203.0.113.9:5555", "1", "203.0.113.9"),
        ("[2001:db8::1]:443", "1", "2001:db8::1"),
        ("not-an-ip", "1", "127.0.0.1"),
        ("6.6.6.6", "0", "127.0.0.1"),
        (None, "1", "127.0.0.1"),
    ],
)
def test_client_ip_from_forwarded_for_hops(forwarded_for, hops, expected, make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url, trusted_proxy_hops=hops).test_client()
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    client.post("/track/?ip=1", data={"data": b64(event())}, headers=headers)
    client.post("/engage/?ip=1", data={"data": b64({"$token": "t", "$distinct_id": "d", "$set": {"a": 1}})}, headers=headers)
    assert mp.records("track")[0]["properties"]["ip"] == expected
    assert mp.records("engage")[0]["$ip"] == expected
    for request in mp.requests():
        assert request.headers["x-forwarded-for"] == expected and request.query["ip"] == "1"


def test_ip_zero_adds_no_ip_anywhere(make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url).test_client()
    headers = {"X-Forwarded-For": "203.0.113.9"}
    client.post("/track/?ip=0", data={"data": b64(event())}, headers=headers)
    client.post("/engage/", data={"data": b64({"$token": "t", "$distinct_id": "d", "$set": {}}), "ip": "0"}, headers=headers)
    assert mp.records("track") == [event()]
    assert "$ip" not in mp.records("engage")[0]
    for request in mp.requests():
        assert request.query["ip"] == "0" and "x-forwarded-for" not in request.headers


def test_sdk_ip_property_and_everything_else_stay_as_sent(make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url).test_client()
    item = event(ip="192.0.2.1", nested={"$set": [1, {"x": None}]}, big=2**60, f=0.1)
    client.post("/track/?ip=1", json=[item], headers={"X-Forwarded-For": "203.0.113.9"})
    assert mp.records("track") == [item]


def test_token_injection_and_receive_time(make_app, mp) -> None:
    client = make_app(destinations="mixpanel", mixpanel_api_host=mp.url, mixpanel_token="injected").test_client()
    before = int(time.time() * 1000)
    client.post("/track/", json=[{"event": "no time", "properties": {"distinct_id": "d", "token": "other"}}])
    after = int(time.time() * 1000)
    client.post("/engage/", json={"$distinct_id": "d", "$token": "other", "$set": {"a": 1}})
    client.post("/groups/", json={"$group_key": "k", "$group_id": "g", "$set": {"a": 1}})
    [sent] = mp.records("track")
    assert sent["properties"]["token"] == "injected"
    assert before <= sent["properties"]["time"] <= after
    assert mp.records("engage")[0]["$token"] == "injected"
    assert mp.records("groups")[0]["$token"] == "injected"


# --- start-up and logs under real gunicorn ---------------------------------------------------


def _gunicorn_exit(env: dict[str, str], log: Path) -> tuple[int | None, str]:
    args = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{free_port()}", "-w", "1", "app:app"]
    server = Server(args, env={"PYTHONUNBUFFERED": "1", **env}, log=log).start()
    assert server.proc is not None
    try:
        code = server.proc.wait(20)
    except subprocess.TimeoutExpired:
        code = None  # still running: gunicorn kept respawning workers
    finally:
        server.stop()
    return code, server.log()


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"DESTINATIONS": "mixpanel,nosuchthing"}, "configuration error: DESTINATIONS: unknown destination 'nosuchthing'"),
        ({"MIXPANEL_REGION": "MARS"}, "configuration error: MIXPANEL_REGION='MARS' must be one of US, EU, IN"),
        ({"MIXPANEL_API_HOST": "api.mixpanel.com"}, "configuration error: MIXPANEL_API_HOST="),
    ],
)
def test_config_errors_stop_gunicorn_with_one_line(env, line, tmp_path) -> None:
    code, log = _gunicorn_exit({"DATA_DIR": str(tmp_path / "data"), **env}, tmp_path / "gunicorn.log")
    assert code not in (0, None)
    matching = [text for text in log.splitlines() if text.startswith(line)]
    assert len(matching) == 1, log
    assert "Traceback" not in log


def test_no_secrets_or_payloads_in_logs(run_proxy, mp) -> None:  # noqa: F811
    secret = "s3-secret-VALUE-do-not-log-8842"
    auth = "Basic " + base64.b64encode(b"svc-user:import-secret-VALUE-77").decode()
    marker = "payload-marker-PII-jane@example.com"
    proxy = run_proxy(destinations="mixpanel,files", mixpanel_api_host=mp.url, log_level="DEBUG", s3_secret_access_key=secret)
    items = [event(email=marker, **{"$insert_id": "x"})]
    requests.post(f"{proxy.url}/import", json=items, headers={"Authorization": auth}, timeout=10)
    requests.post(f"{proxy.url}/track/", data={"data": b64(items)}, headers={"Authorization": auth}, timeout=10)
    requests.post(f"{proxy.url}/track/", data=f"data={marker}", timeout=10)
    requests.post(f"{proxy.url}/track/", data=b"{" + marker.encode(), timeout=10)
    requests.get(f"{proxy.url}/flags/?context={marker}", headers={"Authorization": auth}, timeout=10)
    mp.behaviour = Behaviour(status=500, times=1)
    requests.post(f"{proxy.url}/track/", data={"data": b64(items)}, timeout=10)
    proxy.stop()
    log = proxy.log()
    assert "ready: destinations mixpanel, files" in log
    for value in (secret, auth, auth.split()[1], "import-secret-VALUE-77", marker, "jane@example.com"):
        assert value not in log


def test_gzip_header_on_a_bodiless_get_uses_the_query(client, mp) -> None:
    reply = client.get("/track/", query_string={"data": b64(event()), "ip": "0"}, headers={"Content-Encoding": "gzip"})
    assert (reply.status_code, reply.data) == (200, b"1")
    assert mp.records("track") == [event()]


def test_upstream_failures_log_no_query_strings(make_app, caplog) -> None:
    marker = "pii-marker-jane"
    client = make_app(mixpanel_api_host=f"http://127.0.0.1:{free_port()}", mixpanel_timeout_seconds="0.5").test_client()
    with caplog.at_level("DEBUG"):
        reply = client.get(f"/decide/?distinct_id={marker}&token=project-token")
    assert reply.status_code == 503
    assert marker not in reply.get_data(as_text=True)
    assert caplog.records and marker not in caplog.text


def test_sdk_style_import_gets_mixpanels_verdict_as_status(client, mp) -> None:
    good = client.post("/import?verbose=1", data={"data": b64([event(**{"$insert_id": "a"})])}, headers={"Authorization": BASIC})
    assert good.status_code == 200 and good.get_json()["status"] == 1
    bad = client.post("/import", data={"data": b64([{"properties": {}}])}, headers={"Authorization": BASIC})
    assert (bad.status_code, bad.data) == (400, b"0")
    unauthorised = client.post("/import?verbose=1", data={"data": b64([event()])})
    assert unauthorised.status_code == 401 and unauthorised.get_json()["status"] == 0


def test_outbound_http_proxy_carries_mixpanel_calls_with_its_credentials(make_app, mp) -> None:
    # The double stands in for a corporate forward proxy: an absolute-form request target reaches it,
    # so a reply proves the call went through the proxy (the Mixpanel host itself does not resolve).
    proxy_url = mp.url.replace("http://", "http://egress:p%40ss@")
    app = make_app(destinations="mixpanel", mixpanel_api_host="http://api.mixpanel.invalid", http_proxy=proxy_url)
    reply = app.test_client().post("/track?verbose=1", json=[event("through-proxy")])
    assert reply.status_code == 200 and reply.get_json()["status"] == 1
    (received,) = mp.requests("track")
    assert received.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"egress:p@ss").decode()
    assert received.headers["host"] == "api.mixpanel.invalid"
    assert [r["event"] for r in mp.records("track")] == ["through-proxy"]
    # Passed-through calls take the same way.
    assert app.test_client().get("/decide?verbose=1&token=t").status_code == 200
    assert mp.requests("decide")[0].headers["host"] == "api.mixpanel.invalid"
