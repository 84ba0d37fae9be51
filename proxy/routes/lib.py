"""/lib.min.js, /lib.js and the async modules (`lib_base_path`), from the CDN or MIXPANEL_LIB_DIR."""

from __future__ import annotations

from flask import Response, request

from proxy import replies
from proxy.routes.blueprint import bp
from proxy.runtime import runtime
from proxy.staticlib import NotFound, Unavailable


@bp.route("/lib.min.js")
@bp.route("/lib.js")
@bp.route("/<string:name>")
@bp.route("/libs/<string:name>")
def library(name: str | None = None) -> Response:
    name = name or request.path.rsplit("/", 1)[-1]
    try:
        asset = runtime().library.get(name)
    except NotFound:
        return replies.as_json({"error": "not found", "status": 404}, 404)
    except Unavailable as exc:
        return replies.error(str(exc), 503)
    return Response(asset.body, mimetype=None, headers={"Content-Type": asset.content_type, "Cache-Control": asset.cache_control})
