"""/demo: a page that drives the Mixpanel JS library through this proxy, for trying it out.

On outside production (ENVIRONMENT, RUNTIME and the platforms' markers decide, see
Settings.is_production) unless DEMO=false; DEMO=true serves it anywhere. It loads the
library from our own /lib.min.js (MIXPANEL_CUSTOM_LIB_URL), points `api_host` at the
proxy (under BASE_PATH), and shows each verbose reply with every destination's result.
The token is MIXPANEL_TOKEN, else `demo-token`.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from flask import Response

from proxy import replies
from proxy.routes.blueprint import bp
from proxy.runtime import runtime

PAGE = Path(__file__).resolve().parent.parent / "demo.html"
MARK = "/*DEMO_CONFIG*/{}"


@cache
def _template() -> str:
    text = PAGE.read_text(encoding="utf-8")
    assert MARK in text, "demo.html lost its DEMO_CONFIG mark"
    return text


def render(base_path: str | None, token: str) -> str:
    # JSON inside a <script>: escape what could close the element or start a comment.
    config = json.dumps({"basePath": base_path or "", "token": token})
    config = config.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _template().replace(MARK, config)


@bp.route("/demo")
@bp.route("/demo/")
def demo() -> Response:
    settings = runtime().settings
    if not settings.demo:
        return replies.as_json({"error": "not found", "status": 404}, 404)
    page = render(settings.base_path, settings.mixpanel_token or "demo-token")
    return Response(page, headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"})
