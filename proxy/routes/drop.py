"""/drop: delete the tables and prefixes this proxy owns. Off unless DROP_TOKEN is set.

The caller must present DROP_TOKEN as a bearer token. Refused in production unless
DROP_ALLOW_PRODUCTION=true: ENVIRONMENT starting with `prod` (or `live`), a cloud
RUNTIME, or a hosting platform's marker variable (core.settings.PLATFORM_MARKERS).
Every call is logged at WARNING with its caller: the client address derived from
X-Forwarded-For and the peer address of the connection (X-Forwarded-For can be set by
any client that reaches the proxy directly), whatever the outcome.
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
    caller = {"client_ip": request_client_ip(), "peer": request.remote_addr}
    if not expected:
        log.warning("/drop refused: DROP_TOKEN is not set", extra=caller)
        return replies.as_json({"error": "/drop is disabled (set DROP_TOKEN to enable it)"}, 403)
    presented = request.headers.get("Authorization", "")
    token = presented[7:] if presented.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), expected.encode()):
        log.warning("/drop refused: bad or missing bearer token", extra=caller)
        return replies.as_json({"error": "unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})
    if settings.is_production and not settings.get_bool("drop_allow_production"):
        log.warning("/drop refused: environment looks like production", extra=caller)
        return replies.as_json({"error": "/drop is refused in production (DROP_ALLOW_PRODUCTION=true overrides)"}, 403)
    results = {}
    for destination in rt.destinations:
        try:
            results[destination.name] = {"dropped": destination.drop()}
        except Exception as exc:  # noqa: BLE001
            results[destination.name] = {"error": type(exc).__name__}
    log.warning("/drop executed", extra={**caller, "dropped": {k: len(v.get("dropped", [])) for k, v in results.items()}})
    return replies.as_json({"status": "ok", "results": results})
