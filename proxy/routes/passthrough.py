"""Pass-through to Mixpanel: session replay (/record), feature flags (/flags), /settings, /decide.

Method, query string, body and Authorization are forwarded intact, plus the client
IP headers; Mixpanel's status and body come back as they are.
"""

from __future__ import annotations

import logging

from flask import Response, request

from destinations.mixpanel import MixpanelUnavailable, forwarding_headers
from proxy import replies
from proxy.ingest import read_body, request_client_ip
from proxy.payloads import PayloadTooLarge
from proxy.routes.blueprint import bp
from proxy.runtime import runtime

log = logging.getLogger(__name__)
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Content-Encoding", "Accept", "Accept-Language")
RETURNED_HEADERS = ("Content-Type", "Cache-Control", "Retry-After")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def forward(path: str) -> Response:
    rt = runtime()
    try:
        body = read_body(rt.settings.max_body_bytes)
    except PayloadTooLarge as exc:
        return replies.error(str(exc), exc.status)
    headers = forwarding_headers(request_client_ip(), request.headers.get("Authorization"))
    headers.update({h: request.headers[h] for h in FORWARDED_REQUEST_HEADERS if h in request.headers})
    query = request.query_string.decode("latin-1")
    try:
        upstream = rt.upstream.request(
            request.method,
            path + (f"?{query}" if query else ""),
            data=body or None,
            headers=headers,
            retry=request.method == "GET",
        )
    except MixpanelUnavailable as exc:
        log.warning("pass-through %s failed: %s", path, exc)
        return replies.error(str(exc), 503)
    response = Response(upstream.content, status=upstream.status_code)
    for name in RETURNED_HEADERS:
        if name in upstream.headers:
            response.headers[name] = upstream.headers[name]
    return response


@bp.route("/record", methods=METHODS)
@bp.route("/record/", methods=METHODS)
def record() -> Response:
    return forward("/record/")


@bp.route("/flags", methods=METHODS)
@bp.route("/flags/", methods=METHODS)
def flags() -> Response:
    return forward("/flags/")


@bp.route("/flags/<flag_id>/first-time-events", methods=METHODS)
@bp.route("/flags/<flag_id>/first-time-events/", methods=METHODS)
def first_time_events(flag_id: str) -> Response:
    return forward(request.path[request.path.index("/flags/") :])


@bp.route("/settings", methods=METHODS)
@bp.route("/settings/", methods=METHODS)
def settings() -> Response:
    return forward("/settings/")


@bp.route("/decide", methods=METHODS)
@bp.route("/decide/", methods=METHODS)
def decide() -> Response:
    return forward("/decide/")
