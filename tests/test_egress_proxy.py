"""HTTPS_PROXY / HTTP_PROXY from `.env` carry the /lib.min.js download too, as they carry
the calls to Mixpanel (Settings.outbound_proxies)."""

from __future__ import annotations

import base64
from pathlib import Path

from core.settings import Settings
from tests.support.mixpanel_double import LIB_BODY


def test_library_download_goes_through_the_egress_proxy_set_in_dotenv(mp, tmp_path: Path) -> None:
    from app import create_app

    # The double stands in for a corporate forward proxy: the CDN host does not resolve, so an
    # answer proves the download went through the proxy named in .env (and nowhere in os.environ).
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        f"HTTP_PROXY={mp.url.replace('http://', 'http://egress:p%40ss@')}\n"
        "MIXPANEL_CDN_URL=http://cdn.mixpanel.invalid/libs/\n"
        f"DATA_DIR={tmp_path / 'data'}\n"
    )
    app = create_app(Settings.from_env(environ={}, dotenv_path=str(dotenv)))
    try:
        reply = app.test_client().get("/lib.min.js")
    finally:
        app.extensions["mpproxy"].close()
    assert reply.status_code == 200 and reply.data == LIB_BODY
    (received,) = mp.requests()
    assert received.path == "/libs/mixpanel-2-latest.min.js"
    assert received.headers["host"] == "cdn.mixpanel.invalid"
    assert received.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"egress:p@ss").decode()


def test_calls_to_mixpanel_go_through_the_egress_proxy(mp, tmp_path: Path) -> None:
    """With a proxy for Mixpanel's scheme, forwarding leaves the direct keep-alive pool for
    urllib3's ProxyManager: the request reaches Mixpanel through the proxy, authenticated."""
    from app import create_app

    settings = Settings.from_env(
        environ={
            "HTTP_PROXY": mp.url.replace("http://", "http://egress:p%40ss@"),
            "MIXPANEL_API_HOST": "http://api.mixpanel.invalid",
            "DESTINATIONS": "mixpanel",
            "DATA_DIR": str(tmp_path / "data"),
            "BUFFER_DIR": str(tmp_path / "buffer"),
        },
        dotenv_path=None,
    )
    app = create_app(settings)
    try:
        event = base64.b64encode(b'{"event":"e","properties":{"token":"t","distinct_id":"u"}}').decode()
        reply = app.test_client().post("/track?verbose=1", data={"data": event})
    finally:
        app.extensions["mpproxy"].close()
    assert reply.status_code == 200 and reply.get_json()["status"] == 1
    (received,) = mp.requests("track")
    assert received.headers["host"] == "api.mixpanel.invalid"
    assert received.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"egress:p@ss").decode()
    assert [r["event"] for r in received.records] == ["e"]
