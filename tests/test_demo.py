"""/demo: the page that drives the Mixpanel JS library through the proxy. Its HTML in-process,
then the page itself in headless Chromium (Debian's, driven by playwright-core: see
scripts/test.d/browser.sh) against the proxy under gunicorn on its embedded default, files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.fixtures_core import read_rows, run_proxy  # noqa: F401 - fixture
from tests.support.processes import ROOT

PLAYWRIGHT = ROOT / ".standins" / "browser" / "node_modules"
LIB_DIR = ROOT / "node_modules" / "mixpanel-browser" / "dist"


def test_demo_page_loads_the_library_from_the_proxy_and_points_the_sdk_at_it(make_app) -> None:
    reply = make_app(base_path="/mp", mixpanel_token="tok</script><b>").test_client().get("/mp/demo")
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "text/html; charset=utf-8"
    page = reply.get_data(as_text=True)
    assert 'var DEMO = {"basePath": "/mp", "token": "tok\\u003c/script\\u003e\\u003cb\\u003e"};' in page
    assert "var PROXY_URL = window.location.origin + DEMO.basePath;" in page
    assert 'var MIXPANEL_CUSTOM_LIB_URL = PROXY_URL + "/lib.min.js";' in page
    assert "typeof MIXPANEL_CUSTOM_LIB_URL?MIXPANEL_CUSTOM_LIB_URL" in page  # the standard snippet honours it
    assert "api_host: PROXY_URL" in page and "verbose: true" in page and "batch_requests: false" in page
    for button in ("track", "identify", "people-set", "people-increment", "group-set"):
        assert f'<button id="{button}"' in page
    assert "cdn.mxpnl.com/libs/mixpanel-2-latest.min.js" in page  # only as the snippet's fallback
    assert page.count("<script") == 3  # nothing loaded from elsewhere


@pytest.mark.parametrize(
    ("settings", "served"),
    [
        ({}, True),
        ({"environment": "production"}, False),
        ({"runtime": "AWS"}, False),
        ({"k_service": "proxy"}, False),
        ({"environment": "production", "demo": "true"}, True),
        ({"demo": "false"}, False),
    ],
)
def test_demo_page_is_off_in_production_unless_asked_for(make_app, settings, served) -> None:
    reply = make_app(**settings).test_client().get("/demo")
    assert reply.status_code == (200 if served else 404)


def browser() -> str:
    chromium = shutil.which("chromium")
    if not chromium or not (PLAYWRIGHT / "playwright-core").is_dir() or not LIB_DIR.is_dir():
        pytest.skip("needs Debian's chromium, playwright-core and mixpanel-browser: run scripts/test.d/browser.sh")
    return chromium


def test_demo_page_in_a_real_browser_writes_every_kind_of_row(run_proxy) -> None:  # noqa: F811
    chromium = browser()
    proxy = run_proxy(mixpanel_lib_dir=str(LIB_DIR))  # DESTINATIONS unset: the embedded default, files
    result = subprocess.run(
        ["node", str(ROOT / "tests" / "support" / "demo_browser.js"), f"{proxy.url}/demo", chromium],
        env={**os.environ, "NODE_PATH": str(PLAYWRIGHT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout)
    assert run["errors"] == [] and run["status"] == f"loaded from {proxy.url}/lib.min.js"
    assert run["requested"][:2] == ["/demo", "/lib.min.js"]  # the library came from the proxy
    replies = [reply for click in run["clicks"] for reply in click["replies"]]
    for reply in replies:  # every call answered verbosely, with the files destination's own result
        assert reply["method"] == "POST" and reply["status"] == 200
        assert reply["body"]["status"] == 1 and reply["body"]["error"] is None
        assert [(d["name"], d["status"], d["inserted_rows"]) for d in reply["body"]["destinations"]] == [("files", "success", 1)]
    paths = sorted(reply["path"] for reply in replies)
    by_click = [(click["button"], [reply["path"] for reply in click["replies"]]) for click in run["clicks"]]
    assert (paths.count("/track/"), paths.count("/engage/"), paths.count("/groups/")) == (2, 4, 1), by_click
    assert len(run["shown"]) == len(replies)  # and the page showed each of them

    events = read_rows(proxy.data_dir, "events")
    assert {"Demo click", "$identify"} <= {row["event"] for row in events}
    assert all(row["token"] == "demo-token" for row in events)
    users = {row["operation"]: row for row in read_rows(proxy.data_dir, "users")}
    assert users["$set"]["distinct_id"] == "demo-user-1"
    assert any(r["properties"].get("plan") == "pro" for r in read_rows(proxy.data_dir, "users") if r["operation"] == "$set")
    assert users["$add"]["properties"] == {"demo_clicks": 1}
    (group,) = read_rows(proxy.data_dir, "groups")
    assert (group["group_key"], group["group_id"], group["operation"]) == ("company", "acme", "$set")
    assert group["properties"] == {"name": "Acme Inc.", "seats": 42}
