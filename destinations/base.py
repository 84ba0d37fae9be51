"""The destination contract every module implements, and the errors that drive retries.

A destination receives the same immutable `Ingest` as every other destination and
returns a `WriteResult`. It raises `TransientError` for trouble worth retrying and
`PermanentError` for trouble that retrying cannot fix; only the delivery layer
decides what to do about either.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

from proxy.records import Ingest

Status = Literal["success", "queued", "error"]


class DestinationError(Exception):
    """Base class. `str(err)` must be safe to show a client: no payloads, SQL or secrets."""


class TransientError(DestinationError):
    """Throttling, 5xx, timeouts, connection resets: try again later."""


class PermanentError(DestinationError):
    """Bad credentials, missing permission, rejected rows: dead-letter at once."""


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


@runtime_checkable
class Destination(Protocol):
    name: str
    #: Per-destination deadline inside dispatch(), seconds.
    timeout: float

    def write(self, ingest: Ingest) -> WriteResult: ...

    def setup(self) -> None:
        """Create datasets/tables/buckets/topics if missing; never replace existing data."""

    def drop(self) -> list[str]:
        """Delete only what this proxy owns, matched exactly; return what was dropped."""

    def health(self) -> dict[str, Any]:
        """Readiness, cheap enough for a health probe."""

    def close(self, timeout: float | None = None) -> None:
        """Flush (within `timeout` seconds) and release clients."""


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
        if client is not None and callable(getattr(client, "close", None)):
            client.close()


def short_error(exc: BaseException, limit: int = 200) -> str:
    """A one-line, bounded description of an exception for replies and logs."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
