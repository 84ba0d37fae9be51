"""The one pipeline behind /track, /engage, /groups and /import:
decode -> normalise -> transform -> dispatch -> reply."""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

from flask import Request, Response, request
from werkzeug.wsgi import get_content_length, get_input_stream

from core import green, metrics
from core.records import Ingest, client_ip, normalize, sent_as_is
from destinations.base import WriteResult
from destinations.wal import BufferFull, Ticket
from proxy import payloads, replies
from proxy.dispatch import dispatch
from proxy.runtime import Runtime, runtime

log = logging.getLogger(__name__)
# Query parameters Mixpanel's endpoints understand and we pass upstream as is.
UPSTREAM_PARAMS = {"import": ("project_id", "strict"), "track": ("strict",)}


def request_client_ip(req: Request | None = None, rt: Runtime | None = None) -> str | None:
    req = req or request._get_current_object()
    rt = rt or runtime()
    environ = req.environ  # not req.headers: a missing header costs it a raised KeyError
    return client_ip(environ.get("HTTP_X_FORWARDED_FOR"), environ.get("REMOTE_ADDR"), rt.settings.trusted_proxy_hops)


def read_body(max_bytes: int, timeout: float | None = None, req: Request | None = None) -> bytes:
    """The whole raw body, or a PayloadError that says why not:

    * 413 when it is declared or streamed (chunked) larger than `max_bytes`: never more than
      `max_bytes` + 1 bytes are buffered;
    * 408 when it has not arrived within `timeout` seconds (BODY_READ_TIMEOUT_SECONDS): a
      client trickling its upload holds one connection slot that long, never longer;
    * 400 when the server cannot read it (malformed chunked framing) or it ends before its
      Content-Length: an incomplete body is never treated as a complete one.

    After a 408 or a framing error the server closes the connection (gunicorn does not
    reuse a connection whose body raised while being read)."""
    req = req or request._get_current_object()
    declared = get_content_length(req.environ)  # req.content_length, without its header look-ups
    if declared is not None and declared > max_bytes:
        raise payloads.PayloadTooLarge(f"body exceeds {max_bytes} bytes")
    parts: list[bytes] = []
    size = 0
    # Only gevent can interrupt a blocked read; unpatched (a serverless handler, `flask run`),
    # the platform or server in front has buffered the body already.
    timeout = timeout if timeout and green.patched() else None
    expired = payloads.BodyTimeout(f"request body not received within {timeout:g}s") if timeout else None
    with green.deadline(timeout, expired):
        try:
            # req.stream, without asking Flask through current_app for MAX_CONTENT_LENGTH (None:
            # MAX_BODY_BYTES is enforced here) on every request.
            stream = get_input_stream(req.environ, max_content_length=None)
            while size <= max_bytes:
                chunk = stream.read(min(1 << 16, max_bytes + 1 - size))
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
        except payloads.PayloadError:
            raise
        except Exception as exc:  # noqa: BLE001 - the server's framing errors vary by server
            log.info("unreadable request body: %s", type(exc).__name__)
            raise payloads.PayloadError("request body is malformed or incomplete") from None
    if size > max_bytes:
        raise payloads.PayloadTooLarge(f"body exceeds {max_bytes} bytes")
    if declared is not None and size < declared:
        raise payloads.PayloadError(f"request body ended after {size} of its {declared} bytes (Content-Length)")
    return b"".join(parts)


class Accepted(NamedTuple):
    """What the reply to an accepted request still needs, once its records have been dispatched."""

    ticket: Ticket | None  # the write-ahead record whose fsync the reply waits for
    count: int
    results: list[WriteResult]
    verbose: bool
    legacy: bool


def handle(endpoint: str) -> Response:
    rt = runtime()
    accepted = accept(endpoint, rt)
    if isinstance(accepted, Response):
        return accepted
    # The request's body, records and rows went with accept()'s frame, while still in the CPU's
    # caches: what waits here for the fsync round is a few counts. Held across the wait (5 ms
    # on average with BUFFER_FSYNC=10) and freed cold, after other requests had run, they cost
    # a browser batch about 10% more CPU, most of it in the allocator (docs/buffer.md, "Cost").
    if accepted.ticket is not None and rt.buffer is not None:
        try:
            rt.buffer.wait_durable(accepted.ticket)  # BUFFER_FSYNC: the fsync overlapped with dispatch
        except BufferFull as exc:
            return _unavailable(exc.reason, str(exc), accepted.verbose, endpoint)
    return replies.ingest_reply(endpoint, accepted.count, accepted.results, accepted.verbose, accepted.legacy)


