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

With the write-ahead buffer (BUFFER=disk, destinations/wal) each request's rows are
already in a segment file when they reach `write`, and `ingest.ticket` says where. The
buffer remembers, per chunk, which records of which segments it holds; once a chunk is
written or dead-lettered those rows are acknowledged to the log, which deletes a segment
when every buffered destination has acknowledged everything in it. `refusal()` is the
admission check the request path makes before anything is dispatched.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from core import green, metrics
from core.records import Ingest, Kind
from core.retry import PermanentError, RetriesExhausted, RetryPolicy, short_error
from core.settings import Settings
from destinations.base import Capabilities, Chunk, RowSink, SinkResult, WriteResult
from destinations.deadletter import DeadLetter, DeadLetterFull
from destinations.rows import RowBatch, dumps_row, hour_of, line_of, to_rows
from destinations.schema import TableSchema

log = logging.getLogger(__name__)
# /health asks whether a request of about this size would be refused (a 50-event browser batch).
READINESS_PROBE_BYTES = 64 * 1024
# How stale the buffer gauges (rows, bytes, oldest age) may be between flushes.
GAUGE_SECONDS = 1.0
# A buffer spilled at once goes to the dead letter in files of about this many encoded bytes.
SPILL_FILE_BYTES = 8 * 1024 * 1024
# A full buffer whose flush has finished no chunk for this long (nor begun) spills: the
# destination is stuck (or retrying). While chunks keep finishing, a request waits for room instead.
STALL_SECONDS = 1.0
# The longest a request waits for room in a buffer whose flush is making progress.
ROOM_WAIT_SECONDS = 5.0

# This process's id, kept current across forks: every request asks whether its flusher runs
# in this process, and os.getpid() is a system call each time (glibc stopped caching it).
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


@dataclass(frozen=True)
class DeliveryConfig:
    mode: str = "batch"
    # Large by default so that, for lakes, the timer decides: one object per interval, not per request.
    max_records: int = 500_000
    max_bytes: int = 32 * 1024 * 1024
    max_seconds: float = 10.0
    max_buffer_bytes: int = 64 * 1024 * 1024
    retry: RetryPolicy = RetryPolicy()
    # Seconds one attempt may take: the sink's own default unless <NAME>_ATTEMPT_TIMEOUT_SECONDS is set.
    attempt_timeout: float = Capabilities.attempt_timeout
    # The least time between flushes (the sink's quota), see Capabilities.min_flush_seconds.
    min_flush_seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, name: str, capabilities: Capabilities | None = None) -> DeliveryConfig:
        def pick(key: str, getter: Callable[..., Any], default: Any, minimum: float) -> Any:
            return getter(f"{name}_{key}", getter(key, default, minimum), minimum)

        caps = capabilities or Capabilities()
        max_records = pick("batch_max_records", settings.get_int, cls.max_records, 1)
        attempt_timeout = settings.get_float(f"{name}_attempt_timeout_seconds", caps.attempt_timeout, 0.1)
        retry = RetryPolicy(
            max_attempts=pick("retry_max_attempts", settings.get_int, RetryPolicy.max_attempts, 1),
            # By default one attempt may use its whole timeout (a load job runs for minutes).
            max_seconds=pick("retry_max_seconds", settings.get_float, max(RetryPolicy.max_seconds, attempt_timeout), 0),
            base_seconds=pick("retry_base_seconds", settings.get_float, RetryPolicy.base_seconds, 0),
        )
        return cls(
            mode=settings.delivery_mode(name),
            max_records=max_records,
            max_bytes=pick("batch_max_bytes", settings.get_int, cls.max_bytes, 1),
            max_seconds=max(pick("batch_max_seconds", settings.get_float, cls.max_seconds, 0.05), caps.min_flush_seconds),
            max_buffer_bytes=pick("max_buffer_bytes", settings.get_int, cls.max_buffer_bytes, 1024),
            retry=retry,
            attempt_timeout=attempt_timeout,
            min_flush_seconds=caps.min_flush_seconds,
        )


