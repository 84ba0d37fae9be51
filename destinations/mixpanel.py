"""`mixpanel`: forward records to Mixpanel's ingestion API, synchronously.

Reads: MIXPANEL_API_HOST (or MIXPANEL_REGION), MIXPANEL_TIMEOUT_SECONDS. The SDK
waits for Mixpanel's verdict, so this destination is not batched: it chunks to
Mixpanel's limits, gzips, retries 429/5xx with backoff inside its deadline, and
reports Mixpanel's reply. Also used by the pass-through routes (`forward_raw`).
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

import certifi
import urllib3
from urllib3.util import make_headers, parse_url

from destinations.base import UpstreamReply, WriteResult, short_error
from proxy.records import Ingest
from proxy.settings import Settings

log = logging.getLogger(__name__)

# Mixpanel's documented limits: 2000 records per request; /import also 10 MB uncompressed.
MAX_RECORDS = 2000
MAX_BYTES = {"import": 10 * 1000 * 1000 - 4096, "track": 1_000_000, "engage": 1_000_000, "groups": 1_000_000}
# Level 1: upstream gzip is for the wire, and costs a third of level 6's CPU for ~10% more bytes.
GZIP_LEVEL = 1
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "mixpanel-dwh-proxy"


class MixpanelUnavailable(Exception):
    """Mixpanel could not be reached or kept failing until the deadline."""


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def chunks(items: Sequence[Any], endpoint: str) -> Iterator[tuple[int, bytes, int]]:
    """(offset, JSON array bytes, count) chunks within Mixpanel's count and size limits."""
    limit = MAX_BYTES.get(endpoint, 1_000_000)
    if len(items) <= MAX_RECORDS:
        whole = _encode(list(items))  # the common case: one C-encoder call for the whole batch
        if len(whole) <= limit:
            yield 0, whole, len(items)
            return
    start = 0
    parts: list[bytes] = []
    size = 2
    for index, item in enumerate(items):
        encoded = _encode(item)
        if parts and (len(parts) >= MAX_RECORDS or size + len(encoded) + 1 > limit):
            yield start, b"[" + b",".join(parts) + b"]", len(parts)
            start, parts, size = index, [], 2
        parts.append(encoded)
        size += len(encoded) + 1
    if parts:
        yield start, b"[" + b",".join(parts) + b"]", len(parts)


