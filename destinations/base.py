"""The destination contract: what every destination module implements.

Two shapes exist, and a registry factory says which one it builds (no probing):

* A `Destination` takes whole requests (`write(ingest) -> WriteResult`). Only
  Mixpanel's synchronous forwarding is one: the SDK waits for Mixpanel's verdict.
* A `RowSink` takes rows. It is everything else (lakes, warehouses, Pub/Sub, and
  Mixpanel with `MIXPANEL_DELIVERY=batch`). The delivery layer
  (`destinations/delivery.py`) wraps it into a `Destination` that buffers, splits,
  retries, dead-letters and reports. See `RowSink` for the contract and
  docs/architecture.md for how to add one.

Errors: raise `TransientError` for trouble worth retrying and `PermanentError` for
trouble retrying cannot fix. Only the delivery layer decides what to do about either.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from core import codec
from core.records import Ingest
from core.retry import DestinationError, PermanentError, TransientError, short_error

__all__ = [
    "Capabilities",
    "Chunk",
    "Destination",
    "DestinationError",
    "EncodedChunk",
    "LazyClient",
    "PermanentError",
    "Rejection",
    "RowChunk",
    "RowSink",
    "ServiceErrors",
    "SinkResult",
    "TransientError",
    "UpstreamReply",
    "WriteResult",
    "short_error",
]

Status = Literal["success", "queued", "error"]


@dataclass(frozen=True)
class UpstreamReply:
    """What Mixpanel answered, for routes that hand Mixpanel's verdict back to the SDK."""

    status_code: int
    body: Any  # parsed JSON (verbose) or an int 1/0


@dataclass(frozen=True)
class WriteResult:
    name: str
    status: Status
    inserted_rows: int = 0
    failed_rows: int = 0
    duration_ms: float = 0.0
    error: str | None = None
    # Set only by the Mixpanel destination.
    upstream: UpstreamReply | None = field(default=None, compare=False)
    # An error the SDK should retry (503) rather than one the proxy absorbed.
    retryable: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "inserted_rows": self.inserted_rows,
            "failed_rows": self.failed_rows,
            "duration_ms": round(self.duration_ms, 1),
        }
        if self.error:
            out["error"] = self.error
        return out


class Destination(Protocol):
    """One request's records in, one `WriteResult` out, under `timeout` seconds."""

    name: str
    #: Per-destination deadline inside dispatch(), seconds.
    timeout: float
    #: Whether this destination reads `ingest.rows` (the row model), built once per request.
    needs_rows: bool
    #: Whether write() waits on a remote service. dispatch() runs those concurrently, each in
    #: a greenlet of its own; a write that only buffers runs in the request's own greenlet.
    waits_on_io: bool

    def write(self, ingest: Ingest) -> WriteResult: ...

    def setup(self) -> None:
        """Create datasets/tables/buckets/topics if missing; never replace existing data."""

    def drop(self) -> list[str]:
        """Delete only what this proxy owns, matched exactly; return what was dropped."""

    def health(self) -> dict[str, Any]:
        """State, cheap enough for a health probe: see delivery.DestinationState."""

    def refusal(self, size: int) -> str | None:
        """Why a request bringing about `size` bytes of rows could not be kept now (it is then
        answered 503 before anything is dispatched), or None. A destination that answers
        inside the request has nothing to refuse ahead of time."""

    def redeliver(self, table: str, rows: list[Any]) -> int:
        """Write rows taken back from the dead letter (the `replay` command); raise on failure."""

    def close(self, timeout: float | None = None) -> None:
        """Flush (within `timeout` seconds) and release clients."""


# --- row sinks --------------------------------------------------------------------------

Takes = Literal["rows", "lines", "records"]


