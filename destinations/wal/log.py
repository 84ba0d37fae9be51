"""The write-ahead log of one worker process: appends, group fsync, acknowledgements, deletion.

Each worker owns a directory `BUFFER_DIR/<host>-<pid>-<random>/` for as long as it lives,
proved by an exclusive `flock` on `<dir>/lock` (released by the kernel however the process
ends, SIGKILL included). Requests append to the worker's active segment (`000001.seg`,
...), which is sealed and replaced at BUFFER_SEGMENT_BYTES, or once everything in it has
been delivered. Every row handed to a buffered destination is *held* against its
segment; the destination *acknowledges* it once it wrote the row or dead-lettered it (the
ack also goes to the segment's `.ack` file, see segments.py). A sealed segment with
nothing held and no request still in flight is deleted.

Durability (BUFFER_FSYNC): `never` answers once the frame is in the page cache (safe
against a killed process, not against a host crash); otherwise a syncer fsyncs the
segments written since its last round, and a request is answered only once a round
covering its frame has finished. With `always` rounds run back to back (group commit:
every request that arrived during one fsync shares the next); with an interval in ms a
round starts at most that often, so fewer fsyncs cost each reply up to that long.

The syncer is an OS thread (core/green.py `NativeThread`), not a greenlet: under load a
greenlet's timer or wake-up waits until every ready request has had its turn, which
stretched a 10 ms interval to 15-20 ms and left workers idle while their requests
waited (bench/wal_rounds.py). The thread keeps the interval on the clock, and fsync
releases the GIL. Appenders hand it a duplicate of each segment's descriptor through a
small native lock (`_sync_lock`), so the thread never touches the log's own lock. It
touches no gevent object either: it signals the worker's event loop (core/green.py
`Wakeup`), where a callback records the round's fsync time and wakes the waiting
requests: with one request per round, that took the thread's CPU per round from about
600 us (setting a gevent event and observing a prometheus histogram itself, gevent objects
used from a foreign thread) to 265-480 us (docs/buffer.md, "Cost").
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import green, metrics
from core.settings import ConfigError
from core.storage import MIN_FREE_BYTES, DiskFull, check_writable_dir, free_bytes, is_disk_full
from destinations.wal.segments import ACK_SUFFIX, SUFFIX, BufferFull, Piece, SegmentFile, ack_lines, ack_path, pack

log = logging.getLogger(__name__)
HOST = "".join(ch if ch.isalnum() else "-" for ch in socket.gethostname())[:40] or "host"
LOCK = "lock"
ADOPTED = "adopted"


@dataclass(frozen=True)
class BufferConfig:
    directory: str = "./buffer"
    fsync_ms: float | None = 10.0  # None: never; 0: always (group commit); else at most one fsync per that many ms
    max_bytes: int = 1 << 30
    segment_bytes: int = 8 << 20
    segment_seconds: float = 60.0
    scan_seconds: float = 1.0


class Segment:
    """One segment file (ours or adopted) and what still depends on it."""

    def __init__(self, seq: int, path: Path, size: int = 0, recovered: bool = False) -> None:
        self.seq = seq
        self.path = path
        self.file: SegmentFile | None = None
        self.size = size
        self.created = time.time()
        self.outstanding = 0  # rows held by destinations and not yet acknowledged
        self.pins = 0  # requests (or a recovery feed) still handing rows out
        self.sealed = recovered  # no more appends; deletable once nothing depends on it
        self.recovered = recovered
        self.deleted = False
        self.broken = False  # an fsync of it failed: its requests are answered 503
        self.ack_fd = -1


@dataclass(frozen=True, slots=True)
class Ticket:
    """Where one request's rows sit: a record of a segment, and the log position after it."""

    log: WriteAheadLog
    segment: Segment
    index: int
    position: int

    def release(self) -> None:
        self.log.release(self)


