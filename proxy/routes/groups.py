"""/groups and /groups/: group profile updates from every SDK."""

from __future__ import annotations

from flask import Response

from proxy.ingest import handle
from proxy.routes.blueprint import bp


@bp.route("/groups", methods=["GET", "POST"])
@bp.route("/groups/", methods=["GET", "POST"])
def groups() -> Response:
    return handle("groups")