@dataclass(frozen=True)
class Capabilities:
    """What a sink can take, declared once; the delivery layer plans every write around it.

    takes            "rows": row dicts (destinations/rows.py); "lines": the same rows encoded
                     once as (insert hour, NDJSON bytes) pairs; "records": the SDK-shaped
                     payloads as Mixpanel would receive them, grouped by endpoint, each as
                     its JSON (bytes), ready to be joined into a request body.
    max_rows         the most rows one `write` may carry; buffers are split to fit.
    max_bytes        the most encoded bytes one `write` may carry (NDJSON size); a single
                     row larger than this still travels alone, and the sink may reject it.
    attempt_timeout  seconds one attempt may take before it counts as a transient failure
                     (`<NAME>_ATTEMPT_TIMEOUT_SECONDS` overrides it). A load job is not an
                     HTTP call: set what the service needs, not a global default.
    idempotent       True when writing the same rows twice stores them once (by insert_id),
                     so retries and replays cannot duplicate.
    min_flush_seconds  the least time between two flushes of the buffer (a service that
                     counts writes against a daily quota, e.g. BigQuery's load jobs); rows
                     wait that long even when count or bytes are reached, and the buffer
                     spills to the dead letter only when it is full. Shutdown drains at once.
    concurrency      how many writes of one flush may be out at once: for a service that
                     takes many small requests (Mixpanel's 50-event /track), where one
                     request at a time would leave the flush waiting on round trips.
    """

    takes: Takes = "rows"
    max_rows: int = 10_000
    max_bytes: int = 8 * 1024 * 1024
    attempt_timeout: float = 30.0
    idempotent: bool = False
    min_flush_seconds: float = 0.0
    concurrency: int = 1


@dataclass(frozen=True)
class Rejection:
    """One row the destination refused: its position in the write, and the service's reason."""

    index: int
    reason: str


@dataclass(frozen=True)
class SinkResult:
    """What one write did: rows stored, and rows refused one by one (the rest of the write
    stands). The delivery layer dead-letters each rejected row with its reason."""

    written: int
    rejected: tuple[Rejection, ...] = ()

    @classmethod
    def all_of(cls, items: Sequence[Any] | Chunk) -> SinkResult:
        return cls(len(items))


class Chunk(Protocol):
    """Rows that one write delivers. `nbytes` is what the chunk costs in memory; `full` means
    it takes no more rows (a fresh chunk always takes at least one).

    Items arrive encoded, as the buffer counts them: (insert hour, NDJSON line) pairs for a
    sink that takes lines, JSON lines (bytes) otherwise. `payload()` hands them over in the
    shape the sink takes; `pieces()` and `select()` give them back encoded, as the dead
    letter stores them."""

    nbytes: int
    full: bool

    def __len__(self) -> int: ...

    def add(self, items: list[Any], size: int = 0) -> int:
        """Take what fits of `items` (`size` bytes encoded); return how many were taken."""
        ...

    def payload(self) -> Any:
        """What `RowSink.write` receives: a list of items, or the chunk itself."""
        ...

    def pieces(self) -> Iterator[list[Any]]:
        """The items again, encoded, in lists the dead letter can take one at a time."""
        ...

    def select(self, indices: Sequence[int]) -> list[Any]:
        """The encoded items at these positions of `payload()`, for dead-lettering rejected rows."""
        ...


