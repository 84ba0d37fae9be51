"""Recovery: adopt what a stopped process left in BUFFER_DIR and deliver it.

A worker looks at BUFFER_DIR when it starts and every BUFFER_SCAN_SECONDS after. An
owner directory whose `lock` it can `flock` belongs to a process that is gone (the kernel
drops the lock however a process ends); on file systems without flock, an owner on this
host whose pid no longer runs. The worker claims such a directory by renaming it into
its own (`<home>/adopted/<name>`): a rename happens once, so with any number of workers
and restarts each directory, and every segment in it, is claimed by exactly one.

Each adopted segment is then read back (checksums verified, a damaged tail skipped,
counted and logged), its `.ack` file tells which rows each destination already took,
and the rest is handed to those destinations' buffers against the same segment, so it
is deleted once they have delivered it. Rows keep every column, `insert_id` included.
Segments are fed one at a time, each once the destinations' buffers have room.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from core import green, metrics
from destinations.wal.log import ADOPTED, HOST, LOCK, Segment, Ticket, WriteAheadLog, _remove_tree
from destinations.wal.payload import decode
from destinations.wal.segments import SUFFIX, ack_path, read_acks, remaining, scan

log = logging.getLogger(__name__)
STALE_STAGING_SECONDS = 60.0


class Recovery:
    def __init__(self, wal: WriteAheadLog, destinations: dict[str, Any]) -> None:
        self.wal = wal
        self.destinations = destinations
        self._fed: set[Path] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self._round = threading.Lock()  # one round at a time (the loop, or a caller such as a test)
        self.recovered_rows = 0
        self.damaged_bytes = 0

    # -- the background loop --------------------------------------------------------------------
    def start(self) -> None:
        with self._starting:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="wal-recovery", daemon=True)
                self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - recovery must outlive any one failure
                log.exception("write-ahead buffer: recovery round failed; trying again")
            self._stop.wait(self.wal.config.scan_seconds)

    def run_once(self) -> int:
        """Claim what dead processes left, feed it to the destinations; returns segments fed."""
        with self._round:
            return self._round_once()

    def _round_once(self) -> int:
        self.wal.tick()
        if self.wal.home is None:
            return 0  # the disk is too full for our own directory: nothing can be adopted into it
        self.claim()
        fed = 0
        for path in self._pending():
            if self._stop.is_set() or not self._wait_for_room():
                break
            self.feed(path)
            fed += 1
        self._tidy()
        return fed

    # -- claiming --------------------------------------------------------------------------------
    def claim(self) -> list[str]:
        claimed = []
        try:
            entries = sorted(self.wal.root.iterdir())
        except OSError:
            return claimed
        for owner in entries:
            if owner == self.wal.home or not owner.is_dir():
                continue
            if owner.name.startswith(".new-"):
                self._remove_stale_staging(owner)
            elif not owner.name.startswith(".") and self._claim(owner):
                claimed.append(owner.name)
        return claimed

    def _claim(self, owner: Path) -> bool:
        lock = owner / LOCK
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            # Being removed by its owner or claimed by another worker just now, or what a process that
            # died while removing its emptied directory left: remove that once it is clearly stale.
            _remove_if_stale_and_empty(owner)
            return False
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its process is alive
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS) or not _dead_pid(owner.name):
                    return False
            try:  # still the same directory? (it may have been claimed and removed meanwhile)
                if os.stat(lock).st_ino != os.fstat(fd).st_ino:
                    return False
            except FileNotFoundError:
                return False
            target = self.wal.home / ADOPTED / owner.name
            target.parent.mkdir(exist_ok=True)
            try:
                os.rename(owner, target)
            except OSError:
                return False
        finally:
            os.close(fd)
        segments = list(target.rglob(f"*{SUFFIX}"))
        if segments:
            size = sum(p.stat().st_size for p in segments)
            log.warning(
                "write-ahead buffer: adopted %d segments (%d bytes) left by stopped process %s; delivering them",
                len(segments),
                size,
                owner.name,
            )
        return True

    def _remove_stale_staging(self, staging: Path) -> None:
        """A process that died while creating its directory left `.new-*` with only a lock."""
        try:
            if time.time() - staging.stat().st_mtime < STALE_STAGING_SECONDS or any(staging.rglob(f"*{SUFFIX}")):
                return
            fd = os.open(staging / LOCK, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _remove_tree(staging)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- feeding ---------------------------------------------------------------------------------------
    def _pending(self) -> list[Path]:
        root = self.wal.home / ADOPTED
        if not root.is_dir():
            return []
        return sorted((p for p in root.rglob(f"*{SUFFIX}") if p not in self._fed), key=lambda p: (p.parent, p.name))

    def _wait_for_room(self) -> bool:
        """Wait until no destination's buffer is more than half full (recovered rows are not spilled)."""
        while not self._stop.is_set():
            if all(d.backlog() <= d.config.max_buffer_bytes // 2 for d in self.destinations.values()):
                return True
            self._stop.wait(min(0.25, self.wal.config.scan_seconds))
        return False

    def feed(self, path: Path) -> int:
        """Read one adopted segment and hand what is undelivered to its destinations. Returns rows handed over."""
        self._fed.add(path)
        try:
            data = green.off_loop(path.read_bytes)
        except FileNotFoundError:
            return 0
        found = scan(data)
        acks = read_acks(ack_path(path))
        segment = self.wal.adopt(path)
        if found.damaged_bytes:
            self.damaged_bytes += found.damaged_bytes
            metrics.CORRUPT_TAILS.inc(found.damaged_regions)
            metrics.CORRUPT_BYTES.inc(found.damaged_bytes)
            log.error(
                "write-ahead buffer: %s: skipped %d damaged bytes in %d region(s) (a write cut short by a crash, or disk "
                "damage); %d intact records kept",
                path,
                found.damaged_bytes,
                found.damaged_regions,
                len(found.records),
            )
        self.wal.pin(segment)
        try:
            handed = self._hand_over(segment, found.records, acks)
        finally:
            self.wal.unpin(segment)
        self.recovered_rows += sum(handed.values())
        for name, rows in handed.items():
            metrics.RECOVERED_ROWS.labels(name).inc(rows)
        if handed:
            log.info("write-ahead buffer: %s: handed %s recovered rows to delivery", path.name, dict(handed))
        return sum(handed.values())

    def _hand_over(self, segment: Segment, records: list[tuple[int, bytes]], acks: dict) -> Counter:
        entries: dict[str, list[tuple[str, list[Any], int, Any, int]]] = {}
        handed: Counter = Counter()
        missing: Counter = Counter()
        for index, payload in records:
            try:
                record = decode(payload)
            except (ValueError, KeyError, TypeError):
                metrics.CORRUPT_TAILS.inc()
                log.error("write-ahead buffer: %s: record %d does not decode; skipped", segment.path, index)
                continue
            ticket = Ticket(self.wal, segment, index, 0)
            for name in record.destinations:
                destination = self.destinations.get(name)
                if destination is None:
                    missing[name] += sum(len(v) for v in record.tables.values())
                    continue
                takes = destination.capabilities.takes
                for table, total in record.keys(takes):
                    runs = remaining(total, acks.get((name, index, table), []))
                    if not runs:
                        continue
                    items = record.items(takes, table)
                    raw = record.records if takes == "records" else record.tables[table]
                    for start, count in runs:
                        size = sum(len(line) + 1 for line in raw[start : start + count])
                        entries.setdefault(name, []).append((table, items[start : start + count], size, ticket, start))
                        handed[name] += count
        for name, batch in entries.items():
            self.destinations[name].recover(batch)
        for name, rows in missing.items():
            metrics.DROPPED.labels(name, "destination_not_configured").inc(rows)
            log.error(
                "write-ahead buffer: %s: %d recovered rows were for destination %s, which is no longer configured; dropped",
                segment.path.name,
                rows,
                name,
            )
        return handed

    def _tidy(self) -> None:
        """Remove adopted directories whose segments are all delivered."""
        root = self.wal.home / ADOPTED
        if not root.is_dir():
            return
        for owner in sorted(root.iterdir()):
            if owner.is_dir() and not any(owner.rglob(f"*{SUFFIX}")):
                self._fed = {p for p in self._fed if owner not in p.parents}
                _remove_tree(owner)


def _remove_if_stale_and_empty(owner: Path) -> None:
    try:
        if time.time() - owner.stat().st_mtime > STALE_STAGING_SECONDS and not any(owner.rglob(f"*{SUFFIX}")):
            _remove_tree(owner)
    except OSError:
        pass


def _dead_pid(name: str) -> bool:
    """For file systems without flock: an owner on this host whose process no longer runs."""
    host, _, rest = name.rpartition("-")[0].rpartition("-")
    pid = rest
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
