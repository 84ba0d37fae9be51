"""/ping (liveness, with the version), /health (each destination's state), /metrics.

`/health` always answers 200 with a report; `/health?ready=1` is the readiness form:
503 while any destination is not `ok` (retrying, dead_lettering, buffer_full, or
unavailable for synchronous Mixpanel), 200 again once each has written successfully.
The state is this worker's: each gunicorn worker delivers (and fails) on its own, and
a state changes when that worker next writes to the destination.
"""

from __future__ import annotations

import os

from flask import Response, request

from core import metrics
from proxy import __version__, replies
from proxy.routes.blueprint import bp
from proxy.runtime import runtime

READY_FLAGS = {"1", "true", "yes"}


@bp.route("/ping")
def ping() -> Response:
    return replies.as_json({"status": "ok", "version": __version__})


@bp.route("/health")
def health() -> Response:
    checks = {}
    for destination in runtime().destinations:
        try:
            info = dict(destination.health())
        except Exception as exc:  # noqa: BLE001 - a health probe reports, never raises
            info = {"state": "unknown", "last_error": f"health check failed: {type(exc).__name__}"}
        info.setdefault("state", "ok")  # a custom destination that tracks nothing reports nothing wrong
        checks[destination.name] = {"ready": info["state"] == "ok", **info}
    failing = [name for name, info in checks.items() if not info["ready"]]
    body = {
        "status": "degraded" if failing else "ok",
        "failing": failing,
        "version": __version__,
        "worker_pid": os.getpid(),
        "destinations": checks,
    }
    readiness = request.args.get("ready", "").lower() in READY_FLAGS
    return replies.as_json(body, 503 if readiness and failing else 200)


@bp.route("/metrics")
def prometheus() -> Response:
    data, content_type = metrics.render()
    return Response(data, headers={"Content-Type": content_type})
