"""/drop: delete the tables and prefixes this proxy owns. Off unless DROP_TOKEN is set.

The caller must present DROP_TOKEN as a bearer token. Refused in production
(ENVIRONMENT/RUNTIME) unless DROP_ALLOW_PRODUCTION=true. Every call is logged.
"""

from __future__ import annotations

import hmac
import logging

from flask import Response, request

from proxy import replies
from proxy.ingest import request_client_ip
from proxy.routes.blueprint import bp
from proxy.runtime import runtime

log = logging.getLogger(__name__)


@bp.route("/drop", methods=["POST", "DELETE"])
def drop() -> Response:
    rt = runtime()
    settings = rt.settings
    expected = settings.get("drop_token")
    caller = request_client_ip()
    if not expected:
        log.warning("/drop refused: DROP_TOKEN is not set", extra={"client_ip": caller})
        return replies.as_json({"error": "/drop is disabled (set DROP_TOKEN to enable it)"}, 403)
    presented = request.headers.get("Authorization", "")
    token = presented[7:] if presented.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), expected.encode()):
        log.warning("/drop refused: bad or missing bearer token", extra={"client_ip": caller})
        return replies.as_json({"error": "unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})
    if settings.is_production and not settings.get_bool("drop_allow_production"):
        log.warning("/drop refused: environment looks like production", extra={"client_ip": caller})
        return replies.as_json({"error": "/drop is refused in production (DROP_ALLOW_PRODUCTION=true overrides)"}, 403)
    results = {}
    for destination in rt.destinations:
        try:
            results[destination.name] = {"dropped": destination.drop()}
        except Exception as exc:  # noqa: BLE001
            results[destination.name] = {"error": type(exc).__name__}
    log.warning(
        "/drop executed", extra={"client_ip": caller, "dropped": {k: len(v.get("dropped", [])) for k, v in results.items()}}
    )
    return replies.as_json({"status": "ok", "results": results})
