"""/ping (liveness, with the version), /health (readiness: each destination and the
write-ahead buffer; 503 when new requests would be refused), /metrics."""

from __future__ import annotations

from flask import Response

from core import metrics
from proxy import __version__, replies
from proxy.routes import bp
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
    if rt.buffer is not None:
        body["buffer"] = buffer = rt.buffer.health()
        buffer["ready"] = not buffer["full"]
    else:
        body["buffer"] = {"mode": "memory" if rt.settings.buffer == "memory" else "none", "ready": True}
    # Readiness: a full buffer, or a failing destination whose dead letter is full, means new
    # requests are answered 503, so a load balancer should send them elsewhere.
    ready = body["buffer"]["ready"] and all(c.get("ready", True) for c in checks.values())
    body["ready"] = ready
    if healthy and not ready:
        body["status"] = "full"
    return replies.as_json(body, 200 if healthy and ready else 503)


@bp.route("/metrics")
def prometheus() -> Response:
    data, content_type = metrics.render()
    return Response(data, headers={"Content-Type": content_type})
