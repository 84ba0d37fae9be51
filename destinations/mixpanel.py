"""`mixpanel`: forward records to Mixpanel's ingestion API.

Reads: MIXPANEL_API_HOST (or MIXPANEL_REGION), MIXPANEL_TIMEOUT_SECONDS,
MIXPANEL_DELIVERY (`sync` | `batch`), MIXPANEL_API_SECRET, or
MIXPANEL_SERVICE_ACCOUNT_USERNAME + MIXPANEL_SERVICE_ACCOUNT_SECRET + MIXPANEL_PROJECT_ID.

`sync` (the default): the SDK waits for Mixpanel's verdict. `MixpanelDestination`
chunks to Mixpanel's limits, gzips, retries 429/5xx with backoff inside its deadline,
and hands Mixpanel's reply back. `batch`: `MixpanelSink` is a row sink like any other,
so the SDK gets `1` once its records are buffered and a Mixpanel outage costs nothing
(retries, dead letter, `replay`). `MixpanelClient` is the worker's one connection pool,
also used by the pass-through routes.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import certifi
import urllib3
from urllib3.util import make_headers, parse_url

from core import codec
from core.http import ERRORS as HTTP_ERRORS
from core.http import ConnectionPool
from core.records import Ingest
from core.retry import PermanentError, RetriesExhausted, RetryPolicy, TransientError, short_error
from core.settings import Settings
from destinations.base import Capabilities, Rejection, RowSink, SinkResult, UpstreamReply, WriteResult
from destinations.delivery import DestinationState

log = logging.getLogger(__name__)

# Mixpanel's documented limits: 2000 records per request; /import also 10 MB uncompressed.
MAX_RECORDS = 2000
MAX_BYTES = {"import": 10 * 1000 * 1000 - 4096, "track": 1_000_000, "engage": 1_000_000, "groups": 1_000_000}
# Level 1 (ISA-L level 0): upstream gzip is for the wire; it costs a fraction of zlib's CPU (core/codec.py).
GZIP_LEVEL = 1
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "mixpanel-dwh-proxy"


ONE_ATTEMPT = RetryPolicy(max_attempts=1)


class MixpanelUnavailable(Exception):
    """Mixpanel could not be reached or kept failing until the deadline."""


def retry_after(response: UpstreamResponse) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


_encode = codec.dumps


def chunks(items: Sequence[Any], endpoint: str, encoded: bool = False) -> Iterator[tuple[int, bytes, int]]:
    """(offset, JSON array bytes, count) chunks within Mixpanel's count and size limits. With
    `encoded`, the items are already each record's JSON (bytes), joined as they are."""
    limit = MAX_BYTES.get(endpoint, 1_000_000)
    if len(items) <= MAX_RECORDS:
        # The common case: one C-encoder call (or one join) for the whole batch.
        whole = b"[" + b",".join(items) + b"]" if encoded else _encode(list(items))
        if len(whole) <= limit:
            yield 0, whole, len(items)
            return
    start = 0
    parts: list[bytes] = []
    size = 2
    for index, item in enumerate(items):
        line = item if encoded else _encode(item)
        if parts and (len(parts) >= MAX_RECORDS or size + len(line) + 1 > limit):
            yield start, b"[" + b",".join(parts) + b"]", len(parts)
            start, parts, size = index, [], 2
        parts.append(line)
        size += len(line) + 1
    if parts:
        yield start, b"[" + b",".join(parts) + b"]", len(parts)


def _bodies(ingest: Ingest, items: Sequence[Any]) -> Iterable[tuple[int, bytes, int]]:
    """What forwarding a request sends: the SDK's own JSON where its records were not changed
    (`Ingest.sent_json`; the client IP goes in X-Forwarded-For) and it is within Mixpanel's
    limits, else chunks of the records re-encoded."""
    sent = ingest.sent_json
    if sent is not None and len(items) <= MAX_RECORDS and len(sent) <= MAX_BYTES.get(ingest.endpoint, 1_000_000):
        return ((0, sent, len(items)),)
    return chunks(items, ingest.endpoint)