@dataclass
class DestinationState:
    """What /health reports for one destination: ok, retrying, dead_lettering or buffer_full,
    with the last error, when things last went right and wrong, and counts. Per process.
    A failing state lasts until the next successful write (in batch mode, the next flush):
    `ok` means the last attempt to deliver succeeded, or nothing has been attempted yet."""

    state: str = "ok"
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    retries: int = 0
    written_rows: int = 0
    dead_lettered_rows: int = 0
    rejected_rows: int = 0

    def as_dict(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "written_rows": self.written_rows,
            "dead_lettered_rows": self.dead_lettered_rows,
            "rejected_rows": self.rejected_rows,
            "retries": self.retries,
        }
        if self.last_error:
            out["last_error"] = self.last_error
            out["last_error_age_seconds"] = round(now - (self.last_error_at or now), 1)
        if self.last_success_at is not None:
            out["last_success_age_seconds"] = round(now - self.last_success_at, 1)
        return out


# Rows of one request in the write-ahead buffer: (ticket, table, first row, row count).
Origin = tuple[Any, str, int, int]


class _Buffer:
    """Rows waiting for one destination: per table, a list of chunks, each delivered by one
    write and sized to what the sink can take. Not thread-safe: the owner locks.

    With `origins`, it records for each chunk which rows of which write-ahead records it
    took (keyed by the chunk's id; the entry keeps the chunk alive, so ids stay unique)."""

    def __init__(self, new_chunk: Callable[[], Chunk], origins: dict[int, tuple[Chunk, list[Origin]]] | None = None) -> None:
        self.new_chunk = new_chunk
        self.origins = origins
        self.tables: dict[str, list[Chunk]] = {}
        self.rows = 0
        self.bytes = 0
        self.oldest: float | None = None

    def add(self, table: str, items: list[Any], size: int, now: float, ticket: Any = None, first: int = 0) -> None:
        """Append `items` (`size` bytes encoded) to the table's open chunk, opening new ones as
        chunks fill. Memory is what each chunk reports: packed chunks count the compressed
        bytes they hold, plain ones the share of `size` they took."""
        chunks = self.tables.setdefault(table, [])
        start = 0
        while start < len(items):
            if not chunks or chunks[-1].full:
                chunks.append(self.new_chunk())
            chunk = chunks[-1]
            before = chunk.nbytes
            piece = items[start:] if start else items
            taken = chunk.add(piece, size * len(piece) // len(items))
            if not taken:  # the next row does not fit: a fresh chunk always takes one
                chunks.append(self.new_chunk())
                continue
            self.bytes += chunk.nbytes - before
            if ticket is not None and self.origins is not None:
                self.origins.setdefault(id(chunk), (chunk, []))[1].append((ticket, table, first + start, taken))
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
        self.capabilities = sink.capabilities
        self.needs_rows = self.capabilities.takes != "records"
        self.schemas = schemas
        self.config = config
        self.dead_letter = dead_letter
        self.timeout = timeout
        self.clock = clock
        self.state = DestinationState()
        self._lock = threading.Lock()
        # Chunks a flush is delivering right now, so a drain can spool them if it is stuck.
        self._inflight: dict[int, tuple[str, Chunk]] = {}
        # Bytes of the chunks flushes have taken out of the buffer and not yet finished (they
        # count against MAX_BUFFER_BYTES too), and when a flush last began or finished a chunk.
        self._flushing_bytes = 0
        self._progress_at = time.monotonic()
        self._room = threading.Condition(self._lock)
        self._chunk_rows = min(config.max_records, self.capabilities.max_rows)
        self._chunk_bytes = min(config.max_bytes, self.capabilities.max_bytes)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._flusher_pid: int | None = None  # the process whose flusher runs
        self._records_in = metrics.RECORDS_IN.labels(self.name)  # counted on every request
        self._backpressure = (metrics.BACKPRESSURE_WAITS.labels(self.name), metrics.BACKPRESSURE_SECONDS.labels(self.name))
        self._setup_lock = threading.Lock()
        self._setup_done = False
        self._last_flush = -float("inf")
        # Who is using the sink right now (flushes, write-throughs, redelivery). close() releases
        # the sink only once none is: see _sink_in_use().
        self._users = 0
        self._closing = False
        # The write-ahead log (destinations/wal) when BUFFER=disk, set by attach().
        self.wal: Any = None
        self._origins: dict[int, tuple[Chunk, list[Origin]]] = {}
        self._buffer = self._empty_buffer()
        # A flush found neither the destination nor the dead letter taking rows.
        self._stalled = False
        self._gauges_at = -float("inf")

    # -- the Destination contract ------------------------------------------------------
    def write(self, ingest: Ingest) -> WriteResult:
        started = time.monotonic()
        tables = self._tables(ingest)
        ticket = ingest.ticket if self.wal is not None else None
        if self.config.mode == "sync" or self._stop.is_set():
            # Once draining has begun nobody will flush a buffer again: late requests write through.
            result = self._write_now(tables, started)
            if ticket is not None:  # written (or spooled) before the reply: nothing to recover
                self._settle([(ticket, table, 0, len(items)) for table, items, _size in tables])
            return result
        return self._enqueue([(table, items, size, ticket, 0) for table, items, size in tables], started)

    @property
    def waits_on_io(self) -> bool:
        """Batch delivery only buffers; sync delivery, and writes once draining began, go out now."""
        return self.config.mode == "sync" or self._stop.is_set()

    def attach(self, wal: Any) -> None:
        """Buffer rows against the write-ahead log: hold them per record, acknowledge them
        once delivered (see destinations/wal)."""
        self.wal = wal

    def recover(self, entries: list[tuple[str, list[Any], int, Any, int]]) -> None:
        """Buffer rows read back from a segment a stopped process left: (table, items,
        encoded bytes, ticket, index of the first item within its record). Never spilled:
        the recovery waits for room before it hands rows over."""
        self._enqueue(entries, time.monotonic(), spill=False)

    def backlog(self) -> int:
        """Bytes waiting in this destination's buffer."""
        with self._lock:
            return self._buffer.bytes

    def refusal(self, size: int) -> str | None:
        """Why a request bringing `size` more bytes cannot be accepted now, or None.
        Rows must be kept somewhere: in the buffer while it has room and the destination
        works (or, with the write-ahead buffer, on disk anyway); otherwise in the dead letter,
        which must then have room for them, and, without a disk buffer, for everything the
        failing destination still holds in memory."""
        if self.config.mode == "sync" or self._stop.is_set():
            return None
        # Every request asks: the common answer needs one read, no lock and no sum over flushes.
        fits = self._buffer.bytes + size <= self.config.max_buffer_bytes
        failing = self._stalled or self.state.state in ("retrying", "dead_lettering")
        if fits and (self.wal is not None or not failing):
            return None
        with self._lock:
            buffered = self._buffer.bytes
            flushing = sum(chunk.nbytes for _table, chunk in self._inflight.values())
        refused = f"{self.name} cannot keep more rows: the destination is failing and the dead letter is full"
        if self.wal is None and self._stalled:
            return refused  # a flush already found the dead letter full: memory is all these rows have
        need = buffered + flushing + size if self.wal is None and failing else size
        room = self.dead_letter.room()
        return None if room is None or room >= need else refused

    @contextmanager
    def _sink_in_use(self) -> Iterator[None]:
        """Hold the sink open while it is used. A drain runs beside the requests still in flight
        (proxy/worker.py), and those write through: closing the sink under one of them would fail
        its write half-way (a stopped Pub/Sub publisher, a closed channel) after the drain was
        done. So close() only marks the sink for release, and the last user releases it. A write
        that comes later still opens its client again (sinks open clients lazily) and releases it
        when it is done."""
        with self._lock:
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                release = self._closing and self._users == 0
            if release:
                self._release_sink()

    def _release_sink(self) -> None:
        try:
            self.sink.close()
        except Exception as exc:  # noqa: BLE001 - releasing clients must not fail a write or a shutdown
            log.warning("%s: closing the sink failed: %s", self.name, short_error(exc))

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
        now = time.time()
        info = {"mode": self.config.mode, "buffered_rows": depth, "buffered_bytes": size, **self.state.as_dict(now)}
        refusal = self.refusal(READINESS_PROBE_BYTES)  # would a typical request be refused now?
        info["ready"] = refusal is None
        if refusal:
            info["refusing"] = refusal
        if self._stalled:
            info["state"] = "stalled"
        if oldest is not None:
            info["oldest_unflushed_seconds"] = round(self.clock() - oldest, 3)
        info.update(self.sink.health())
        return info

    def redeliver(self, table: str, rows: list[Any]) -> int:
        """Write rows back from the dead letter, split to the sink's limits; raise on failure.
        The dead letter gives them back decoded: they are encoded again for the chunks."""
        lines = [dumps_row(r) for r in rows]
        items: list[Any] = lines
        if self.capabilities.takes == "lines":
            items = [(hour_of(r), line) for r, line in zip(rows, lines, strict=True)]
        buffer = self._empty_buffer()
        buffer.add(table, items, sum(len(line) + 1 for line in lines), 0)
        written = 0
        with self._sink_in_use():
            for chunk in buffer.tables.get(table, []):
                result = self.config.retry.run(
                    lambda c=chunk: self._attempt(table, c), attempt_timeout=self.config.attempt_timeout
                )
                if result.rejected:
                    self._spool_rejected(table, chunk, result, 0)
                written += result.written
        return written

    def close(self, timeout: float | None = None) -> None:
        """Stop the flusher and drain within `timeout`: write what we can, spool the rest.
        A flusher stuck on a destination that does not answer gets half the time; the rows it
        holds are then spooled (at least once: if it later succeeds, replay re-sends them), and
        so is the rest of the buffer, without waiting on that destination again. Otherwise the
        buffer is written with a quarter of the time held back for spooling what fails: a
        drain that overruns `timeout` is killed by gunicorn, and what it held is lost."""
        budget = timeout if timeout is not None else self.config.retry.max_seconds
        started = time.monotonic()
        self._stop.set()
        self._wake.set()
        with self._lock:  # requests waiting for room write through now (see _enqueue)
            self._room.notify_all()
        if self._flusher is not None:
            self._flusher.join(budget / 2)
        with self._lock:
            stuck = list(self._inflight.values())
            self._inflight.clear()
            if stuck:
                buffered, self._buffer = self._buffer, self._empty_buffer()
                stuck += [(table, chunk) for table, chunks in buffered.tables.items() for chunk in chunks]
                self._publish_gauges()
        left: list[Chunk] = []
        for table, chunk in stuck:
            try:
                self._spool_chunk(table, chunk, "transient: destination did not answer before shutdown", 0)
            except DeadLetterFull:
                left.append(chunk)
            else:
                self._acknowledge(chunk)
        try:
            self.flush(deadline=started + budget * 0.75)
        except DeadLetterFull:
            with self._lock:  # flush() put back what neither the destination nor the dead letter took
                left += [chunk for chunks in self._buffer.tables.values() for chunk in chunks]
                self._buffer = self._empty_buffer()
        self._report_left(left)
        with self._lock:
            self._closing = True
            release = self._users == 0
        if release:  # else the last write still using the sink releases it
            self._release_sink()

    def _report_left(self, chunks: list[Chunk]) -> None:
        """Rows neither written nor dead-lettered at shutdown: kept on disk with the write-ahead
        buffer (the next process delivers them), otherwise lost, and counted."""
        with self._lock:
            kept = sum(len(chunk) for chunk in chunks if id(chunk) in self._origins)
        lost = sum(len(chunk) for chunk in chunks) - kept
        if kept:
            log.warning(
                "%s: %d rows not delivered at shutdown (the destination failed and the dead letter is full) stay in "
                "the write-ahead buffer for the next start",
                self.name,
                kept,
            )
        if lost:
            metrics.DROPPED.labels(self.name, "dead_letter_full").inc(lost)
            log.error("%s: %d rows lost at shutdown: the destination failed and the dead letter is full", self.name, lost)

    # -- what a request hands over ------------------------------------------------------
    def _tables(self, ingest: Ingest) -> list[tuple[str, list[Any], int]]:
        """[(table, encoded items, their bytes)] as the sink's chunks take them (see Chunk),
        counted on the way in."""
        self._records_in.inc(len(ingest.records))
        if self.capabilities.takes == "records":
            lines = ingest.record_lines  # encoded once per request (proxy/runtime.py)
            records = list(lines) if lines is not None else [dumps_row(r.payload) for r in ingest.records]
            return [(ingest.endpoint, records, sum(len(line) + 1 for line in records))] if records else []
        batch: RowBatch = ingest.rows if ingest.rows is not None else to_rows(ingest.records, self.schemas)
        for reason, count in batch.dropped.items():
            metrics.DROPPED.labels(self.name, reason).inc(count)
        for column, count in batch.cast_failures.items():
            metrics.CAST_FAILURES.labels(column).inc(count)
        out = []
        for table in batch.tables:
            lines = batch.lines(table)  # encoded once per request, shared by every row destination
            items = lines if self.capabilities.takes == "lines" else list(map(line_of, lines))
            out.append((table, items, batch.encoded_bytes(table)))
        return out

    # -- sync ---------------------------------------------------------------------------
    def _write_now(self, tables: list[tuple[str, list[Any], int]], started: float) -> WriteResult:
        inserted = failed = 0
        errors: list[str] = []
        deadline = started + self.timeout * 0.8  # leave time to spool before dispatch() gives up on us
        buffer = self._empty_buffer()
        for table, items, size in tables:
            buffer.add(table, items, size, 0)
        with self._sink_in_use():
            for table, chunks in buffer.tables.items():
                for chunk in chunks:
                    written, error = self._deliver(table, chunk, deadline)
                    inserted += written
                    if error:
                        failed += len(chunk) - written
                        errors.append(error)
        duration = (time.monotonic() - started) * 1000
        if errors:
            # The rows are safe in the dead letter (or _deliver raised): the SDK need not retry.
            return WriteResult(self.name, "queued", inserted, failed, duration, errors[0])
        return WriteResult(self.name, "success", inserted, 0, duration)

    # -- batch --------------------------------------------------------------------------
    def _enqueue(self, entries: list[tuple[str, list[Any], int, Any, int]], started: float, spill: bool = True) -> WriteResult:
        """Buffer (table, items, encoded bytes, write-ahead ticket or None, first item's index
        within its record) entries, spilling to the dead letter what does not fit."""
        self._ensure_flusher()
        spilled: list[tuple[str, list[Any], Any, int]] = []
        evicted: _Buffer | None = None
        queued = 0
        now = self.clock()
        with self._lock:
            incoming = sum(size for _table, _items, size, _ticket, _first in entries)
            if spill and not self._stop.is_set():
                evicted = self._make_room(incoming)
            # The drain may have begun while this request waited for the lock (or for room):
            # nobody will flush the buffer again, so write through (see write()).
            late = self._stop.is_set()
            for table, items, size, ticket, first in [] if late else entries:
                if spill and self._buffer.bytes + size > self.config.max_buffer_bytes:
                    spilled.append((table, items, ticket, first))
                    continue
                self._buffer.add(table, items, size, now, ticket, first)
                if ticket is not None:
                    self.wal.hold([(ticket, len(items))])
                queued += len(items)
            # Flush early when the buffer is half full, so spilling is only for a destination that is down.
            pressure = min(self.config.max_bytes, self.config.max_buffer_bytes // 2)
            full = self._buffer.rows >= self.config.max_records or self._buffer.bytes >= pressure
            self._publish_gauges(now)
        if evicted is not None:
            self._evict(evicted)
        if late:
            result = self._write_now([(table, items, size) for table, items, size, _ticket, _first in entries], started)
            written = [(ticket, table, first, len(items)) for table, items, _size, ticket, first in entries if ticket is not None]
            if written:  # written (or spooled) before the reply, as in write()
                self._settle(written)
            return result
        if full:
            self._wake.set()
        for table, items, ticket, first in spilled:
            # The destination is not keeping up: spill rather than grow (raises DeadLetterFull -> 503).
            self.state.state = "buffer_full"
            self._spool(table, items, "buffer_full", 0)
            if ticket is not None:
                self._settle([(ticket, table, first, len(items))])
        duration = (time.monotonic() - started) * 1000
        return WriteResult(self.name, "queued", queued, 0, duration, "buffer full: spooled" if spilled else None)

    def _make_room(self, incoming: int) -> _Buffer | None:
        """With the lock held: when `incoming` more bytes do not fit beside what is buffered
        and what flushes hold, wait for room while flushes make progress: the proxy outruns
        a working destination, and slowing requests down is the backpressure. Once they stop
        making progress (the destination hangs, fails or is held by its quota), stop waiting;
        if a flush is stuck with chunks out, take the whole buffer out to be spilled (returned)
        in one go: a few large dead-letter writes rather than a file, an fsync and a log line
        for every later request. What still does not fit then spills (see _enqueue)."""
        limit = self.config.max_buffer_bytes
        if incoming > limit:
            return None  # never fits: it spills on its own
        give_up = time.monotonic() + ROOM_WAIT_SECONDS
        waiting_since: float | None = None
        try:
            while self._buffer.bytes + self._flushing_bytes + incoming > limit and not self._stop.is_set():
                now = time.monotonic()
                if now - self._progress_at >= STALL_SECONDS or now >= give_up:
                    if self._inflight and self._buffer.rows:
                        evicted, self._buffer = self._buffer, self._empty_buffer()
                        return evicted
                    return None
                if waiting_since is None:
                    waiting_since = now
                self._wake.set()  # the flusher takes the buffer as soon as it runs
                self._room.wait(min(STALL_SECONDS, give_up - now))
            return None
        finally:
            if waiting_since is not None:  # in /metrics: replies slowed by a destination that does not keep up
                waits, seconds = self._backpressure
                waits.inc()
                seconds.inc(time.monotonic() - waiting_since)

    def _evict(self, evicted: _Buffer) -> None:
        """Dead-letter a whole buffer taken out because its destination does not keep up, in
        files of about SPILL_FILE_BYTES (not one per chunk: Mixpanel's hold 50 rows). If the
        dead letter cannot take it, what is left goes back into the buffer (and the request
        that found the buffer full is answered 503)."""
        self.state.state = "buffer_full"
        pending = [(table, chunk) for table, chunks in evicted.tables.items() for chunk in chunks]
        log.warning(
            "%s: buffer full while a flush is still out (the destination does not keep up); spilling %d buffered "
            "rows to the dead letter",
            self.name,
            evicted.rows,
        )
        items: list[Any] = []
        size = 0
        done = 0  # pending[:done] are spooled and acknowledged
        try:
            for index, (table, chunk) in enumerate(pending):
                for piece in chunk.pieces():
                    items += piece
                    size += sum(len(item) if isinstance(item, bytes) else len(item[1]) for item in piece)
                    if size >= SPILL_FILE_BYTES:
                        self._spool(table, items, "buffer_full", 0)
                        items, size = [], 0
                last = index + 1 == len(pending) or pending[index + 1][0] != table
                if items and last:
                    self._spool(table, items, "buffer_full", 0)
                    items, size = [], 0
                if not items:  # every row up to this chunk is in the dead letter
                    for _table, spooled in pending[done : index + 1]:
                        self._acknowledge(spooled)
                    done = index + 1
        except DeadLetterFull:
            self._requeue(pending[done:], evicted.oldest)
            raise

    def _settle(self, pieces: list[Origin]) -> None:
        """Rows of write-ahead records that were taken at once (written in the request, or spilled)."""
        self.wal.hold([(ticket, count) for ticket, _table, _first, count in pieces])
        self.wal.ack(self.name, pieces)

    def _acknowledge(self, chunk: Chunk) -> None:
        """The chunk is written or dead-lettered: acknowledge its rows to the write-ahead log
        (once: a drain and a stuck flusher may both finish the same chunk)."""
        with self._lock:
            entry = self._origins.pop(id(chunk), None)
        if entry is not None and self.wal is not None:
            self.wal.ack(self.name, entry[1])

    def _ensure_flusher(self) -> None:
        # Every request asks: answered by a flag the flusher clears on its way out, not by
        # Thread.is_alive() (a lock round trip, under gevent about 2% of a small request).
        # The pid tells a flusher of this process from one a parent started before it forked.
        if self._flusher_pid == _pid:
            return
        with self._lock:
            if self._flusher_pid != _pid and not self._stop.is_set():
                self._flusher = threading.Thread(target=self._run, name=f"flush-{self.name}", daemon=True)
                self._flusher.start()
                self._flusher_pid = _pid

    def _run(self) -> None:
        try:
            self._flush_until_stopped()
        finally:
            self._flusher_pid = None

    def _flush_until_stopped(self) -> None:
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
                self._stalled = True
                log.warning("%s: rows stay buffered: the destination failed and the dead letter is full (%s)", self.name, exc)
                time.sleep(tick)
            except Exception:  # noqa: BLE001 - the flusher must outlive any one failure
                log.exception("flusher for %s failed; continuing", self.name)
                time.sleep(tick)

    def _due(self) -> bool:
        with self._lock:
            buffer = self._buffer
            if buffer.oldest is None or self.clock() - self._last_flush < self.config.min_flush_seconds:
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
            if buffer.oldest is not None:
                self._last_flush = self.clock()
            pending = [(table, chunk) for table, chunks in buffer.tables.items() for chunk in chunks]
            sizes = [chunk.nbytes for _table, chunk in pending]  # as counted now (a packed chunk shrinks when sealed)
            self._flushing_bytes += sum(sizes)
            if pending and self.state.state == "ok":  # a flush just begun on a working destination has not stalled yet
                self._progress_at = time.monotonic()
            self._publish_gauges()
        if not pending:
            return 0
        with self._sink_in_use():
            return self._flush_chunks(pending, sizes, buffer.oldest, deadline)

    def _flush_chunks(
        self, pending: list[tuple[str, Chunk]], sizes: list[int], oldest: float | None, deadline: float | None
    ) -> int:
        """Deliver `pending` chunks (of `sizes` bytes) in order, up to the sink's `concurrency`
        at once. Each finished chunk gives its bytes back to the buffer's bound."""
        written = 0
        undone = dict(enumerate(pending))  # in order; a chunk leaves once written or dead-lettered
        full: list[DeadLetterFull] = []

        def deliver(index: int) -> None:
            nonlocal written
            if full:
                return
            table, chunk = pending[index]
            with self._lock:
                self._inflight[id(chunk)] = (table, chunk)
            try:
                count, _error = self._deliver(table, chunk, deadline, key=id(chunk))
            except DeadLetterFull as exc:
                full.append(exc)
                return
            finally:
                with self._lock:
                    self._inflight.pop(id(chunk), None)
            self._acknowledge(chunk)
            del undone[index]
            written += count
            with self._lock:
                self._flushing_bytes -= sizes[index]
                if count or _error is None:  # rows reached the destination (dead-lettering is no progress)
                    self._progress_at = time.monotonic()
                self._room.notify_all()

        try:
            green.each(deliver, range(len(pending)), self.capabilities.concurrency)
        finally:
            with self._lock:  # what is still out goes back to the buffer (DeadLetterFull) or is gone
                self._flushing_bytes -= sum(sizes[index] for index in undone)
                self._room.notify_all()
        if full:
            # Neither the destination nor the dead letter took these rows: keep them, and the rest,
            # for the next flush. Meanwhile requests are refused (503, see refusal()), so the buffer
            # stays bounded. (Pieces of a chunk spooled before the spool filled up are sent again
            # later: at least once, as everywhere.)
            self._stalled = True
            self._requeue(list(undone.values()), oldest)
            raise full[0]
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
        return _Buffer(lambda: self.sink.new_chunk(self._chunk_rows, self._chunk_bytes), self._origins)

    # -- one chunk, retried, then dead-lettered -------------------------------------------
    def _attempt(self, table: str, chunk: Chunk) -> SinkResult:
        self.setup()  # single-flight, once per process; a failure here is retried like a write
        result = self.sink.write(table, chunk.payload())
        if result.written + len(result.rejected) != len(chunk):
            # A sink that cannot account for every row broke the contract: treat the write as
            # unknown rather than acknowledge rows that may not be stored.
            raise PermanentError(
                f"{self.name} reported {result.written} written and {len(result.rejected)} rejected of {len(chunk)} rows"
            )
        return result

    def _deliver(self, table: str, chunk: Chunk, deadline: float | None = None, key: int | None = None) -> tuple[int, str | None]:
        """Write with retries; on failure dead-letter. Raises DeadLetterFull if even that fails.
        A draining flush (with a deadline) keeps retrying until the deadline; otherwise
        stopping cuts the retries short so shutdown is not held up by a dead destination.
        Returns (rows written, the error that sent the rest to the dead letter)."""
        started = time.monotonic()
        should_stop = None if deadline is not None else self._stop.is_set

        def retrying(attempt: int, error: Exception) -> None:
            metrics.RETRIES.labels(self.name).inc()
            self.state.retries += 1
            self.state.state = "retrying"
            self._note_error(f"transient: {short_error(error)}")

        attempts = 0
        try:
            result = self.config.retry.run(
                lambda: self._attempt(table, chunk),
                deadline=deadline,
                attempt_timeout=self.config.attempt_timeout,
                should_stop=should_stop,
                on_retry=retrying,
            )
            error = None
        except PermanentError as exc:
            result, error, attempts = None, f"permanent: {short_error(exc)}", 1
        except RetriesExhausted as exc:
            result, error, attempts = None, f"transient: {short_error(exc.last)}", exc.attempts
        metrics.FLUSH_SECONDS.labels(self.name).observe(time.monotonic() - started)
        if result is not None:
            self._stalled = False
            metrics.FLUSHES.labels(self.name, "ok").inc()
            metrics.ROWS_OUT.labels(self.name).inc(result.written)
            self.state.written_rows += result.written
            self.state.last_success_at = time.time()
            self.state.state = "ok"
            if result.rejected:
                self._spool_rejected(table, chunk, result, 1)
                return result.written, result.rejected[0].reason
            return result.written, None
        metrics.FLUSHES.labels(self.name, "failed").inc()
        self.state.state = "dead_lettering"
        self._note_error(error)
        log.warning(
            "%s: %d rows to %s failed after %d attempts (%s); dead-lettering", self.name, len(chunk), table, attempts, error
        )
        with self._lock:
            taken_over = key is not None and key not in self._inflight
        if not taken_over:  # else a drain already spooled this chunk while we were stuck
            self._spool_chunk(table, chunk, error, attempts)
        self._stalled = False
        return 0, error

    def _note_error(self, error: str | None) -> None:
        self.state.last_error = error
        self.state.last_error_at = time.time()

    def _spool_rejected(self, table: str, chunk: Chunk, result: SinkResult, attempts: int) -> None:
        """Dead-letter exactly the rows the sink refused, each group with its own reason."""
        by_reason: dict[str, list[int]] = defaultdict(list)
        for rejection in result.rejected:
            by_reason[rejection.reason].append(rejection.index)
        for reason, indices in by_reason.items():
            self._spool(table, chunk.select(indices), f"rejected: {reason}", attempts)
        self.state.rejected_rows += len(result.rejected)
        self._note_error(f"rejected: {result.rejected[0].reason}")
        log.warning("%s: %d of %d rows to %s rejected; dead-lettered", self.name, len(result.rejected), len(chunk), table)

    def _spool_chunk(self, table: str, chunk: Chunk, reason: str, attempts: int) -> None:
        # A packed chunk is inflated and spooled a piece at a time, never all at once.
        for piece in chunk.pieces():
            self._spool(table, piece, reason, attempts)

    def _spool(self, table: str, items: list[Any], reason: str, attempts: int) -> None:
        self.dead_letter.put(self.name, table, items, reason, attempts, encoded=True)  # buffered items are encoded
        metrics.DEAD_LETTERED.labels(self.name, reason.split(":", 1)[0]).inc(len(items))
        self.state.dead_lettered_rows += len(items)

    def _publish_gauges(self, now: float | None = None) -> None:
        """The buffer gauges. With `now` (a request's enqueue), at most every GAUGE_SECONDS:
        in multiprocess mode each set is a write to a shared file, three per request
        otherwise. Flushes always publish, so an emptied buffer shows at once."""
        if now is not None:
            if now - self._gauges_at < GAUGE_SECONDS:
                return
            self._gauges_at = now
        buffer = self._buffer
        metrics.BUFFER_ROWS.labels(self.name).set(buffer.rows)
        metrics.BUFFER_BYTES.labels(self.name).set(buffer.bytes)
        metrics.OLDEST_AGE.labels(self.name).set(0 if buffer.oldest is None else self.clock() - buffer.oldest)


__all__ = ["DeadLetterFull", "DeliveryConfig", "DestinationState", "RowDestination"]