def accept(endpoint: str, rt: Runtime) -> Accepted | Response:
    """Read, decode, normalise, transform, buffer and dispatch one request: what its reply
    says, or the reply itself when the request ends here (bad input, nothing to keep, no room)."""
    received_at = time.time()
    # The request itself, not its context-local proxy: each look-up through the proxy costs a
    # few function calls, and the hot path reads it about a dozen times.
    req = request._get_current_object()
    # Headers straight from the WSGI environ: req.headers raises and catches a KeyError for
    # each one a request does not carry (most carry neither Content-Encoding nor Authorization).
    environ = req.environ
    query = req.args.to_dict(flat=True)
    verbose_hint = query.get("verbose", "") in payloads.TRUE_FLAGS
    try:
        body = read_body(rt.settings.max_body_bytes, rt.body_read_timeout, req)
        decoded = payloads.decode(body, query, environ.get("HTTP_CONTENT_ENCODING"), rt.settings.max_body_bytes)
    except payloads.PayloadError as exc:
        log.info("rejected %s request: %s", endpoint, exc)
        return replies.error(str(exc), exc.status, verbose_hint, endpoint)

    ip = request_client_ip(req, rt)
    # Asked before normalising, which completes the records in place (lever 3: verbatim forwarding).
    sent_json = decoded.raw
    if sent_json is not None and rt.transformer is not None:
        sent_json = None  # TRANSFORM may change any record
    elif sent_json is not None and not sent_as_is(endpoint, decoded.items, rt.settings.mixpanel_token):
        sent_json = None
    records = normalize(
        endpoint,
        decoded.items,
        client_ip=ip,
        ip_enabled=decoded.ip_enabled,
        token=rt.settings.mixpanel_token,
        received_at=received_at,
    )
    if rt.transformer is not None:
        records = rt.transformer.apply(records)
    if not records:
        return replies.ingest_reply(endpoint, 0, [], decoded.verbose, decoded.legacy)

    allowed = UPSTREAM_PARAMS.get(endpoint, ())
    frozen = tuple(records)
    rows = rt.rows(frozen)
    record_lines = rt.record_lines(frozen)
    # Admission: nothing is dispatched (not even to Mixpanel) unless every destination can keep its rows.
    refusal = rt.refusal(len(body)) if rt.buffers_rows else None
    if refusal:
        return _unavailable("dead_letter_full", refusal, decoded.verbose, endpoint)
    ticket = None
    if rt.buffer is not None:
        if not rt.buffer.started:  # servers without gunicorn's post_worker_init hook
            rt.start()
        try:
            ticket = rt.buffer.append(endpoint, rows, record_lines)
        except BufferFull as exc:
            return _unavailable(exc.reason, str(exc), decoded.verbose, endpoint)
    ingest = Ingest(
        endpoint=endpoint,
        records=frozen,
        rows=rows,
        # ip=0: Mixpanel must not geolocate this request by the client's address either.
        client_ip=ip if decoded.ip_enabled else None,
        authorization=environ.get("HTTP_AUTHORIZATION"),
        upstream_params=tuple((k, v) for k, v in decoded.params.items() if k in allowed),
        ticket=ticket,
        record_lines=record_lines,
        sent_json=sent_json,
    )
    try:
        results = dispatch(ingest, rt.destinations)  # never raises: failures are per-destination results
    finally:
        if ticket is not None:
            ticket.release()
    return Accepted(ticket, len(records), results, decoded.verbose, decoded.legacy)


_last_logged: dict[str, float] = {}


def _unavailable(reason: str, message: str, verbose: bool, endpoint: str) -> Response:
    """503 + Retry-After: the rows could not be kept, so the SDK must send them again."""
    metrics.REFUSED.labels(reason).inc()
    now = time.monotonic()
    if now - _last_logged.get(reason, -60.0) >= 10:  # one line per reason every 10 s, not one per request
        _last_logged[reason] = now
        log.warning("refusing requests with 503 (%s): %s", reason, message)
    return replies.error(message, 503, verbose, endpoint)