@dataclass(frozen=True)
class UpstreamResponse:
    """Mixpanel's answer, read whole: status, headers (case-insensitive) and body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class MixpanelClient:
    """One urllib3 connection pool per process, created on first use (gevent-safe after
    monkey-patching). urllib3 directly rather than through requests: the upstream call is
    on every request's path, and requests' per-call machinery (environment and settings
    merging, hooks, cookie jars, adapters) cost about 1.8x urllib3's CPU per call (bench/)."""

    def __init__(self, base_url: str, timeout: float, proxies: Mapping[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # Resolved once (Settings.outbound_proxies): the proxy for Mixpanel's scheme, if any.
        self.proxy = dict(proxies or {}).get(parse_url(self.base_url).scheme or "https")
        self._pool: urllib3.PoolManager | None = None
        self._lock = threading.Lock()

    @property
    def pool(self) -> urllib3.PoolManager:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = self._new_pool()
        return self._pool

    def _new_pool(self) -> urllib3.PoolManager:
        options: dict[str, Any] = {
            "num_pools": 8,
            "maxsize": 128,  # connections kept per host; more are opened under load, not waited for
            "retries": False,  # request() retries, within the caller's deadline
            "headers": {"User-Agent": USER_AGENT},
            "ca_certs": certifi.where(),  # the CA bundle requests would use, not the image's
        }
        if not self.proxy:
            return urllib3.PoolManager(**options)
        proxy = parse_url(self.proxy)
        proxy_headers = make_headers(proxy_basic_auth=unquote(proxy.auth)) if proxy.auth else None
        return urllib3.ProxyManager(proxy._replace(auth=None).url, proxy_headers=proxy_headers, **options)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
        retry: bool = True,
    ) -> UpstreamResponse:
        """Send with retries on 429/5xx/connection errors until `deadline` (monotonic).
        `path` may carry its own query string; `params` are appended to it."""
        deadline = deadline or time.monotonic() + self.timeout
        url = self.base_url + path
        if params:
            url += ("&" if "?" in path else "?") + urlencode(params)
        attempt = 0
        last_error = "no attempt"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MixpanelUnavailable(f"Mixpanel unavailable: {last_error}")
            attempt += 1
            try:
                raw = self.pool.request(
                    method,
                    url,
                    body=data,
                    headers=headers,
                    timeout=urllib3.Timeout(connect=min(remaining, 5.0), read=remaining),
                    retries=False,
                    redirect=False,
                )
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                # Only the exception's name: its text carries the URL, whose query may hold user data.
                last_error = type(exc).__name__
                response = None
            else:
                response = UpstreamResponse(raw.status, raw.headers, raw.data)
                if response.status_code not in RETRY_STATUSES or not retry:
                    return response
                last_error = f"HTTP {response.status_code}"
            if not retry:
                raise MixpanelUnavailable(f"Mixpanel unavailable: {last_error}")
            delay = min(2.0, 0.1 * 2 ** (attempt - 1)) * (0.5 + random.random())
            if response is not None and response.headers.get("Retry-After", "").isdigit():
                delay = max(delay, float(response.headers["Retry-After"]))
            if time.monotonic() + delay >= deadline:
                if response is not None:
                    return response  # out of time: hand back Mixpanel's last answer
                raise MixpanelUnavailable(f"Mixpanel unavailable: {last_error}")
            log.info("mixpanel retry", extra={"attempt": attempt, "reason": last_error, "path": path.split("?", 1)[0]})
            time.sleep(delay)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()


def forwarding_headers(client_ip: str | None, authorization: str | None = None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if client_ip:
        headers["X-Forwarded-For"] = client_ip
        headers["X-Real-IP"] = client_ip
    if authorization:
        headers["Authorization"] = authorization
    return headers


def _parse_reply(response: UpstreamResponse) -> Any:
    try:
        return response.json()
    except ValueError:
        text = response.text.strip()
        return int(text) if text in {"0", "1"} else text[:200]


class MixpanelDestination:
    name = "mixpanel"

    def __init__(self, settings: Settings) -> None:
        self.client = MixpanelClient(settings.mixpanel_api_host, settings.mixpanel_timeout_seconds, settings.outbound_proxies)
        # dispatch() gives us a little longer than our own deadline so we report, not get killed.
        self.timeout = settings.mixpanel_timeout_seconds + 2.0

    def write(self, ingest: Ingest) -> WriteResult:
        started = time.monotonic()
        items = [r.payload for r in ingest.records]
        headers = forwarding_headers(ingest.client_ip, ingest.authorization if ingest.endpoint == "import" else None)
        headers.update({"Content-Type": "application/json", "Content-Encoding": "gzip"})
        params: list[tuple[str, str]] = list(ingest.upstream_params)
        if ingest.endpoint != "import":
            # No client IP (the SDK sent ip=0): ip=1 would geolocate the proxy's own address.
            params += [("ip", "1" if ingest.client_ip else "0"), ("verbose", "1")]
        deadline = started + self.client.timeout
        replies: list[tuple[int, int, int, Any]] = []  # (offset, status_code, count, body)
        try:
            for offset, body, count in chunks(items, ingest.endpoint):
                response = self.client.request(
                    "POST",
                    f"/{ingest.endpoint}",
                    params=params,
                    data=gzip.compress(body, GZIP_LEVEL),
                    headers=headers,
                    deadline=deadline,
                )
                replies.append((offset, response.status_code, count, _parse_reply(response)))
        except MixpanelUnavailable as exc:
            sent = sum(c for _, _, c, _ in replies)
            return WriteResult(self.name, "error", sent, len(items) - sent, _ms(started), str(exc), retryable=True)
        upstream = combine_replies(ingest.endpoint, replies)
        ok = _accepted(ingest.endpoint, upstream)
        inserted = len(items) if ok else _imported(upstream)
        error = None if ok else _error_text(upstream)
        return WriteResult(
            self.name, "success" if ok else "error", inserted, len(items) - inserted, _ms(started), error, upstream=upstream
        )

    def setup(self) -> None:
        pass

    def drop(self) -> list[str]:
        return []

    def health(self) -> dict[str, Any]:
        return {"api_host": self.client.base_url}

    def close(self, timeout: float | None = None) -> None:
        self.client.close()


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _accepted(endpoint: str, reply: UpstreamReply) -> bool:
    if reply.status_code >= 300:
        return False
    body = reply.body
    if endpoint == "import":
        return isinstance(body, dict) and body.get("code", reply.status_code) == 200
    if isinstance(body, dict):
        return body.get("status") == 1
    return body == 1


def _imported(reply: UpstreamReply) -> int:
    body = reply.body
    return int(body.get("num_records_imported") or 0) if isinstance(body, dict) else 0


def _error_text(reply: UpstreamReply) -> str:
    body = reply.body
    if isinstance(body, dict):
        return short_error(Exception(body.get("error") or body.get("status") or f"HTTP {reply.status_code}"))
    return f"Mixpanel answered {reply.status_code} {str(body)[:100]}"


def combine_replies(endpoint: str, replies: list[tuple[int, int, int, Any]]) -> UpstreamReply:
    """One verdict for a request that went upstream in several chunks."""
    if len(replies) == 1:
        _, status, _, body = replies[0]
        return UpstreamReply(status, body)
    if endpoint == "import":
        imported = sum(int(b.get("num_records_imported") or 0) for _, _, _, b in replies if isinstance(b, dict))
        for offset, status, _, body in replies:
            if status >= 300 or not isinstance(body, dict) or body.get("code", status) != 200:
                merged = dict(body) if isinstance(body, dict) else {"code": status, "error": str(body)}
                merged["num_records_imported"] = imported
                failed = merged.get("failed_records")
                if isinstance(failed, list):
                    merged["failed_records"] = [
                        {**f, "index": f.get("index", 0) + offset} if isinstance(f, dict) else f for f in failed
                    ]
                return UpstreamReply(status, merged)
        return UpstreamReply(200, {"code": 200, "num_records_imported": imported, "status": "OK"})
    for _, status, _, body in replies:
        if not _accepted(endpoint, UpstreamReply(status, body)):
            return UpstreamReply(status, body)
    return UpstreamReply(replies[0][1], replies[0][3])
