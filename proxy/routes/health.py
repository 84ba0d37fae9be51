"""/ping (liveness, with the version), /health (each destination's state), /metrics.

`/health` always answers 200 with a report; `/health?ready=1` is the readiness form:
503 while any destination is not `ok` (retrying, dead_lettering, buffer_full, or
unavailable for synchronous Mixpanel) or would refuse new rows, and while the write-ahead
buffer is full (requests are then answered 503), 200 again once each has written successfully.
The state is this worker's: each gunicorn worker delivers (and fails) on its own, and
a state changes when that worker next writes to the destination.
"""

from __future__ import annotations

import os

from flask import Response, request

from core import metrics
from proxy import __version__, replies
from proxy.memory import publish_gc_passes
from proxy.routes.blueprint import bp
from proxy.runtime import runtime

READY_FLAGS = {"1", "true", "yes"}


@bp.route("/ping")
def ping() -> Response:
    return replies.as_json({"status": "ok", "version": __version__})


@bp.route("/health")
def health() -> Response:
    rt = runtime()
    checks = {}
    for destination in rt.destinations:
        try:
            info = dict(destination.health())
        except Exception as exc:  # noqa: BLE001 - a health probe reports, never raises
            info = {"state": "unknown", "last_error": f"health check failed: {type(exc).__name__}"}
        info.setdefault("state", "ok")  # a custom destination that tracks nothing reports nothing wrong
        # Not ready while failing, or while it would refuse a typical request (its buffer and dead letter are full).
        accepting = bool(info.pop("ready", True))
        ready = info["state"] == "ok" and accepting
        checks[destination.name] = {"ready": ready, **info}
    failing = [name for name, info in checks.items() if not info["ready"]]
    if rt.buffer is not None:
        buffer = {**rt.buffer.health()}
        buffer["ready"] = not buffer["full"]
    else:
        buffer = {"mode": "memory" if rt.settings.buffer == "memory" else "none", "ready": True}
    if not buffer["ready"]:
        failing.append("buffer")  # requests are answered 503 until the segments are delivered
    body = {
        "status": "degraded" if failing else "ok",
        "ready": not failing,
        "failing": failing,
        "version": __version__,
        "worker_pid": os.getpid(),
        "destinations": checks,
        "buffer": buffer,
    }
    readiness = request.args.get("ready", "").lower() in READY_FLAGS
    return replies.as_json(body, 503 if readiness and failing else 200)


@bp.route("/metrics")
def prometheus() -> Response:
    publish_gc_passes()
    data, content_type = metrics.render()
    return Response(data, headers={"Content-Type": content_type})
