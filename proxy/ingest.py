"""The one pipeline behind /track, /engage, /groups and /import:
decode -> normalise -> transform -> dispatch -> reply."""

from __future__ import annotations

import logging
import time

from flask import Response, request

from core import metrics
from core.records import Ingest, client_ip, normalize
from destinations.wal import BufferFull
from proxy import payloads, replies
from proxy.dispatch import dispatch
from proxy.runtime import runtime

log = logging.getLogger(__name__)
# Query parameters Mixpanel's endpoints understand and we pass upstream as is.
UPSTREAM_PARAMS = {"import": ("project_id", "strict"), "track": ("strict",)}


def request_client_ip() -> str | None:
    rt = runtime()
    return client_ip(request.headers.get("X-Forwarded-For"), request.remote_addr, rt.settings.trusted_proxy_hops)


def read_body(max_bytes: int) -> bytes:
    """The raw body, never buffering more than `max_bytes` + 1: a declared or streamed
    (chunked) body that is larger raises PayloadTooLarge instead of filling memory."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise payloads.PayloadTooLarge(f"body exceeds {max_bytes} bytes")
    parts: list[bytes] = []
    size = 0
    while size <= max_bytes:
        chunk = request.stream.read(min(1 << 16, max_bytes + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    if size > max_bytes:
        raise payloads.PayloadTooLarge(f"body exceeds {max_bytes} bytes")
    return b"".join(parts)


def handle(endpoint: str) -> Response:
    rt = runtime()
    received_at = time.time()
    query = request.args.to_dict(flat=True)
    verbose_hint = query.get("verbose", "") in payloads.TRUE_FLAGS
    try:
        body = read_body(rt.settings.max_body_bytes)
        decoded = payloads.decode(body, query, request.headers.get("Content-Encoding"), rt.settings.max_body_bytes)
    except payloads.PayloadError as exc:
        log.info("rejected %s request: %s", endpoint, exc)
        return replies.error(str(exc), exc.status, verbose_hint, endpoint)

    ip = request_client_ip()
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
    # Admission: nothing is dispatched (not even to Mixpanel) unless every destination can keep its rows.
    refusal = rt.refusal(len(body)) if rt.buffers_rows else None
    if refusal:
        return _unavailable("dead_letter_full", refusal, decoded.verbose, endpoint)
    ticket = None
    if rt.buffer is not None:
        if not rt.buffer.started:  # servers without gunicorn's post_worker_init hook
            rt.start()
        try:
            ticket = rt.buffer.append(endpoint, rows, frozen)
        except BufferFull as exc:
            return _unavailable(exc.reason, str(exc), decoded.verbose, endpoint)
    ingest = Ingest(
        endpoint=endpoint,
        records=frozen,
        rows=rows,
        # ip=0: Mixpanel must not geolocate this request by the client's address either.
        client_ip=ip if decoded.ip_enabled else None,
        authorization=request.headers.get("Authorization"),
        upstream_params=tuple((k, v) for k, v in decoded.params.items() if k in allowed),
        ticket=ticket,
    )
    try:
        results = dispatch(ingest, rt.destinations)  # never raises: failures are per-destination results
    finally:
        if ticket is not None:
            ticket.release()
    if ticket is not None and rt.buffer is not None:
        try:
            rt.buffer.wait_durable(ticket)  # BUFFER_FSYNC: the fsync overlapped with dispatch
        except BufferFull as exc:
            return _unavailable(exc.reason, str(exc), decoded.verbose, endpoint)
    return replies.ingest_reply(endpoint, len(records), results, decoded.verbose, decoded.legacy)


_last_logged: dict[str, float] = {}


def _unavailable(reason: str, message: str, verbose: bool, endpoint: str) -> Response:
    """503 + Retry-After: the rows could not be kept, so the SDK must send them again."""
    metrics.REFUSED.labels(reason).inc()
    now = time.monotonic()
    if now - _last_logged.get(reason, -60.0) >= 10:  # one line per reason every 10 s, not one per request
        _last_logged[reason] = now
        log.warning("refusing requests with 503 (%s): %s", reason, message)
    return replies.error(message, 503, verbose, endpoint)
