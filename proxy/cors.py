"""CORS through flask-cors, configured once in the factory, on the SDK routes only.

FRONTEND_URL: a comma list of allowed origins; `none` disables CORS; unset allows any
origin except `null`. An allowed Origin is echoed exactly with
`Access-Control-Allow-Credentials: true` (the browser SDK sends credentials).

Only what a browser SDK calls gets CORS: /track /engage /groups /import, the
pass-through routes (/record, /flags, /decide, /settings) and the library. Operator
routes (/ping, /health, /metrics, /drop) never do, so no web page can read or drive
them with a visitor's credentials. The `null` origin (sandboxed iframes, `file:`
pages, redirects) is never granted: any page can send it.

One thing flask-cors does not do: it sends `Vary: Origin` only with an allowed origin
and only when more than one origin could match. A response refused to one origin can
then be cached and served to an allowed one (or the other way round), so
`Vary: Origin` is added here to every response of a CORS route.

flask-cors's after-request hook runs only for requests that carry an Origin header.
Without one it has nothing to do (`always_send=False`: no Origin, no CORS headers), yet
it would still match the path against every resource and build an empty header set:
about 30 µs of a worker's CPU per request, 3% of a single-event request (bench/).
Server-side SDKs never send an Origin.

flask-cors's answer to a request that is not a preflight depends on nothing but the
request's path, its Origin and its `Access-Control-Request-Private-Network` header (the
options are fixed at start-up). It is remembered per such key, up to MAX_REMEMBERED keys
of at most MAX_REMEMBERED_KEY characters per worker, and replayed: flask-cors still
decides every answer, once per key. With an Origin, CORS took about 13% of a single-event
request's instructions (callgrind), half of it flask-cors working the same answer out
again: matching the path, resolving the origin, building a MultiDict and formatting it
for a debug log. Preflights are always worked out afresh (browsers cache them for
MAX_AGE). When the memory is full it starts over, so hostile origins or paths cannot
grow it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, request
from flask_cors import CORS

log = logging.getLogger(__name__)

METHODS = ["GET", "POST", "OPTIONS"]
MAX_AGE = 86400
MAX_LOGGED_ORIGINS = 64
MAX_REMEMBERED = 1024  # flask-cors answers remembered per worker: (path, Origin, PNA header) keys
MAX_REMEMBERED_KEY = 512  # characters of path + Origin; longer ones are worked out each time
PRIVATE_NETWORK_ENVIRON = "HTTP_ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK"  # the request header, as WSGI names it
ALLOW_ORIGIN = "Access-Control-Allow-Origin"
SDK_ROUTES = ("track", "engage", "groups", "import", "record", "flags", "decide", "settings")
# Any origin but `null`, for an unset FRONTEND_URL.
ANY_BUT_NULL = re.compile(r"(?!null\Z).+\Z", re.IGNORECASE)


def _has(response: Response, header: str) -> bool:
    """Whether the response carries `header`. `header in response.headers` raises and catches a
    KeyError inside werkzeug whenever it does not: 1.5 us against 0.6 us for this scan."""
    return bool(response.headers.getlist(header))


def allowed_origins(frontend_url: str | None) -> list[str | re.Pattern[str]] | None:
    """The origins FRONTEND_URL allows, or None when CORS is disabled."""
    raw = (frontend_url or "").strip()
    if raw.lower() == "none":
        return None
    if not raw:
        return [ANY_BUT_NULL]
    origins = [o.strip().rstrip("/") for o in raw.split(",") if o.strip()]
    if any(o.lower() == "null" for o in origins):
        log.warning("FRONTEND_URL lists the `null` origin: ignored, any page can send it")
    return [o for o in origins if o.lower() != "null"]


def sdk_paths(base_path: str | None) -> list[re.Pattern[str]]:
    """The request paths of the SDK routes, under BASE_PATH."""
    base = re.escape((base_path or "").rstrip("/"))
    return [
        re.compile(rf"{base}/(?:{'|'.join(SDK_ROUTES)})(?:/.*)?\Z"),
        re.compile(rf"{base}/(?:lib\.min\.js|lib\.js|mixpanel-[^/]+|libs/[^/]+)\Z"),
    ]


def init_cors(app: Flask, frontend_url: str | None, base_path: str | None = None) -> None:
    origins = allowed_origins(frontend_url)
    if origins is None:
        return
    paths = sdk_paths(base_path)
    sdk_route = re.compile("|".join(f"(?:{pattern.pattern})" for pattern in paths))  # one match per request

    refused: set[str] = set()
    registered = list(app.after_request_funcs.get(None, ()))
    CORS(
        app,
        resources={path: {} for path in paths},
        origins=origins,
        methods=METHODS,
        allow_headers="*",  # the headers the SDK asks for, echoed
        supports_credentials=True,
        max_age=MAX_AGE,
        always_send=False,  # no Origin, no CORS headers
    )
    # flask-cors registers one after-request hook: it moves into ours, which calls it only
    # when there is an Origin. Should a release register its hooks elsewhere, none is found
    # here and flask-cors runs as it registered itself.
    hooks = app.after_request_funcs.setdefault(None, [])
    flask_cors_hooks = [hook for hook in hooks if hook not in registered]
    for hook in flask_cors_hooks:
        hooks.remove(hook)

    answers: dict[tuple[str, str, str | None], list[tuple[str, str]]] = {}

    def _flask_cors(response: Response, origin: str, path: str, method: str, environ: dict[str, Any]) -> Response:
        """flask-cors's headers for this response: its remembered answer, or its own."""
        if method == "OPTIONS" or _has(response, ALLOW_ORIGIN) or len(path) + len(origin) > MAX_REMEMBERED_KEY:
            key = None  # a preflight, a response that already carries CORS headers, an odd key
        else:
            key = (path, origin, environ.get(PRIVATE_NETWORK_ENVIRON))
            added = answers.get(key)
            if added is not None:
                response.headers.extend(added)
                return response
        before = response.headers.to_wsgi_list()
        for hook in flask_cors_hooks:
            response = hook(response)
        after = response.headers.to_wsgi_list()
        if key is not None and after[: len(before)] == before:
            if len(answers) >= MAX_REMEMBERED:
                answers.clear()
            answers[key] = after[len(before) :]  # what flask-cors added (it only ever adds)
        return response

    @app.after_request
    def _cors(response: Response) -> Response:
        req = request._get_current_object()  # once: each look-up through the proxy costs calls
        environ = req.environ  # headers read from it: a missing one costs req.headers a KeyError
        origin = environ.get("HTTP_ORIGIN")
        path, method = req.path, req.method
        if origin and flask_cors_hooks:
            response = _flask_cors(response, origin, path, method, environ)
        if sdk_route.match(path):
            vary = response.headers.get("Vary")
            if vary is None:
                response.headers["Vary"] = "Origin"
            elif vary != "Origin":  # flask-cors's own `Vary: Origin` (the common case) needs nothing
                response.vary.add("Origin")  # parsed, added to unless present, written back
            if not origin:
                return response
            if _has(response, ALLOW_ORIGIN):
                if method == "OPTIONS" and response.status_code == 200:
                    response.status_code = 204  # a preflight answer has no body (as before flask-cors)
                    response.set_data(b"")
            elif origin not in refused and len(refused) < MAX_LOGGED_ORIGINS:
                # Once per origin and worker (bounded): an operator sees a misconfigured
                # FRONTEND_URL without a hostile page flooding the log.
                refused.add(origin)
                log.warning("CORS: origin %r not allowed (FRONTEND_URL)", origin[:200])
        return response
