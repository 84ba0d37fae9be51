"""One retry policy for every outbound call: exponential backoff with jitter, a deadline,
and transient-versus-permanent errors. The delivery layer and Mixpanel forwarding both
use it; only they decide about retries, never a destination itself."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from core import green

T = TypeVar("T")
# The jitter's own generator: retries run on background threads, and drawing from the random
# module's shared one would move the state a caller seeded (Hypothesis warns when that happens
# while it generates examples).
_jitter = random.Random()


class DestinationError(Exception):
    """Base class. `str(err)` must be safe to show a client: no payloads, SQL or secrets."""


class TransientError(DestinationError):
    """Throttling, 5xx, timeouts, connection resets: try again later. `retry_after` is the
    server's own hint in seconds, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DestinationError):
    """Bad credentials, missing permission, invalid data: retrying cannot help."""


class RetriesExhausted(TransientError):
    """Out of attempts or time; `last` is the final transient error."""

    def __init__(self, last: TransientError, attempts: int) -> None:
        super().__init__(str(last), last.retry_after)
        self.last = last
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    max_seconds: float = 30.0
    base_seconds: float = 0.2
    max_delay_seconds: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Full-jitter-ish backoff for the pause after `attempt` (1-based); never shorter
        than the server's own Retry-After."""
        backoff = min(self.base_seconds * 2 ** (attempt - 1), self.max_delay_seconds) * (0.5 + _jitter.random())
        return max(backoff, retry_after or 0.0)

    def run(
        self,
        attempt: Callable[[], T],
        *,
        deadline: float | None = None,
        attempt_timeout: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_retry: Callable[[int, TransientError], None] | None = None,
    ) -> T:
        """Call `attempt` until it returns. `PermanentError` propagates at once. A
        `TransientError` (or any unclassified exception, or an attempt that overruns
        `attempt_timeout`) is retried until attempts, `max_seconds` or `deadline` (monotonic)
        run out, then `RetriesExhausted` is raised. An attempt never outlives the deadline."""
        started = time.monotonic()
        until = min(deadline if deadline is not None else math.inf, started + self.max_seconds)
        tries = 0
        last: TransientError = TransientError("transient: no time left before the deadline")
        while True:
            limit = min(attempt_timeout or math.inf, until - time.monotonic())
            if limit <= 0:
                raise RetriesExhausted(last, tries)
            tries += 1
            try:
                cutoff = TransientError(f"no answer within {limit:.3g}s")
                with green.deadline(None if limit == math.inf else limit, cutoff):
                    return attempt()
            except PermanentError:
                raise
            except TransientError as exc:
                last = exc
            except Exception as exc:  # noqa: BLE001 - an unclassified SDK error is treated as transient
                last = TransientError(f"{type(exc).__name__}: {short_error(exc)}")
            pause = self.delay(tries, last.retry_after)
            if tries >= self.max_attempts or time.monotonic() + pause > until or (should_stop is not None and should_stop()):
                raise RetriesExhausted(last, tries)
            if on_retry is not None:
                on_retry(tries, last)
            green.sleep(pause)


def short_error(exc: BaseException, limit: int = 200) -> str:
    """A one-line, bounded description of an exception for replies and logs."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def http_status_error(status: int | None, message: str, retry_after: float | None = None) -> Exception:
    """The shared HTTP classifier: 408, 425, 429 and 5xx are transient; other statuses
    (400, 401, 403, 404, 409, ...) are permanent. No status (a connection error) is transient."""
    if status is None or status in (408, 425, 429) or status >= 500:
        return TransientError(message, retry_after)
    return PermanentError(message)
