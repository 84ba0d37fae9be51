"""/ping (liveness, with the version), /health (each destination's readiness), /metrics."""

from __future__ import annotations

from flask import Response

from core import metrics
from proxy import __version__, replies
from proxy.routes.blueprint import bp
from proxy.runtime import runtime


@bp.route("/ping")
def ping() -> Response:
    return replies.as_json({"status": "ok", "version": __version__})


@bp.route("/health")
def health() -> Response:
    rt = runtime()
    checks = {}
    healthy = True
    for destination in rt.destinations:
        try:
            checks[destination.name] = {"ready": True, **destination.health()}
        except Exception as exc:  # noqa: BLE001 - a health probe reports, never raises
            checks[destination.name] = {"ready": False, "error": type(exc).__name__}
            healthy = False
    body = {"status": "ok" if healthy else "degraded", "version": __version__, "destinations": checks}
    return replies.as_json(body, 200 if healthy else 503)


@bp.route("/metrics")
def prometheus() -> Response:
    data, content_type = metrics.render()
    return Response(data, headers={"Content-Type": content_type})
