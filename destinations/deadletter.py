"""The dead letter: rows a destination could not take, kept until `replay` re-drives them.

Reads: DEAD_LETTER_DIR (default `./spool`), DEAD_LETTER_MAX_BYTES (default 1 GiB), and
PUBSUB_BAD_TOPIC, which sends failed batches to Pub/Sub instead (destinations/pubsub/).
Each failed batch is one NDJSON file `<dir>/<destination>/<stamp>-<host>-<pid>-<rand>.ndjson`
whose single line holds destination, table, reason, attempts, spooled_at and rows.
Files are written to a temporary name and renamed, so a reader never sees half a
batch. When the spool cannot take a batch (disk full, over its cap) `put` raises
`DeadLetterFull`, and the request that carried the rows is answered 503.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.green import off_loop
from core.settings import Settings
from core.storage import free_bytes, write_atomically
from destinations.rows import Row, json_safe

log = logging.getLogger(__name__)
_HOST = "".join(ch if ch.isalnum() else "-" for ch in socket.gethostname())[:40]


class DeadLetterFull(Exception):
    """The spool cannot take more data; callers must refuse new data (503)."""


@dataclass(frozen=True)
class SpooledBatch:
    path: Path
    destination: str
    table: str
    reason: str
    attempts: int
    spooled_at: float
    rows: list[Row]


def encode_batch(destination: str, table: str, rows: list[Any], reason: str, attempts: int, encoded: bool) -> bytes:
    """One dead-letter line: destination, table, reason, attempts, spooled_at and rows.
    Encoded rows (JSON lines, or (hour, line) pairs) are embedded as they are, not decoded again."""
    head = {"destination": destination, "table": table, "reason": reason, "attempts": attempts, "spooled_at": time.time()}
    if encoded:
        prefix = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1].encode()
        lines = (row if isinstance(row, bytes) else row[1] for row in rows)
        return prefix + b',"rows":[' + b",".join(lines) + b"]}\n"
    line = {**head, "rows": rows}
    try:
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    except (TypeError, ValueError, RecursionError):
        return (json.dumps(json_safe(line), ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class DeadLetter:
    def __init__(self, directory: str, max_bytes: int = 1 << 30) -> None:
        self.root = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._size: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DeadLetter:
        """The local spool. (With `pubsub_bad_topic` set, destinations.build_dead_letter
        puts the topic in front of it.)"""
        directory = settings.get("dead_letter_dir", "./spool") or "./spool"
        return cls(directory, settings.get_int("dead_letter_max_bytes", 1 << 30, 1024))

    def _current_size(self) -> int:
        if self._size is None:
            self._size = sum(p.stat().st_size for p in self.root.rglob("*.ndjson")) if self.root.is_dir() else 0
        return self._size

    def room(self) -> int | None:
        """Bytes the spool can still take: what DEAD_LETTER_MAX_BYTES leaves, and what the disk
        has free. The delivery layer's admission check asks before it accepts rows whose
        destination is failing. (None would mean unknown, e.g. a topic in front of the spool.)"""
        with self._lock:
            left = self.max_bytes - self._current_size()
        try:
            free = free_bytes(self.root)
        except OSError:
            free = 0
        return max(0, min(left, free))

    def put(self, destination: str, table: str, rows: list[Any], reason: str, attempts: int, encoded: bool = False) -> Path:
        """Spool one batch. `rows` are row dicts, or with `encoded` JSON lines or (hour, line) pairs."""
        data = encode_batch(destination, table, rows, reason, attempts, encoded)
        with self._lock:  # reserve the room; the write itself happens outside the lock
            if self._current_size() + len(data) > self.max_bytes:
                raise DeadLetterFull(f"dead letter spool is over DEAD_LETTER_MAX_BYTES ({self.max_bytes})")
            self._size = self._current_size() + len(data)
        folder = self.root / destination
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = folder / f"{stamp}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.ndjson"
        try:
            # Off the event loop: a large batch (a whole buffer spilled at once) takes a while to
            # write and fsync, and the other requests of this worker need not wait for it.
            off_loop(write_atomically, path, data)
        except OSError as exc:
            with self._lock:
                self._size = self._current_size() - len(data)
            raise DeadLetterFull(f"dead letter spool cannot be written: {exc.strerror}") from None
        log.warning("spooled %d rows for %s/%s (%s)", len(rows), destination, table, reason.split(":", 1)[0])
        return path

    def batches(self, destination: str | None = None) -> Iterator[SpooledBatch]:
        if not self.root.is_dir():
            return
        folders = [self.root / destination] if destination else sorted(p for p in self.root.iterdir() if p.is_dir())
        for folder in folders:
            for path in sorted(folder.glob("*.ndjson")):
                try:
                    line = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    log.error("unreadable spool file %s: %s", path, exc)
                    continue
                yield SpooledBatch(
                    path,
                    line["destination"],
                    line["table"],
                    line.get("reason", ""),
                    int(line.get("attempts", 0)),
                    float(line.get("spooled_at", 0)),
                    line["rows"],
                )

    def remove(self, batch: SpooledBatch) -> None:
        with self._lock:
            try:
                size = batch.path.stat().st_size
                batch.path.unlink()
            except FileNotFoundError:
                return
            if self._size is not None:
                self._size = max(0, self._size - size)

    def pending_rows(self) -> int:
        return sum(len(b.rows) for b in self.batches())