class WriteAheadLog:
    def __init__(self, config: BufferConfig) -> None:
        self.config = config
        self.root = Path(config.directory)
        self._lock = threading.Lock()
        self.segments: dict[int, Segment] = {}
        self._active: Segment | None = None
        self._seq = 0
        self.bytes = 0  # our segments (and adopted ones) on disk
        self.others = 0  # other workers' segments, as of the last scan
        self.written = 0  # log position: bytes appended since start
        self._dir_dirty = False  # a segment was created since the directory was last handed to the syncer
        self._refusing: str | None = None
        # Shared with the syncer thread, under _sync_lock only:
        self._sync_lock = green.native_lock()
        self._pending: dict[int, tuple[Segment, int]] = {}  # seq -> (segment, a dup of its fd) for the next round
        self._pending_dir = -1  # a dup of the directory's fd, when the next round must fsync it too
        self._target = 0  # log position after the last frame handed over
        self.synced = 0  # position every byte before which is fsynced
        self._round_done = threading.Event()  # set (and replaced) as each round ends, by _round_finished
        self._fsync_seconds: list[float] = []  # rounds' fsync durations, for the loop to observe
        self._wakeup: green.Wakeup | None = None  # made with the syncer, in the worker's loop thread
        self._wake = green.native_lock()  # released to wake a sleeping syncer
        self._wake.acquire()
        self._syncer_sleeping = False
        self._syncer: green.NativeThread | None = None
        self._closed = False
        self._ack_error_logged = False
        # Our directory under BUFFER_DIR: None only while the disk is too full to create it.
        self.home: Path | None = None
        self._lock_fd = self._dir_fd = -1
        if not self._open_home():
            self._refusing = "no_space"
            log.warning(
                "write-ahead buffer: BUFFER_DIR=%r is full; refusing requests (503) until space is freed",
                config.directory,
            )

    # -- the worker's own directory ---------------------------------------------------------
    def _open_home(self) -> bool:
        """Claim our directory; False if the disk is too full for it (tick() tries again once
        there is room: a worker started while the disk is full refuses requests rather than
        taking the whole server down). Raises ConfigError if BUFFER_DIR cannot be used at all."""
        try:
            check_writable_dir(self.config.directory, "buffer_dir")
            home, lock_fd = self._claim_home()
        except DiskFull:
            return False
        except OSError as exc:
            if is_disk_full(exc):
                return False
            raise ConfigError(f"BUFFER_DIR={self.config.directory!r} cannot be used: {exc.strerror or exc}") from None
        dir_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        with self._lock:
            self.home, self._lock_fd, self._dir_fd = home, lock_fd, dir_fd
        return True

    def _claim_home(self) -> tuple[Path, int]:
        """Create our directory under a temporary name, lock it, then rename it into view:
        a directory another worker can see always has a held (or released) lock."""
        name = f"{HOST}-{os.getpid()}-{secrets.token_hex(3)}"
        staging = self.root / f".new-{name}"
        staging.mkdir()
        fd = os.open(staging / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:  # a file system without flock: owners are then told apart by pid
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        os.rename(staging, self.root / name)
        return self.root / name, fd

    def _open_segment(self) -> Segment:
        if self.home is None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._seq += 1
        path = self.home / f"{self._seq:06d}{SUFFIX}"
        segment = Segment(self._seq, path)
        segment.file = SegmentFile(path)
        self.segments[segment.seq] = segment
        self._dir_dirty = True
        return segment

    def adopt(self, path: Path) -> Segment:
        """Register a segment a stopped process left (already moved under our directory)."""
        with self._lock:
            self._seq += 1
            segment = Segment(self._seq, path, path.stat().st_size, recovered=True)
            segment.created = path.stat().st_mtime
            self.segments[segment.seq] = segment
            self.bytes += segment.size
            return segment

    # -- appending ---------------------------------------------------------------------------
    def append(self, payload: bytes) -> Ticket:
        """Write one request's payload to the active segment; raise BufferFull if it cannot be
        kept. The returned ticket pins the segment until `release()`."""
        packed = pack(payload)  # compressed before taking the lock
        need = packed.frame_size
        with self._lock:
            if self._closed:
                raise BufferFull("the write-ahead buffer is shutting down", "closing")
            if self.bytes + self.others + need > self.config.max_bytes:
                self._refusing = "buffer_full"
                raise BufferFull(f"the write-ahead buffer is full (BUFFER_MAX_BYTES={self.config.max_bytes})")
            segment = self._active
            try:
                if segment is None or segment.broken or self._due_for_rotation(segment, need):
                    if segment is not None:
                        self._active = None
                        self._seal(segment)
                    segment = None
                    segment = self._active = self._open_segment()
                assert segment.file is not None
                index, size = segment.file.append(packed)
            except OSError as exc:
                # SegmentFile.append cut the file back: the segment stays usable once writes work again.
                reason = "no_space" if is_disk_full(exc) else "write_error"
                self._refusing = reason
                raise BufferFull(f"cannot write to BUFFER_DIR: {exc.strerror or exc}", reason) from None
            segment.size += size
            self.bytes += size
            self.written += size
            segment.pins += 1
            self._refusing = None
            if self.config.fsync_ms is not None:
                self._hand_to_syncer(segment)
            ticket = Ticket(self, segment, index, self.written)
        if self.config.fsync_ms is not None:
            self._ensure_syncer()
        return ticket

    def _due_for_rotation(self, segment: Segment, need: int) -> bool:
        if segment.size == 0:
            return False
        return segment.size + need > self.config.segment_bytes or time.time() - segment.created > self.config.segment_seconds

    def _seal(self, segment: Segment) -> None:
        """No more appends; close the file (the syncer fsyncs its own duplicate of it)."""
        segment.sealed = True
        if segment.file is not None:
            segment.file.close()
            segment.file = None
        self._maybe_delete(segment)

    # -- durability ------------------------------------------------------------------------------
    def _hand_to_syncer(self, segment: Segment) -> None:
        """Make the next round cover everything appended so far (called under self._lock)."""
        assert segment.file is not None
        with self._sync_lock:
            if segment.seq not in self._pending:
                self._pending[segment.seq] = (segment, os.dup(segment.file.fd))
            if self._dir_dirty and self._pending_dir < 0:
                self._pending_dir = os.dup(self._dir_fd)  # a new segment's name must survive a crash too
            self._dir_dirty = False
            self._target = self.written
            self._wake_syncer()

    def _wake_syncer(self) -> None:
        """(under self._sync_lock) `_wake` is held except between a release and the syncer's
        next acquire; one that timed out just before a release finds it free on its next
        sleep and goes round once more, so a free lock already means "awake"."""
        if self._syncer_sleeping:
            self._syncer_sleeping = False
            if self._wake.locked():
                self._wake.release()

    def wait_durable(self, ticket: Ticket) -> None:
        """Return once the ticket's frame is as durable as BUFFER_FSYNC asks; raise BufferFull
        if its fsync failed."""
        if self.config.fsync_ms is None:
            return
        while True:
            with self._sync_lock:
                if self.synced >= ticket.position or ticket.segment.broken:
                    break
                done = self._round_done
            if self._wakeup is not None and self._wakeup.in_loop:
                # Set by the loop after every round, and when the syncer ends for any reason:
                # no timer per waiting request.
                done.wait()
                self._ensure_syncer()  # returns at once while the syncer runs
            elif not done.wait(1.0):
                self._ensure_syncer()  # if it died (and logged why), nothing else would sync this frame
        if ticket.segment.broken:
            raise BufferFull("the write-ahead buffer could not fsync this request's rows", "fsync_error")

    def _ensure_syncer(self) -> None:
        """Start the syncer thread unless it runs (lazily: a worker's, never the master's)."""
        if self._syncer is not None and self._syncer.alive:
            return
        with self._sync_lock:
            if self._wakeup is None:
                self._wakeup = green.Wakeup(self._round_finished)
            if self._syncer is None or not self._syncer.alive:
                # Once it has ended, however, whoever still waits looks again (and starts another).
                self._syncer = green.NativeThread(self._sync_loop, "wal-fsync", on_exit=self._wakeup.send)

    def _sync_loop(self) -> None:
        """The syncer thread: a round as soon as there is something to fsync, but rounds start
        at most once per BUFFER_FSYNC interval. Ends once the log is closed and all is synced."""
        interval = (self.config.fsync_ms or 0) / 1000
        started = float("-inf")
        while True:
            with self._sync_lock:
                idle = not self._pending and self._pending_dir < 0
                if idle and self._closed:
                    return
                self._syncer_sleeping = idle
            if idle:
                self._wake.acquire(timeout=1.0)
                continue
            pause = started + interval - time.monotonic()
            if pause > 0:
                green.native_sleep(pause)  # let more requests join this round
            started = time.monotonic()
            try:
                self._sync_round()
            except Exception:  # noqa: BLE001 - the syncer must outlive any one failure
                log.exception("write-ahead buffer: fsync round failed")
                green.native_sleep(0.05)

    def _sync_round(self) -> None:
        with self._sync_lock:
            pending, self._pending = self._pending, {}
            dir_fd, self._pending_dir = self._pending_dir, -1
            target = self._target
        fds = [fd for _, fd in pending.values()] + ([dir_fd] if dir_fd >= 0 else [])
        began = time.monotonic()
        error: OSError | None = None
        try:
            _fsync_all(fds)  # the GIL is released while fsync runs
        except OSError as exc:
            error = exc
        finally:
            for fd in fds:
                os.close(fd)
        took = time.monotonic() - began
        if error is not None:
            log.error("write-ahead buffer: fsync failed (%s); the requests it covered are answered 503", error.strerror)
            for segment, _ in pending.values():
                segment.broken = True  # its waiters answer 503; the next append starts a new segment
        with self._sync_lock:
            self.synced = max(self.synced, target)
            self._fsync_seconds.append(took)
        assert self._wakeup is not None
        self._wakeup.send()

    def _round_finished(self) -> None:
        """(in the worker's event loop, or unpatched in the syncer) Wake the requests waiting
        for a round; they look whether it covered their frames."""
        with self._sync_lock:
            took, self._fsync_seconds = self._fsync_seconds, []
            done, self._round_done = self._round_done, threading.Event()
        for seconds in took:
            metrics.FSYNC_SECONDS.observe(seconds)
        done.set()

    # -- what destinations hold and acknowledge ----------------------------------------------------
    def hold(self, pieces: list[tuple[Ticket, int]]) -> None:
        with self._lock:
            for ticket, count in pieces:
                ticket.segment.outstanding += count

    def ack(self, destination: str, pieces: list[tuple[Ticket, str, int, int]]) -> None:
        """`destination` has written or dead-lettered these rows: note it next to their
        segments and delete segments nothing depends on any more."""
        grouped: dict[Segment, list[Piece]] = defaultdict(list)
        for ticket, table, start, count in pieces:
            grouped[ticket.segment].append((ticket.index, table, start, count))
        with self._lock:
            for segment, done in grouped.items():
                segment.outstanding -= sum(piece[3] for piece in done)
                if not segment.deleted and not (segment.sealed and segment.outstanding <= 0 and segment.pins <= 0):
                    self._write_acks(segment, destination, done)
                self._maybe_delete(segment)

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            ticket.segment.pins -= 1
            self._maybe_delete(ticket.segment)

    def pin(self, segment: Segment) -> None:
        with self._lock:
            segment.pins += 1

    def unpin(self, segment: Segment) -> None:
        with self._lock:
            segment.pins -= 1
            self._maybe_delete(segment)

    def _write_acks(self, segment: Segment, destination: str, pieces: list[Piece]) -> None:
        try:
            if segment.ack_fd < 0:
                segment.ack_fd = os.open(ack_path(segment.path), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.write(segment.ack_fd, ack_lines(destination, pieces))
        except OSError as exc:
            # Only costs duplicates if this process dies before the segment is deleted.
            if not self._ack_error_logged:
                log.warning("write-ahead buffer: cannot record acknowledgements (%s); a restart may re-send rows", exc.strerror)
                self._ack_error_logged = True

    def _maybe_delete(self, segment: Segment) -> None:
        if segment.deleted or not segment.sealed or segment.outstanding > 0 or segment.pins > 0:
            return
        segment.deleted = True
        for path in (segment.path, ack_path(segment.path)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("write-ahead buffer: cannot delete %s: %s", path, exc.strerror)
        if segment.ack_fd >= 0:
            os.close(segment.ack_fd)
            segment.ack_fd = -1
        if segment.file is not None:
            segment.file.close()
            segment.file = None
        self.bytes -= segment.size
        self.segments.pop(segment.seq, None)

    # -- upkeep, state --------------------------------------------------------------------------------
    def tick(self) -> None:
        """Seal an active segment that everything has been delivered from (so it is deleted),
        or that is too old, then refresh the gauges and what other workers hold."""
        others = self._others_bytes()
        try:
            free = free_bytes(self.root)
        except OSError:
            free = 0
        if self.home is None and free >= MIN_FREE_BYTES:
            try:
                if self._open_home():
                    log.info("write-ahead buffer: BUFFER_DIR has room again; buffering in %s", self.home)
            except ConfigError as exc:  # no longer just full (made read-only meanwhile, ...): keep refusing
                if self._refusing != "write_error":
                    log.error("write-ahead buffer: %s", exc)
                self._refusing = "write_error"
        with self._lock:
            self.others = others
            active = self._active
            if (
                active is not None
                and active.size
                and ((active.outstanding <= 0 and active.pins <= 0) or time.time() - active.created > self.config.segment_seconds)
            ):
                self._active = None
                self._seal(active)
            if self._refusing == "buffer_full" and self.bytes + self.others < self.config.max_bytes * 0.9:
                self._refusing = None
            elif self._refusing in ("no_space", "write_error") and free >= MIN_FREE_BYTES and self.home is not None:
                self._refusing = None  # the next append will tell whether writes work again
            metrics.DISK_BUFFER_BYTES.set(self.bytes)
            metrics.DISK_BUFFER_SEGMENTS.set(len(self.segments))
            oldest = min((s.created for s in self.segments.values()), default=None)
            metrics.DISK_BUFFER_OLDEST.set(0 if oldest is None else max(0.0, time.time() - oldest))

    def _others_bytes(self) -> int:
        total = 0
        try:
            owners = [p for p in self.root.iterdir() if p.is_dir() and p != self.home]
        except OSError:
            return 0
        for owner in owners:
            for path in owner.rglob(f"*{SUFFIX}"):
                try:
                    total += path.stat().st_size
                except OSError:
                    continue
        return total

    @property
    def refusing(self) -> str | None:
        """Why appends are being refused right now (None: they are not)."""
        return self._refusing

    def health(self) -> dict[str, Any]:
        with self._lock:
            oldest = min((s.created for s in self.segments.values()), default=None)
            return {
                "mode": "disk",
                "dir": None if self.home is None else str(self.home),
                "fsync": fsync_name(self.config.fsync_ms),
                "bytes": self.bytes,
                "other_workers_bytes": self.others,
                "max_bytes": self.config.max_bytes,
                "segments": len(self.segments),
                "oldest_segment_seconds": None if oldest is None else round(max(0.0, time.time() - oldest), 1),
                "full": self._refusing is not None,
                **({"refusing": self._refusing} if self._refusing else {}),
            }

    def close(self) -> None:
        """Flush the syncer, close files, and remove our directory if nothing is left in it.
        Segments still holding undelivered rows stay for the next process to adopt."""
        with self._lock:
            self._closed = True
            if self._active is not None:
                active, self._active = self._active, None
                self._seal(active)
        with self._sync_lock:
            self._wake_syncer()  # it syncs what is pending, then ends
        if self._syncer is not None and not self._syncer.join(10):
            log.warning("write-ahead buffer: the last fsync round did not finish within 10 s")
        elif self._wakeup is not None:
            # The syncer has ended and sent its last signal (join waits for on_exit): the last
            # round's waiters are woken now, and the loop stops watching.
            self._wakeup.close()
        with self._lock:
            for segment in list(self.segments.values()):
                if segment.file is not None:
                    segment.file.close()
                    segment.file = None
                if segment.ack_fd >= 0:
                    os.close(segment.ack_fd)
                    segment.ack_fd = -1
            if self.home is None:
                return
            left = list(self.home.rglob(f"*{SUFFIX}"))  # ours, and adopted ones not delivered yet
            if left:
                log.warning(
                    "write-ahead buffer: %d segments (%d bytes) with undelivered rows stay in %s for the next start",
                    len(left),
                    sum(p.stat().st_size for p in left),
                    self.home,
                )
            else:
                _remove_tree(self.home)
            os.close(self._dir_fd)
            os.close(self._lock_fd)  # releases the flock: another worker may adopt what is left


def _fsync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fsync(fd)


def _remove_tree(path: Path) -> None:
    """Remove an owner directory whose segments are all gone: lock files, ack files of deleted
    segments, empty folders. Segments, and anything unexpected, are left in place (and so is
    the lock of a folder that still holds a segment, so that it can be adopted)."""
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        try:
            if child.is_dir():
                child.rmdir()
            elif child.name.endswith(ACK_SUFFIX) and not child.with_name(child.name[: -len(ACK_SUFFIX)] + SUFFIX).exists():
                child.unlink()
            elif child.name == LOCK and not any(child.parent.rglob(f"*{SUFFIX}")):
                child.unlink()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


def fsync_name(fsync_ms: float | None) -> str:
    if fsync_ms is None:
        return "never"
    return "always" if fsync_ms == 0 else f"{fsync_ms:g}ms"
