"""Replies in exactly the form each SDK needs (docs/wire-formats.md).

`1` as text/plain normally; `{"status":1,"error":null,...}` when `verbose=1`; always
HTTP 200 on success. Mixpanel's own verdict is handed back when Mixpanel is a
destination. A destination that lost data the proxy could not absorb gives 503 so
the SDK retries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
from flask import Response

from destinations.base import WriteResult
from destinations.mixpanel import verdict

TEXT = "text/plain; charset=utf-8"  # what `mimetype="text/plain"` makes of it, without working it out each time


def text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type=TEXT)


def _json(payload: Any) -> bytes:
    """Compact JSON as `json.dumps(payload, separators=(",", ":"))` writes it, through orjson
    (about 8 us less a verbose reply) where the two agree: ASCII text (json.dumps escapes the
    rest, so other text goes through it). They differ only on floats below 1e-4 (`0.00001`
    against `1e-05`, the same number) and non-finite ones (not JSON); a reply's own floats
    are durations rounded to 0.1 ms."""
    try:
        out = orjson.dumps(payload)
    except TypeError:  # an int beyond 64 bits
        out = b""
    return out if out.isascii() and out else json.dumps(payload, separators=(",", ":")).encode()


def as_json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # The content type as is: a `mimetype` would be checked for a charset to add on every reply.
    return Response(_json(payload), status=status, content_type="application/json", headers=headers)


def error(message: str, status: int, verbose: bool = True, endpoint: str | None = None) -> Response:
    """A client or availability error. /import speaks Mixpanel's /import error shape."""
    if endpoint == "import":
        body = {"code": status, "error": message, "status": "Bad Request" if status < 500 else "Error"}
        return as_json(body, status, _retry_after(status))
    if verbose:
        return as_json({"status": 0, "error": message}, status, _retry_after(status))
    return Response("0", status=status, content_type=TEXT, headers=_retry_after(status))


def _retry_after(status: int) -> dict[str, str] | None:
    return {"Retry-After": "5"} if status in (429, 503) else None


def ingest_reply(endpoint: str, count: int, results: Sequence[WriteResult], verbose: bool, legacy: bool = False) -> Response:
    """`legacy`: the SDK sent `data=` (Python and Node call /import that way and need a
    /track-style `1` or `{"status":1}` back); a JSON /import body gets /import's reply."""
    destinations = [r.as_dict() for r in results]
    unabsorbed = [r for r in results if r.status == "error" and r.retryable]
    upstream = None
    for result in results:  # Mixpanel's own reply, when it is a destination
        if result.upstream is not None:
            upstream = result.upstream
            break
    import_reply = endpoint == "import" and not legacy
    if unabsorbed:
        message = "; ".join(f"{r.name}: {r.error}" for r in unabsorbed)
        if import_reply:
            return as_json(
                {"code": 503, "error": message, "status": "Error", "destinations": destinations}, 503, _retry_after(503)
            )
        if verbose:
            return as_json({"status": 0, "error": message, "destinations": destinations}, 503, _retry_after(503))
        return Response("0", status=503, content_type=TEXT, headers=_retry_after(503))

    if import_reply:
        if upstream is not None and isinstance(upstream.body, dict):
            return as_json(upstream.body, upstream.status_code)
        if upstream is not None and upstream.status_code >= 300:  # e.g. a proxy's HTML error page
            return error(f"Mixpanel answered HTTP {upstream.status_code}", upstream.status_code, endpoint="import")
        return as_json({"code": 200, "num_records_imported": count, "status": "OK"})

    status_code, ok, message = 200, True, None
    if upstream is not None:
        status_code = upstream.status_code
        ok, message = verdict(endpoint, upstream)
    if verbose:
        return as_json({"status": 1 if ok else 0, "error": message, "destinations": destinations}, status_code)
    return text("1" if ok else "0", status_code)
