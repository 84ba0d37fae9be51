"""mixpanel-browser (npm, the real library) in Debian's headless Chromium, through the proxy
under gunicorn, into Mixpanel (the double) and every destination at once.

The page (tests/e2e/page.py) is on another origin than the proxy and loads the official
snippet with MIXPANEL_CUSTOM_LIB_URL = the proxy's /lib.min.js; the proxy serves npm
mixpanel-browser's dist/ (MIXPANEL_LIB_DIR). tests/e2e/browser.js drives it with npm
playwright-core and reports every request the page made, with its exact body.

CORS: with FRONTEND_URL = the page's origin everything succeeds (the full run); with
another value the browser cannot read the proxy's answers, cannot send a preflighted
request at all, and the proxy says so in its log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e import check, wire
from tests.e2e.page import PageServer, lib_file
from tests.fixtures_core import start_gunicorn
from tests.support.mixpanel_double import MixpanelDouble
from tests.support.processes import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCRIPT = Path(__file__).with_name("browser.js")
# npm playwright-core, kept out of the project's node_modules (scripts/test.d/browser.sh).
PLAYWRIGHT = ROOT / ".standins" / "browser" / "node_modules"
pytestmark = [
    pytest.mark.emulator,
    pytest.mark.skipif(not shutil.which("node"), reason="node is not installed"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed: scripts/test.d/browser.sh"),
    pytest.mark.skipif(not (PLAYWRIGHT / "playwright-core").is_dir(), reason="no playwright-core: scripts/test.d/browser.sh"),
]

PEOPLE = {
    "$set": "people.set",
    "$set_once": "people.set_once",
    "$add": "people.increment",
    "$append": "people.append",
    "$union": "people.union",
    "$unset": "people.unset",
    "$remove": "people.remove",
    "$delete": "people.delete_user",
}
EXPECTED_OPERATIONS = {
    "track (batched)",
    "track (immediate)",
    "track (sendBeacon on page hide)",
    "identify",
    "alias",
    "get_group().set",
    *(op for op in PEOPLE.values() if op != "people.remove"),
}
# What FRONTEND_URL names when the page's origin is not allowed.
OTHER_ORIGIN = "https://shop.example.com"
# The line the proxy should log for a refused origin (see test_refused_origin_is_logged).
REFUSED_LOG = r"CORS: origin '?{origin}'? not allowed"


def browser_operation(endpoint: str, record: Any, request: wire.Sent) -> str:
    if endpoint == "engage":
        return next((label for op, label in PEOPLE.items() if op in record), "people (other)")
    if endpoint == "groups":
        return next(
            (f"get_group().{op[1:]}" for op in ("$set", "$set_once", "$union", "$unset", "$remove", "$delete") if op in record),
            "groups (other)",
        )
    name = record.get("event")
    if name == "e2e beacon":
        return (
            "track (sendBeacon on page hide)"
            if request.transport == "ping"
            else f"track (beacon event sent by {request.transport})"
        )
    return {
        "e2e batched": "track (batched)",
        "e2e immediate": "track (immediate)",
        "$identify": "identify",
        "$create_alias": "alias",
    }.get(name, f"track {name!r}")


def run_browser(page_url: str, proxy_url: str, scenario: str, workdir: Path, ids: dict[str, str] | None = None) -> dict[str, Any]:
    config = {
        "chromium": CHROMIUM,
        "page": page_url,
        "proxy": proxy_url,
        "scenario": scenario,
        "user_data_dir": str(workdir / f"chromium-profile-{scenario}"),
        "timeout_ms": 30000,
        "ids": ids or {},
    }
    env = {**os.environ, "NODE_PATH": str(PLAYWRIGHT)}
    result = subprocess.run(
        ["node", str(SCRIPT), json.dumps(config)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"browser driver printed nothing (exit {result.returncode}):\n{result.stderr[-3000:]}"
    out = json.loads(lines[-1])
    (workdir / f"browser-{scenario}.json").write_text(json.dumps(out, indent=1))
    return out


def sent_requests(out: dict[str, Any]) -> list[wire.Sent]:
    return [
        wire.Sent(
            "browser",
            r["method"],
            r["url"],
            {k.lower(): v for k, v in (r["headers"] or {}).items()},
            base64.b64decode(r["body"]),
            r["type"],
            r["status"],
        )
        for r in out["requests"]
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def page_server() -> Iterator[PageServer]:
    server = PageServer().start()
    yield server
    server.stop()


def test_browser_through_the_proxy_into_every_destination(e2e_proxy, page_server, mp, tmp_path) -> None:
    unique = uuid.uuid4().hex[:8]
    proxy = e2e_proxy(frontend_url=page_server.origin)
    page_url = page_server.show(proxy.url, f"tok-browser-{unique}")
    ids = {"user": f"user-{unique}", "alias": f"alias-{unique}", "group": f"acme-{unique}"}
    started_ms = int(time.time() * 1000)
    out = run_browser(page_url, proxy.url, "full", tmp_path, ids)
    finished_ms = int(time.time() * 1000) + 1000
    console = "\n".join(out["console"][-30:])
    assert out["error"] is None, f"{out['error']}\nconsole:\n{console}"
    sent = sent_requests(out)

    # The library and the recorder module came from the proxy, exactly npm's files.
    by_path = {r.path: r for r in sent if r.method == "GET"}
    lib = by_path.get("/lib.min.js")
    assert lib and lib.status == 200, "the snippet did not load /lib.min.js from the proxy"
    loaded = {Path(r["url"]).name: r["sha256"] for r in out["requests"] if r["url"].endswith(".js")}
    assert loaded["lib.min.js"] == sha256(lib_file("mixpanel.min.js"))
    recorder = [name for name in loaded if name.startswith("mixpanel-recorder-")]
    assert recorder, f"the recorder module was not loaded through the proxy: {sorted(loaded)}"
    assert loaded[recorder[0]] == sha256(lib_file(recorder[0]))

    # Every call the page could see succeeded, with CORS headers for the page's origin.
    assert out["results"]["immediate"] == 1, out["results"]
    assert not [line for line in out["console"] if "CORS" in line], console
    visible = [r for r in out["requests"] if r["type"] in ("xhr", "fetch")]
    assert visible and all(r["status"] == 200 for r in visible), [(r["url"], r["status"], r["failure"]) for r in visible]
    for r in visible:
        headers = r["response_headers"] or {}
        assert headers.get("access-control-allow-origin") == page_server.origin, (r["url"], headers)
        assert headers.get("access-control-allow-credentials") == "true", (r["url"], headers)
    beacons = [r for r in sent if r.transport == "ping"]
    assert beacons and all(r.endpoint == "track" for r in beacons), [r.url for r in beacons]

    records = wire.sent_records(sent, browser_operation, client_ip="127.0.0.1", token=None, times=(started_ms, finished_ms))
    missing = EXPECTED_OPERATIONS - {r.operation for r in records}
    assert not missing, f"the browser never sent: {sorted(missing)}"
    assert all(wire.flag(r.request, "ip") == "1" for r in records)  # the library's default: geolocate
    assert all(not r.request.body.startswith(b"data=%5B") and not r.request.body.startswith(b"data=%7B") for r in records), (
        "expected the library's default base64 payloads for a custom api_host"
    )

    report = check.run("browser", records, sent, mp, proxy, replay=True)
    assert not report.problems, report.text


# -- CORS: a page whose origin FRONTEND_URL does not name -------------------------------------------


@pytest.fixture(scope="module")
def refused(
    page_server: PageServer, mixpanel: MixpanelDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One browser run against a proxy whose FRONTEND_URL is another origin."""
    workdir = tmp_path_factory.mktemp("cors-refused")
    env = {
        "DESTINATIONS": "mixpanel",
        "MIXPANEL_API_HOST": mixpanel.url,
        "MIXPANEL_LIB_DIR": str(lib_file("mixpanel.min.js").parent),
        "FRONTEND_URL": OTHER_ORIGIN,
        "DATA_DIR": str(workdir / "data"),
        "DEAD_LETTER_DIR": str(workdir / "spool"),
        "GRACEFUL_TIMEOUT": "5",
    }
    server = start_gunicorn(env, workdir / "proxy.log")
    proxy_url = f"http://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
    try:
        page_url = page_server.show(proxy_url, f"tok-cors-{uuid.uuid4().hex[:8]}")
        out = run_browser(page_url, proxy_url, "cors", workdir)
        preflight = requests.options(
            f"{proxy_url}/record/",
            headers={
                "Origin": page_server.origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
            timeout=5,
        )
        yield {"out": out, "preflight": preflight, "log": lambda: server.log(), "origin": page_server.origin}
    finally:
        server.stop()


def test_refused_origin_is_blocked_by_the_browser(refused) -> None:
    out = refused["out"]
    console = "\n".join(out["console"])
    assert out["error"] is None, out["error"]
    # A simple request (the library's form POST) reaches the proxy, but the page may not read
    # the answer: the library reports failure. A preflighted one is never sent.
    assert out["results"]["immediate"] == 0, out["results"]
    assert out["results"]["preflighted"].startswith("error TypeError"), out["results"]
    assert re.search(r"has been blocked by CORS policy: No 'Access-Control-Allow-Origin' header", console), console
    assert "Response to preflight request doesn't pass access control check" in console, console
    tracked = [r for r in out["requests"] if "/track/" in r["url"]]
    assert tracked and all(r["failure"] for r in tracked), tracked
    headers = refused["preflight"].headers
    assert "Access-Control-Allow-Origin" not in headers, dict(headers)
    assert "Access-Control-Allow-Credentials" not in headers, dict(headers)


def test_refused_origin_is_logged(refused) -> None:
    pattern = REFUSED_LOG.format(origin=re.escape(refused["origin"]))
    assert re.search(pattern, refused["log"](), re.IGNORECASE), refused["log"]()[-2000:]
