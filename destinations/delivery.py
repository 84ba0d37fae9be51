"""Delivery for every destination except Mixpanel: rows, batching, retries, dead letters.

Reads: DELIVERY (`batch` | `sync`), BATCH_MAX_RECORDS, BATCH_MAX_BYTES,
BATCH_MAX_SECONDS, MAX_BUFFER_BYTES, RETRY_MAX_ATTEMPTS, RETRY_MAX_SECONDS, each
with a per-destination override (`S3_BATCH_MAX_SECONDS`, ...).

A `RowDestination` turns records into rows and hands them to a `RowSink` (how rows
reach one service). In `batch` mode rows wait in a bounded per-destination buffer
that a background flusher drains on count, bytes or age; in `sync` mode they are
written inside the request. Transient errors are retried with exponential backoff
and jitter; what still fails goes to the dead letter. A buffer that is full (its
destination is down) spills to the dead letter instead of growing. Nothing is
dropped silently: if the dead letter cannot take rows either, the write fails and
the SDK is told to retry (503).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import gevent

from destinations.base import PermanentError, TransientError, WriteResult, short_error
from destinations.deadletter import DeadLetter, DeadLetterFull
from destinations.rows import Row, RowBatch, to_rows
from destinations.schema import TableSchema
from proxy import metrics
from proxy.records import Ingest, Kind
from proxy.settings import Settings

log = logging.getLogger(__name__)
FREEZING_RUNTIMES = {"AWS", "GCP", "AZURE", "LAMBDA", "FUNCTIONS"}


class RowSink(Protocol):
    """How rows reach one service. Raise TransientError or PermanentError on failure."""

    name: str

    def write_rows(self, table: str, rows: list[Row]) -> int: ...

    # Optional: `write_lines(table, lines: list[Line]) -> int` takes rows already encoded as
    # NDJSON (see destinations.rows.RowBatch.lines); the delivery layer then buffers lines.
    # Optional with it: `new_chunk() -> Chunk`, the sink's own buffer chunk, which
    # `write_lines` then receives as it is (the lakes' gzip-as-you-go PackedRows).

    def setup(self) -> None: ...

    def drop(self, tables: list[str]) -> list[str]: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DeliveryConfig:
    mode: str = "batch"
    # Large by default so that, for lakes, the timer decides: one object per interval, not per request.
    max_records: int = 500_000
    max_bytes: int = 32 * 1024 * 1024
    max_seconds: float = 10.0
    max_buffer_bytes: int = 64 * 1024 * 1024
    retry_max_attempts: int = 5
    retry_max_seconds: float = 30.0
    retry_base_seconds: float = 0.2

    @classmethod
    def from_settings(cls, settings: Settings, name: str) -> DeliveryConfig:
        def pick(key: str, getter: Callable[..., Any], default: Any, minimum: float) -> Any:
            return getter(f"{name}_{key}", getter(key, default, minimum), minimum)

        max_records = pick("batch_max_records", settings.get_int, cls.max_records, 1)
        default_mode = "sync" if settings.runtime in FREEZING_RUNTIMES or max_records == 1 else "batch"
        mode = (settings.get(f"{name}_delivery") or settings.get("delivery") or default_mode).lower()
        if mode not in {"sync", "batch"}:
            from proxy.settings import ConfigError

            raise ConfigError(f"DELIVERY={mode!r} must be batch or sync")
        return cls(
            mode="sync" if max_records == 1 else mode,
            max_records=max_records,
            max_bytes=pick("batch_max_bytes", settings.get_int, cls.max_bytes, 1),
            max_seconds=pick("batch_max_seconds", settings.get_float, cls.max_seconds, 0.05),
            max_buffer_bytes=pick("max_buffer_bytes", settings.get_int, cls.max_buffer_bytes, 1024),
            retry_max_attempts=pick("retry_max_attempts", settings.get_int, cls.retry_max_attempts, 1),
            retry_max_seconds=pick("retry_max_seconds", settings.get_float, cls.retry_max_seconds, 0),
            retry_base_seconds=pick("retry_base_seconds", settings.get_float, cls.retry_base_seconds, 0),
        )


def deliver_with_retries(
    name: str,
    write: Callable[[], int],
    config: DeliveryConfig,
    stop: threading.Event | None = None,
    deadline: float | None = None,
    attempt_timeout: float | None = None,
) -> tuple[int, str | None, int]:
    """Run `write` until it succeeds, fails permanently, or runs out of attempts or time
    (RETRY_MAX_SECONDS, or `deadline` on the monotonic clock if sooner). Each attempt is
    cut off after `attempt_timeout` seconds, so a destination that hangs counts as a
    transient failure. Returns (rows written, error or None, attempts)."""
    started = time.monotonic()
    deadline = min(deadline or math.inf, started + config.retry_max_seconds)
    attempt = 0
    while True:
        # An attempt never outlives the deadline: whoever set it must still have time to spool.
        limit = min(attempt_timeout or math.inf, deadline - time.monotonic())
        if limit <= 0:
            return 0, "transient: no time left before the deadline", attempt
        attempt += 1
        try:
            timeout = None if limit == math.inf else limit
            cutoff = TransientError(f"no answer within {limit:.3g}s") if timeout else None
            with gevent.Timeout(timeout, cutoff):
                return write(), None, attempt
        except PermanentError as exc:
            return 0, f"permanent: {short_error(exc)}", attempt
        except TransientError as exc:
            error = f"transient: {short_error(exc)}"
        except Exception as exc:  # noqa: BLE001 - an unclassified SDK error is treated as transient
            log.warning("unclassified error from %s: %s", name, type(exc).__name__)
            error = f"transient: {type(exc).__name__}: {short_error(exc)}"
        delay = min(config.retry_base_seconds * 2 ** (attempt - 1), 10.0) * (0.5 + random.random())
        out_of_time = time.monotonic() + delay > deadline
        if attempt >= config.retry_max_attempts or out_of_time or (stop is not None and stop.is_set()):
            return 0, error, attempt
        metrics.RETRIES.labels(name).inc()
        time.sleep(delay)


class Chunk(Protocol):
    """Rows that one write delivers. `nbytes` is what the chunk costs in memory."""

    nbytes: int
    full: bool

    def __len__(self) -> int: ...

    def add(self, items: list[Any], size: int = 0) -> int:
        """Take what fits of `items` (`size` bytes encoded); return how many were taken."""
        ...

    def pieces(self) -> Iterator[list[Any]]:
        """The rows again, in lists the dead letter can take one at a time."""
        ...


class _Chunk:
    """The plain chunk: a list of row dicts, or of (hour, NDJSON line) pairs for sinks with
    `write_lines`. It costs what its rows take encoded."""

    __slots__ = ("items", "nbytes")
    full = False

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, items: list[Any], size: int = 0) -> int:
        self.items.extend(items)
        self.nbytes += size
        return len(items)

    def pieces(self) -> Iterator[list[Any]]:
        yield self.items


class _Buffer:
    """Rows waiting for one destination: per table, a list of chunks of at most
    `max_records` rows, each delivered by one write. Not thread-safe: the owner locks."""

    def __init__(self, new_chunk: Callable[[], Chunk], max_records: int) -> None:
        self.new_chunk = new_chunk
        self.max_records = max_records
        self.tables: dict[str, list[Chunk]] = {}
        self.rows = 0
        self.bytes = 0
        self.oldest: float | None = None

    def add(self, table: str, items: list[Any], size: int, now: float) -> None:
        """Append `items` (`size` bytes encoded) to the table's open chunk, opening new ones as
        chunks fill. Memory is what each chunk reports: packed chunks count the compressed
        bytes they hold, plain ones the share of `size` they took."""
        chunks = self.tables.setdefault(table, [])
        start = 0
        while start < len(items):
            if not chunks or chunks[-1].full or len(chunks[-1]) >= self.max_records:
                chunks.append(self.new_chunk())
            chunk = chunks[-1]
            before = chunk.nbytes
            piece = items[start : start + self.max_records - len(chunk)]
            taken = chunk.add(piece, size * len(piece) // len(items))
            if not taken:  # the next row does not fit: a fresh chunk always takes one
                chunks.append(self.new_chunk())
                continue
            self.bytes += chunk.nbytes - before
            start += taken
        self.rows += len(items)
        if self.oldest is None:
            self.oldest = now


class RowDestination:
    """A Destination made of the row model, a delivery policy and a RowSink."""

    def __init__(
        self,
        sink: RowSink,
        schemas: dict[Kind, TableSchema],
        config: DeliveryConfig,
        dead_letter: DeadLetter,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.schemas = schemas
        self.config = config
        self.dead_letter = dead_letter
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        # Chunks a flush is delivering right now, so a drain can spool them if it is stuck.
        self._inflight: dict[int, tuple[str, Chunk]] = {}
        # Sinks that take encoded NDJSON lines (the lakes) get rows encoded once per request,
        # and may supply their own chunk (lakes compress rows as they arrive).
        self._encoded = callable(getattr(sink, "write_lines", None))
        self._new_chunk: Callable[[], Chunk] = (getattr(sink, "new_chunk", None) if self._encoded else None) or _Chunk
        self._buffer = self._empty_buffer()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._setup_lock = threading.Lock()
        self._setup_done = False

    # -- the Destination contract ------------------------------------------------------
    def write(self, ingest: Ingest) -> WriteResult:
        started = time.monotonic()
        batch = ingest.rows if ingest.rows is not None else to_rows(ingest.records, self.schemas)
        self._count(batch, len(ingest.records))
        if self.config.mode == "sync" or self._stop.is_set():
            # Once draining has begun nobody will flush a buffer again: late requests write through.
            return self._write_now(batch, started)
        return self._enqueue(batch, started)

    def setup(self) -> None:
        """Single-flight per process: concurrent first requests wait for one set-up."""
        if self._setup_done:
            return
        with self._setup_lock:
            if not self._setup_done:
                self.sink.setup()
                self._setup_done = True

    def drop(self) -> list[str]:
        return self.sink.drop([s.name for s in self.schemas.values()])

    def health(self) -> dict[str, Any]:
        with self._lock:
            depth, size, oldest = self._buffer.rows, self._buffer.bytes, self._buffer.oldest
        info = {"mode": self.config.mode, "buffered_rows": depth, "buffered_bytes": size}
        if oldest is not None:
            info["oldest_unflushed_seconds"] = round(self.clock() - oldest, 3)
        info.update(self.sink.health())
        return info

    def close(self, timeout: float | None = None) -> None:
        """Stop the flusher and drain within `timeout`: write what we can, spool the rest.
        A flusher stuck on a destination that does not answer gets half the time; the rows it
        holds are then spooled (at least once: if it later succeeds, replay re-sends them), and
        so is the rest of the buffer, without waiting on that destination again. Otherwise the
        buffer is written with a quarter of the time held back for spooling what fails: a
        drain that overruns `timeout` is killed by gunicorn, and what it held is lost."""
        budget = timeout if timeout is not None else self.config.retry_max_seconds
        started = time.monotonic()
        self._stop.set()
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(budget / 2)
        with self._lock:
            stuck = list(self._inflight.values())
            self._inflight.clear()
            if stuck:
                buffered, self._buffer = self._buffer, self._empty_buffer()
                stuck += [(table, chunk) for table, chunks in buffered.tables.items() for chunk in chunks]
                self._publish_gauges()
        lost = 0
        for table, chunk in stuck:
            try:
                self._spool_chunk(table, chunk, "transient: destination did not answer before shutdown", 0)
            except DeadLetterFull:
                lost += len(chunk)
        try:
            self.flush(deadline=started + budget * 0.75)
        except DeadLetterFull:
            with self._lock:  # flush() put back what neither the destination nor the dead letter took
                lost += self._buffer.rows
                self._buffer = self._empty_buffer()
        if lost:
            metrics.DROPPED.labels(self.name, "dead_letter_full").inc(lost)
            log.error("%s: %d rows lost at shutdown: the destination failed and the dead letter is full", self.name, lost)
        self.sink.close()

    # -- sync ---------------------------------------------------------------------------
    def _write_now(self, batch: RowBatch, started: float) -> WriteResult:
        inserted = failed = 0
        errors: list[str] = []
        deadline = started + self.timeout * 0.8  # leave time to spool before dispatch() gives up on us
        for table in batch.tables:
            chunk = _Chunk()
            chunk.add(self._items(batch, table))
            written, error = self._deliver(table, chunk, deadline)
            inserted += written
            if error:
                failed += len(chunk)
                errors.append(error)
        duration = (time.monotonic() - started) * 1000
        if errors:
            # The rows are safe in the dead letter (or _deliver raised): the SDK need not retry.
            return WriteResult(self.name, "queued", inserted, failed, duration, errors[0])
        return WriteResult(self.name, "success", inserted, 0, duration)

    # -- batch --------------------------------------------------------------------------
    def _enqueue(self, batch: RowBatch, started: float) -> WriteResult:
        self._ensure_flusher()
        spill: list[tuple[str, list[Any]]] = []
        queued = 0
        now = self.clock()
        sized = [
            (table, self._items(batch, table), sum(len(line) + 1 for _, line in batch.lines(table))) for table in batch.tables
        ]
        with self._lock:
            for table, rows, size in sized:
                if self._buffer.bytes + size > self.config.max_buffer_bytes:
                    spill.append((table, rows))
                    continue
                self._buffer.add(table, rows, size, now)
                queued += len(rows)
            # Flush early when the buffer is half full, so spilling is only for a destination that is down.
            pressure = min(self.config.max_bytes, self.config.max_buffer_bytes // 2)
            full = self._buffer.rows >= self.config.max_records or self._buffer.bytes >= pressure
            self._publish_gauges()
        if full:
            self._wake.set()
        for table, rows in spill:
            # The destination is not keeping up: spill rather than grow (raises DeadLetterFull -> 503).
            self._spool(table, rows, "buffer_full", 0)
        duration = (time.monotonic() - started) * 1000
        return WriteResult(self.name, "queued", queued, 0, duration, "buffer full: spooled" if spill else None)

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            with self._lock:
                if (self._flusher is None or not self._flusher.is_alive()) and not self._stop.is_set():
                    self._flusher = threading.Thread(target=self._run, name=f"flush-{self.name}", daemon=True)
                    self._flusher.start()

    def _run(self) -> None:
        tick = min(self.config.max_seconds / 4, 0.5)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            try:
                if self._due():
                    self.flush()
                with self._lock:
                    self._publish_gauges()
            except DeadLetterFull as exc:
                log.warning("%s: rows stay buffered: the destination failed and the dead letter is full (%s)", self.name, exc)
                time.sleep(tick)
            except Exception:  # noqa: BLE001 - the flusher must outlive any one failure
                log.exception("flusher for %s failed; continuing", self.name)
                time.sleep(tick)

    def _due(self) -> bool:
        with self._lock:
            buffer = self._buffer
            if buffer.oldest is None:
                return False
            return (
                buffer.rows >= self.config.max_records
                or buffer.bytes >= min(self.config.max_bytes, self.config.max_buffer_bytes // 2)
                or self.clock() - buffer.oldest >= self.config.max_seconds
            )

    def flush(self, deadline: float | None = None) -> int:
        """Write everything buffered now (before `deadline`, else spool it). Returns rows written."""
        with self._lock:
            buffer, self._buffer = self._buffer, self._empty_buffer()
            self._publish_gauges()
        written = 0
        pending = [(table, chunk) for table, chunks in buffer.tables.items() for chunk in chunks]
        for index, (table, chunk) in enumerate(pending):
            with self._lock:
                self._inflight[id(chunk)] = (table, chunk)
            try:
                count, _error = self._deliver(table, chunk, deadline, key=id(chunk))
            except DeadLetterFull:
                # Neither the destination nor the dead letter took these rows: keep them, and the rest,
                # for the next flush. Meanwhile requests spill, cannot spool either and are answered 503,
                # so the buffer stays bounded. (Pieces of a chunk spooled before the spool filled up are
                # sent again later: at least once, as everywhere.)
                self._requeue(pending[index:], buffer.oldest)
                raise
            finally:
                with self._lock:
                    self._inflight.pop(id(chunk), None)
            written += count
        return written

    def _requeue(self, chunks: list[tuple[str, Chunk]], oldest: float | None) -> None:
        with self._lock:
            front: dict[str, list[Chunk]] = {}
            for table, chunk in chunks:
                front.setdefault(table, []).append(chunk)
                self._buffer.rows += len(chunk)
                self._buffer.bytes += chunk.nbytes
            for table, kept in front.items():
                self._buffer.tables[table] = kept + self._buffer.tables.get(table, [])
            if oldest is not None:
                self._buffer.oldest = min(oldest, self._buffer.oldest or oldest)
            self._publish_gauges()

    def _empty_buffer(self) -> _Buffer:
        return _Buffer(self._new_chunk, self.config.max_records)

    def _items(self, batch: RowBatch, table: str) -> list[Any]:
        return batch.lines(table) if self._encoded else batch.tables[table]

    def _deliver(self, table: str, chunk: Chunk, deadline: float | None = None, key: int | None = None) -> tuple[int, str | None]:
        """Write with retries; on failure dead-letter. Raises DeadLetterFull if even that fails.
        A draining flush (with a deadline) keeps retrying until the deadline; otherwise
        stopping cuts the retries short so shutdown is not held up by a dead destination."""
        started = time.monotonic()
        stop = None if deadline is not None else self._stop

        def write() -> int:
            self.setup()  # single-flight, once per process; a failure here is retried like a write
            # A plain chunk hands over its list; a sink's own chunk (a lake's PackedRows) goes as it is.
            payload = chunk.items if isinstance(chunk, _Chunk) else chunk
            return self.sink.write_lines(table, payload) if self._encoded else self.sink.write_rows(table, payload)

        written, error, attempts = deliver_with_retries(self.name, write, self.config, stop, deadline, self.timeout)
        metrics.FLUSH_SECONDS.labels(self.name).observe(time.monotonic() - started)
        if error is None:
            metrics.FLUSHES.labels(self.name, "ok").inc()
            metrics.ROWS_OUT.labels(self.name).inc(written)
            return written, None
        metrics.FLUSHES.labels(self.name, "failed").inc()
        log.warning(
            "%s: %d rows to %s failed after %d attempts (%s); dead-lettering", self.name, len(chunk), table, attempts, error
        )
        with self._lock:
            taken_over = key is not None and key not in self._inflight
        if not taken_over:  # else a drain already spooled this chunk while we were stuck
            self._spool_chunk(table, chunk, error, attempts)
        return 0, error

    def _spool_chunk(self, table: str, chunk: Chunk, reason: str, attempts: int) -> None:
        # A packed chunk is inflated and spooled a piece at a time, never all at once.
        for piece in chunk.pieces():
            self._spool(table, piece, reason, attempts)

    def _spool(self, table: str, rows: list[Any], reason: str, attempts: int) -> None:
        self.dead_letter.put(self.name, table, rows, reason, attempts, encoded=self._encoded)
        metrics.DEAD_LETTERED.labels(self.name, reason.split(":", 1)[0]).inc(len(rows))

    def _count(self, batch: RowBatch, records: int) -> None:
        metrics.RECORDS_IN.labels(self.name).inc(records)
        for reason, count in batch.dropped.items():
            metrics.DROPPED.labels(self.name, reason).inc(count)
        for column, count in batch.cast_failures.items():
            metrics.CAST_FAILURES.labels(column).inc(count)

    def _publish_gauges(self) -> None:
        buffer = self._buffer
        metrics.BUFFER_ROWS.labels(self.name).set(buffer.rows)
        metrics.BUFFER_BYTES.labels(self.name).set(buffer.bytes)
        metrics.OLDEST_AGE.labels(self.name).set(0 if buffer.oldest is None else self.clock() - buffer.oldest)


__all__ = ["DeadLetterFull", "DeliveryConfig", "RowDestination", "RowSink", "deliver_with_retries"]
