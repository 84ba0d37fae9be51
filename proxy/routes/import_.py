"""/import: Mixpanel's server-side import API (JSON or NDJSON, gzip, Basic auth passed through)."""

from __future__ import annotations

from flask import Response

from proxy.ingest import handle
from proxy.routes.blueprint import bp


@bp.route("/import", methods=["GET", "POST"])
@bp.route("/import/", methods=["GET", "POST"])
def import_() -> Response:
    return handle("import")
