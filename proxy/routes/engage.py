"""/engage and /engage/: user profile updates from every SDK."""

from __future__ import annotations

from flask import Response

from proxy.ingest import handle
from proxy.routes.blueprint import bp


@bp.route("/engage", methods=["GET", "POST"])
@bp.route("/engage/", methods=["GET", "POST"])
def engage() -> Response:
    return handle("engage")