@dataclass(frozen=True)
class UpstreamResponse:
    """Mixpanel's answer, read whole: status, headers (case-insensitive) and body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        return codec.loads_exact(self.content)  # ValueError when it is not JSON

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class MixpanelClient:
    """The worker's connections to Mixpanel, opened on first use (gevent-safe after
    monkey-patching). Direct calls go through `core.http.ConnectionPool` (keep-alive,
    responses parsed by httptools): the upstream call is on every request's path, and that
    costs a fraction of urllib3's CPU per call (`python -m bench.micro`). With an outbound
    proxy (HTTPS_PROXY / HTTP_PROXY for Mixpanel's scheme) calls go through urllib3's
    ProxyManager, which speaks CONNECT and proxy authentication."""

    def __init__(self, base_url: str, timeout: float, proxies: Mapping[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.origin, self.base_path = f"{parts.scheme}://{parts.netloc}", parts.path  # MIXPANEL_API_HOST may have a path
        self.timeout = timeout
        # Resolved once (Settings.outbound_proxies): the proxy for Mixpanel's scheme, if any.
        self.proxy = dict(proxies or {}).get(parts.scheme or "https")
        self._direct = None if self.proxy else ConnectionPool(self.base_url, headers={"User-Agent": USER_AGENT})
        self._proxied: urllib3.ProxyManager | None = None
        self._lock = threading.Lock()
        # Bounded by the deadline, not by a count: the SDK is waiting, so retry while it can.
        self.retry = RetryPolicy(max_attempts=1000, max_seconds=timeout, base_seconds=0.1, max_delay_seconds=2.0)

    @property
    def proxied(self) -> urllib3.ProxyManager:
        if self._proxied is None:
            with self._lock:
                if self._proxied is None:
                    self._proxied = self._new_proxy_manager()
        return self._proxied

    def _new_proxy_manager(self) -> urllib3.ProxyManager:
        proxy = parse_url(self.proxy)
        return urllib3.ProxyManager(
            proxy._replace(auth=None).url,
            proxy_headers=make_headers(proxy_basic_auth=unquote(proxy.auth)) if proxy.auth else None,
            num_pools=8,
            maxsize=128,  # connections kept per host; more are opened under load, not waited for
            retries=False,  # request() retries, within the caller's deadline
            headers={"User-Agent": USER_AGENT},
            ca_certs=certifi.where(),  # the CA bundle requests would use, not the image's
        )

    def _send(
        self, method: str, target: str, data: bytes | None, headers: Mapping[str, str] | None, remaining: float
    ) -> UpstreamResponse:
        if self._direct is not None:
            answer = self._direct.request(
                method, target, data, headers, connect_timeout=min(remaining, 5.0), read_timeout=remaining
            )
            return UpstreamResponse(answer.status, answer.headers, answer.content)
        raw = self.proxied.request(
            method,
            self.origin + target,
            body=data,
            headers=headers,
            timeout=urllib3.Timeout(connect=min(remaining, 5.0), read=remaining),
            retries=False,
            redirect=False,
        )
        return UpstreamResponse(raw.status, raw.headers, raw.data)

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
        """Send with retries on 429/5xx/connection errors until `deadline` (monotonic), under
        the one retry policy; out of time, Mixpanel's last answer is handed back as it is.
        `path` may carry its own query string; `params` are appended to it."""
        deadline = deadline or time.monotonic() + self.timeout
        target = self.base_path + path
        if params:
            target += ("&" if "?" in path else "?") + _query(params)
        last: list[UpstreamResponse] = []

        def attempt() -> UpstreamResponse:
            try:
                response = self._send(method, target, data, headers, max(0.001, deadline - time.monotonic()))
            except (urllib3.exceptions.HTTPError, *HTTP_ERRORS) as exc:
                # Only the exception's name: its text carries the URL, whose query may hold user data.
                raise TransientError(type(exc).__name__) from None
            if retry and response.status_code in RETRY_STATUSES:
                last[:] = [response]
                raise TransientError(f"HTTP {response.status_code}", retry_after(response))
            return response

        def log_retry(attempt: int, error: TransientError) -> None:
            log.info("mixpanel retry", extra={"attempt": attempt, "reason": str(error), "path": path.split("?", 1)[0]})

        try:
            return (self.retry if retry else ONE_ATTEMPT).run(attempt, deadline=deadline, on_retry=log_retry)
        except RetriesExhausted as exc:
            if last:
                return last[0]  # out of time: hand back Mixpanel's last answer
            raise MixpanelUnavailable(f"Mixpanel unavailable: {exc.last}") from None

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        if self._proxied is not None:
            self._proxied.clear()


def _query(params: Sequence[tuple[str, str]] | Mapping[str, str]) -> str:
    """`urlencode(params)`, remembered: a worker sends the same few query strings (`ip=1&verbose=1`,
    an /import's `strict` and `project_id`) on every call, and encoding one takes a dozen calls."""
    return _encoded(tuple(params.items() if isinstance(params, Mapping) else params))


@lru_cache(maxsize=256)
def _encoded(params: tuple[tuple[str, str], ...]) -> str:
    return urlencode(params)


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
    """Synchronous forwarding: the SDK gets Mixpanel's own verdict."""

    name = "mixpanel"
    needs_rows = False
    waits_on_io = True

    def __init__(self, settings: Settings, client: MixpanelClient) -> None:
        self.client = client
        # dispatch() gives us a little longer than our own deadline so we report, not get killed.
        self.timeout = settings.mixpanel_timeout_seconds + 2.0
        # For /health: `unavailable` while Mixpanel cannot be reached or answers 429/5xx until the
        # deadline, `ok` again with the next request it answers. Its verdict on the data is not a
        # destination failure: refused records count as rejected.
        self.state = DestinationState()

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
            for offset, body, count in _bodies(ingest, items):
                response = self.client.request(
                    "POST",
                    f"/{ingest.endpoint}",
                    params=params,
                    data=codec.gzip(body, GZIP_LEVEL),
                    headers=headers,
                    deadline=deadline,
                )
                replies.append((offset, response.status_code, count, _parse_reply(response)))
        except MixpanelUnavailable as exc:
            sent = sum(c for _, _, c, _ in replies)
            self.state.state = "unavailable"
            self.state.last_error, self.state.last_error_at = str(exc), time.time()
            return WriteResult(self.name, "error", sent, len(items) - sent, _ms(started), str(exc), retryable=True)
        upstream = combine_replies(ingest.endpoint, replies)
        ok = _accepted(ingest.endpoint, upstream)
        inserted = len(items) if ok else _imported(upstream)
        if upstream.status_code in RETRY_STATUSES:  # still failing when the deadline came
            self.state.state = "unavailable"
            self.state.last_error, self.state.last_error_at = f"Mixpanel answered HTTP {upstream.status_code}", time.time()
        else:
            self.state.state, self.state.last_success_at = "ok", time.time()
            self.state.written_rows += inserted
            self.state.rejected_rows += len(items) - inserted
        error = None if ok else short_error(Exception(verdict(ingest.endpoint, upstream)[1]))
        return WriteResult(
            self.name, "success" if ok else "error", inserted, len(items) - inserted, _ms(started), error, upstream=upstream
        )

    def setup(self) -> None:
        pass

    def drop(self) -> list[str]:
        return []

    def health(self) -> dict[str, Any]:
        return {"mode": "sync", "api_host": self.client.base_url, **self.state.as_dict(time.time())}

    def redeliver(self, table: str, rows: list[Any]) -> int:
        raise PermanentError("synchronous Mixpanel forwarding spools nothing: set MIXPANEL_DELIVERY=batch to replay")

    def refusal(self, size: int) -> str | None:
        return None  # answers inside the request: a failure is that request's 503

    def close(self, timeout: float | None = None) -> None:
        pass  # the shared client is closed by the runtime, after the pass-through routes


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def verdict(endpoint: str, reply: UpstreamReply) -> tuple[bool, str | None]:
    """Mixpanel's verdict as (accepted, error), the one reading of it in the code base:
    /track-style `1` or `{"status": 1}`, or /import's `{"code": 200}`."""
    status, body = reply.status_code, reply.body
    if isinstance(body, dict):
        if endpoint == "import" and "code" in body:
            ok = status < 300 and body.get("code") == 200
            return ok, None if ok else str(body.get("error") or body.get("status") or f"HTTP {status}")
        ok = status < 300 and body.get("status") == 1
        return ok, None if ok else str(body.get("error") or f"HTTP {status}")
    ok = status < 300 and body == 1
    return ok, None if ok else "Mixpanel rejected the data"


def _accepted(endpoint: str, reply: UpstreamReply) -> bool:
    return verdict(endpoint, reply)[0]


def _imported(reply: UpstreamReply) -> int:
    body = reply.body
    return int(body.get("num_records_imported") or 0) if isinstance(body, dict) else 0


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


# --- MIXPANEL_DELIVERY=batch ------------------------------------------------------------

#: Without an API secret events go to /track, which takes 50 per call in Mixpanel's batch
#: guidance; with one they go to /import, which takes 2,000.
TRACK_BATCH = 50
#: Calls one flush keeps out at once. At 50 events a call, one at a time would cap a worker
#: at 50 events per round trip (about a thousand events/s at Mixpanel's 50 ms); eight at once
#: stay well under its ingestion rate limits, and a 429 is retried after its Retry-After.
FLUSH_CONCURRENCY = 8


class MixpanelSink(RowSink):
    """Mixpanel through the delivery layer. Records (as Mixpanel receives them, client IP
    already in `properties.ip` / `$ip` from normalisation) are buffered per endpoint and
    sent in Mixpanel's batch sizes with `ip=0`, so Mixpanel geolocates each record by its
    own IP rather than by the proxy's address. Mixpanel de-duplicates events by
    `$insert_id`, so retries and replays do not double-count.

    Verdicts: 2xx accepted; 429/5xx transient; an `/import` 400 with `failed_records`
    rejects exactly those records; any other 4xx is permanent for the whole write."""

    name = "mixpanel"

    def __init__(self, settings: Settings, client: MixpanelClient) -> None:
        self.client = client
        secret = settings.get("mixpanel_api_secret")
        user, password = settings.get("mixpanel_service_account_username"), settings.get("mixpanel_service_account_secret")
        self.project_id = settings.get("mixpanel_project_id")
        self.authorization: str | None = None
        if user and password:
            self.authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        elif secret:
            self.authorization = "Basic " + base64.b64encode(f"{secret}:".encode()).decode()
        self.use_import = self.authorization is not None
        self.capabilities = Capabilities(
            takes="records",
            max_rows=MAX_RECORDS if self.use_import else TRACK_BATCH,
            max_bytes=MAX_BYTES["track"],
            attempt_timeout=settings.mixpanel_timeout_seconds,
            idempotent=True,  # events by $insert_id; profile operations are idempotent by nature
            concurrency=FLUSH_CONCURRENCY,
        )

    def write(self, table: str, items: list[bytes]) -> SinkResult:
        """`items`: the buffered records, each as its JSON (see Capabilities.takes)."""
        endpoint = "import" if table == "track" and self.use_import else table
        params: list[tuple[str, str]] = [("strict", "1")] if endpoint == "import" else [("ip", "0"), ("verbose", "1")]
        if endpoint == "import" and self.project_id:
            params.append(("project_id", self.project_id))
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        if endpoint == "import" and self.authorization:
            headers["Authorization"] = self.authorization
        rejected: list[Rejection] = []
        for offset, body, count in chunks(items, endpoint, encoded=True):
            try:
                response = self.client.request(
                    "POST", f"/{endpoint}", params=params, data=codec.gzip(body, GZIP_LEVEL), headers=headers, retry=False
                )
            except MixpanelUnavailable as exc:
                raise TransientError(str(exc)) from None
            rejected += self._verdict(endpoint, response, offset, count)
        return SinkResult(len(items) - len(rejected), tuple(rejected))

    def _verdict(self, endpoint: str, response: UpstreamResponse, offset: int, count: int) -> list[Rejection]:
        status = response.status_code
        if status in RETRY_STATUSES:
            raise TransientError(f"Mixpanel answered HTTP {status}", retry_after(response))
        body = _parse_reply(response)
        if endpoint == "import" and status == 400 and isinstance(body, dict) and isinstance(body.get("failed_records"), list):
            out = []
            for failed in body["failed_records"]:
                if isinstance(failed, dict) and isinstance(failed.get("index"), int) and 0 <= failed["index"] < count:
                    out.append(Rejection(offset + failed["index"], short_error(Exception(failed.get("message") or "invalid"))))
            if out:
                return out
        reply = UpstreamReply(status, body)
        if status >= 300 or not _accepted(endpoint, reply):
            if status in (401, 403):
                raise PermanentError(f"Mixpanel refused the credentials (HTTP {status})")
            raise PermanentError(short_error(Exception(verdict(endpoint, reply)[1] or f"HTTP {status}")))
        return []

    def setup(self) -> None:
        pass

    def drop(self, tables: list[str]) -> list[str]:
        return []  # Mixpanel's data is not ours to delete

    def health(self) -> dict[str, Any]:
        return {"api_host": self.client.base_url, "endpoint": "import" if self.use_import else "track"}

    def close(self) -> None:
        pass  # the shared client is closed by the runtime
