"""The web page the browser suite loads: served on 127.0.0.1 from its own port, so it is a
different origin from the proxy. It is the official Mixpanel snippet (shipped in npm
mixpanel-browser's dist/) with MIXPANEL_CUSTOM_LIB_URL pointing at the proxy's
/lib.min.js, and `mixpanel.init` with `api_host` (and `lib_base_path`, for the session
recorder module) set to the proxy. Everything else is the library's default for a custom
host: base64 payloads, batched requests, sendBeacon on page hide."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.processes import ROOT

LIB_DIR = ROOT / "node_modules" / "mixpanel-browser" / "dist"
SNIPPET = LIB_DIR / "mixpanel-jslib-snippet.min.js"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shop</title>
<script>var MIXPANEL_CUSTOM_LIB_URL = {lib_url};</script>
<script>{snippet}</script>
<script>
mixpanel.init({token}, {{
  api_host: {proxy},
  lib_base_path: {lib_base_path},
  record_sessions_percent: 100,
  loaded: function () {{ window.__mp_loaded = true; }}
}});
</script>
</head><body>
<h1>Shop</h1>
<label>Search <input id="query" name="query"></label>
<button id="buy" onclick="this.textContent = 'Bought'">Buy</button>
</body></html>
"""
BYE = "<!doctype html><html><head><meta charset='utf-8'><title>Bye</title></head><body>Bye</body></html>"


def render(proxy: str, token: str) -> str:
    return PAGE.format(
        lib_url=json.dumps(f"{proxy}/lib.min.js"),
        snippet=SNIPPET.read_text(encoding="utf-8"),
        token=json.dumps(token),
        proxy=json.dumps(proxy),
        lib_base_path=json.dumps(f"{proxy}/"),
    )


class PageServer:
    """Serves `/` (the page) and `/bye` (somewhere to go, hiding the page) on a free port."""

    def __init__(self) -> None:
        self.html = ""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                body = {"/": server.html, "/bye": BYE}.get(path)
                if body is None:
                    self.send_response(204 if path == "/favicon.ico" else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> PageServer:
        self.thread.start()
        return self

    def show(self, proxy: str, token: str) -> str:
        self.html = render(proxy, token)
        return self.origin + "/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def lib_file(name: str) -> Path:
    for path in (LIB_DIR / name, LIB_DIR / "async-modules" / name):
        if path.is_file():
            return path
    raise FileNotFoundError(name)