class RowChunk:
    """The plain chunk: a list of encoded items (lines or records) of at most `max_rows` items
    and `max_bytes` encoded bytes, handed to the sink as they are. It costs what its items
    take encoded."""

    __slots__ = ("items", "nbytes", "max_rows", "max_bytes")

    def __init__(self, max_rows: int = 1 << 62, max_bytes: int = 1 << 62) -> None:
        self.items: list[Any] = []
        self.nbytes = 0
        self.max_rows = max_rows
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.max_rows or self.nbytes >= self.max_bytes

    def add(self, items: list[Any], size: int = 0) -> int:
        room = self.max_rows - len(self.items)
        if room <= 0 or not items:
            return 0
        each = size / len(items)
        fits = min(room, len(items), max(1 if not self.items else 0, int((self.max_bytes - self.nbytes) // max(each, 1))))
        if fits <= 0:
            return 0
        self.items.extend(items[:fits] if fits < len(items) else items)
        self.nbytes += round(each * fits)
        return fits

    def payload(self) -> list[Any]:
        return self.items

    def pieces(self) -> Iterator[list[Any]]:
        yield self.items

    def select(self, indices: Sequence[int]) -> list[Any]:
        return [self.items[i] for i in indices]


class EncodedChunk(RowChunk):
    """The plain chunk of a sink that takes rows: each row waits as its NDJSON line and is
    decoded only for the write. A row dict costs about three times its line in memory
    (2.6 KB for a 900-byte event), and the buffer's limits count lines."""

    __slots__ = ()

    def payload(self) -> list[Any]:
        return [codec.loads_exact(line) for line in self.items]


class RowSink:
    """How rows reach one service. Subclass it, set `name` and `capabilities`, implement
    `write`; the other methods default to doing nothing.

    The delivery layer guarantees:
      * `write(table, items)` gets at most `capabilities.max_rows` items and, apart from a
        single oversized row, at most `capabilities.max_bytes` encoded bytes, all for one
        table, in the shape `capabilities.takes` names;
      * each attempt is cut off after `capabilities.attempt_timeout` seconds, then retried
        under the one retry policy (core/retry.py);
      * `setup()` has succeeded in this process before the first `write`;
      * `close()` is called when no write is in flight, after the drain. A request that
        finishes during the drain writes through later: its write may open the sink's
        clients again, and `close()` is called again after it (so sinks open clients
        lazily and `close()` must be safe to repeat).

    The sink promises:
      * `write` returns a `SinkResult`: how many rows it stored and which it refused, each
        with the service's reason (a bad value, a row over the size limit). Refused rows
        are dead-lettered by the delivery layer; the rest count as written and are never
        sent again. `written + len(rejected)` must equal the number of items;
      * it raises `TransientError` when nothing (or an unknown part) was stored and a retry
        may help, `PermanentError` when no retry can (credentials, permissions, a missing
        table that `setup` cannot create); the whole write is then retried or
        dead-lettered. A retried write carries the same rows with the same `insert_id`s;
      * `setup()` creates what is missing and is idempotent; it never drops, replaces or
        truncates anything that may hold data;
      * `drop(tables)` deletes only what this proxy owns, matched exactly (tables, the
        `<prefix>/<table>/` objects, per-kind topics), and returns what it deleted;
      * nothing it raises or returns carries payloads, SQL text with values, or secrets.

    A sink may also supply `new_chunk()`, its own buffer chunk (the lakes compress rows as
    they arrive); its `write` then receives that chunk's `payload()`.
    """

    name: ClassVar[str] = ""
    capabilities: Capabilities = Capabilities()

    def write(self, table: str, items: Any) -> SinkResult:
        raise NotImplementedError

    def new_chunk(self, max_rows: int, max_bytes: int) -> Chunk:
        if self.capabilities.takes == "rows":
            return EncodedChunk(max_rows, max_bytes)
        return RowChunk(max_rows, max_bytes)

    def setup(self) -> None:
        """Create what is missing (idempotent, never destructive)."""

    def drop(self, tables: list[str]) -> list[str]:
        return []

    def health(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Release clients; the delivery layer has already flushed."""


@dataclass(frozen=True)
class ServiceErrors:
    """The one HTTP classifier for destinations that speak HTTP (s3, gcs, azure...): a status
    and the service's error code become a Transient- or PermanentError whose message names
    the resource and, for a 403, the missing permission, and never carries the service's
    own text (it may echo payloads or keys).

    408, 425, 429, 5xx and `transient_codes` are transient; 401 and `credential_codes` mean
    the credentials were refused; 404 and `not_found_codes` a missing container; 403 and
    `denied_codes` a missing permission (`permissions` maps an operation to its name)."""

    service: str  # "s3"
    kind: str  # "bucket", "container"
    resource: str  # its name
    permissions: dict[str, str] = field(default_factory=dict)
    transient_codes: frozenset[str] = frozenset()
    not_found_codes: frozenset[str] = frozenset()
    denied_codes: frozenset[str] = frozenset()
    credential_codes: frozenset[str] = frozenset()

    def classify(self, operation: str, status: int, code: str = "") -> DestinationError:
        where = f"{self.service} {operation} on {self.kind} {self.resource}"
        label = f"{code or 'error'} (HTTP {status})"
        if code in self.transient_codes or status in (408, 425, 429) or status >= 500:
            return TransientError(f"{where}: {label}")
        if code in self.not_found_codes or status == 404:
            return PermanentError(f"{self.service} {self.kind} {self.resource} not found ({operation})")
        if code in self.credential_codes or status == 401 or (status == 403 and "Authentication" in code):
            return PermanentError(f"{where}: credentials rejected ({code or status})")
        if code in self.denied_codes or status == 403:
            permission = self.permissions.get(operation, f"{self.service}:{operation}")
            return PermanentError(f"{permission} denied on {self.kind} {self.resource}")
        return PermanentError(f"{where}: {label}")


T = TypeVar("T")


class LazyClient(Generic[T]):
    """An SDK client made on first use, once per process (concurrent first uses wait for
    one construction), and closed by `close()`."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._client: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._factory()
                client = self._client
        return client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        close = getattr(client, "close", None)
        if close is not None:
            close()
