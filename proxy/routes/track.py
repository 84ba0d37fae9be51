"""/track and /track/: events from every SDK."""

from __future__ import annotations

from flask import Response

from proxy.ingest import handle
from proxy.routes.blueprint import bp


@bp.route("/track", methods=["GET", "POST"])
@bp.route("/track/", methods=["GET", "POST"])
def track() -> Response:
    return handle("track")
