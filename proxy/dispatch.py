"""dispatch(): hand one request's records to every destination at once.

One greenlet per destination, each under its own deadline. A destination that
raises or hangs yields an `error` WriteResult for itself only; the others' results
and the reply never wait longer than the slowest deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import gevent
from gevent.pool import Group

from destinations.base import Destination, WriteResult, short_error
from proxy.records import Ingest

log = logging.getLogger(__name__)


def _guarded(destination: Destination, ingest: Ingest) -> WriteResult:
    started = time.monotonic()
    timeout = gevent.Timeout(destination.timeout)
    timeout.start()
    try:
        return destination.write(ingest)
    except gevent.Timeout as exc:
        if exc is not timeout:
            raise
        error = f"timed out after {destination.timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - isolation: one destination's bug is its own result
        log.warning("destination %s failed: %s", destination.name, short_error(exc), exc_info=log.isEnabledFor(logging.DEBUG))
        error = short_error(exc)
    finally:
        timeout.close()
    duration = (time.monotonic() - started) * 1000
    return WriteResult(destination.name, "error", 0, len(ingest.records), duration, error, retryable=True)


def dispatch(ingest: Ingest, destinations: Sequence[Destination]) -> list[WriteResult]:
    if not destinations:
        return []
    if len(destinations) == 1:
        return [_guarded(destinations[0], ingest)]
    group = Group()
    greenlets = [group.spawn(_guarded, d, ingest) for d in destinations]
    group.join()
    return [g.value for g in greenlets]
