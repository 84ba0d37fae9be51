"""Pass-through to Mixpanel: session replay (/record), feature flags (/flags), /settings, /decide.

Method, query string, body and Authorization are forwarded intact, plus the client
IP headers; Mixpanel's status and body come back as they are.

The upstream path is never the request's path: it is one of Mixpanel's endpoints
(`UPSTREAM_PATHS`), with the one variable segment (a flag id) checked against
`SEGMENT` after percent-decoding, so no client can turn a route into `..`, `/`, `?`
or `#` upstream.
"""

from __future__ import annotations

import logging
import re

from flask import Response, request

from destinations.mixpanel import MixpanelUnavailable, forwarding_headers
from proxy import replies
from proxy.ingest import read_body, request_client_ip
from proxy.payloads import PayloadError
from proxy.routes.blueprint import bp
from proxy.runtime import runtime

log = logging.getLogger(__name__)
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Content-Encoding", "Accept", "Accept-Language")
RETURNED_HEADERS = ("Content-Type", "Cache-Control", "Retry-After")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
# Mixpanel's pass-through endpoints, the only paths ever requested upstream.
UPSTREAM_PATHS = {
    "record": "/record/",
    "flags": "/flags/",
    "first_time_events": "/flags/{flag_id}/first-time-events",
    "settings": "/settings/",
    "decide": "/decide/",
}
# A flag id as the browser SDK sends it (a UUID or a key): letters, digits, `_`, `-`, inner dots.
SEGMENT = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9_-])?")


def upstream_path(endpoint: str, **segments: str) -> str | None:
    """Mixpanel's path for `endpoint`, or None when a segment is not a plain identifier."""
    if any(not SEGMENT.fullmatch(value) for value in segments.values()):
        return None
    return UPSTREAM_PATHS[endpoint].format(**segments)


def forward(path: str | None) -> Response:
    if path is None:
        return replies.as_json({"error": "not found", "status": 404}, 404)
    rt = runtime()
    try:
        body = read_body(rt.settings.max_body_bytes, rt.body_read_timeout)
    except PayloadError as exc:
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
    return forward(upstream_path("record"))


@bp.route("/flags", methods=METHODS)
@bp.route("/flags/", methods=METHODS)
def flags() -> Response:
    return forward(upstream_path("flags"))


@bp.route("/flags/<flag_id>/first-time-events", methods=METHODS)
@bp.route("/flags/<flag_id>/first-time-events/", methods=METHODS)
def first_time_events(flag_id: str) -> Response:
    return forward(upstream_path("first_time_events", flag_id=flag_id))


@bp.route("/settings", methods=METHODS)
@bp.route("/settings/", methods=METHODS)
def settings() -> Response:
    return forward(upstream_path("settings"))


@bp.route("/decide", methods=METHODS)
@bp.route("/decide/", methods=METHODS)
def decide() -> Response:
    return forward(upstream_path("decide"))
