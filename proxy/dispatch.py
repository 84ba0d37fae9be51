"""dispatch(): hand one request's records to every destination at once.

A destination that waits on a remote service (Mixpanel, any destination with
DELIVERY=sync) gets a task of its own on the worker's bounded pool (core/green.py); one
that only buffers (batch delivery) is called in the request's greenlet. Each call runs
under its destination's deadline. A destination that raises or hangs yields an `error`
WriteResult for itself only; the others' results and the reply never wait longer than
the slowest deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from core import green
from core.records import Ingest
from core.retry import short_error
from destinations.base import Destination, WriteResult

log = logging.getLogger(__name__)


class _Overdue(Exception):
    pass


def _guarded(destination: Destination, ingest: Ingest) -> WriteResult:
    started = time.monotonic()
    try:
        with green.deadline(destination.timeout, _Overdue()):
            return destination.write(ingest)
    except _Overdue:
        error = f"timed out after {destination.timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - isolation: one destination's bug is its own result
        log.warning("destination %s failed: %s", destination.name, short_error(exc), exc_info=log.isEnabledFor(logging.DEBUG))
        error = short_error(exc)
    duration = (time.monotonic() - started) * 1000
    return WriteResult(destination.name, "error", 0, len(ingest.records), duration, error, retryable=True)


def dispatch(ingest: Ingest, destinations: Sequence[Destination]) -> list[WriteResult]:
    """Every destination's result, in the order given. Writes that only buffer run here, one
    after another (a greenlet each would cost more than the write); the ones that wait on a
    remote service run concurrently."""
    results: list[WriteResult | None] = [None] * len(destinations)
    waiting: list[int] = []
    for index, destination in enumerate(destinations):
        if destination.waits_on_io:
            waiting.append(index)
        else:
            results[index] = _guarded(destination, ingest)
    if waiting:
        answers = green.run_all([lambda d=destinations[i]: _guarded(d, ingest) for i in waiting])
        for index, answer in zip(waiting, answers, strict=True):
            results[index] = answer
    return results  # type: ignore[return-value] - every slot is filled
