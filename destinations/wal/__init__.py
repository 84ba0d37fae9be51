"""The write-ahead buffer: with BUFFER=disk, "acknowledged" means on disk.

Reads: BUFFER (`disk` | `memory`), BUFFER_DIR (default `./buffer`), BUFFER_FSYNC
(`always` | milliseconds | `never`), BUFFER_MAX_BYTES, and the rarely needed
BUFFER_SEGMENT_BYTES (8 MiB), BUFFER_SEGMENT_SECONDS (60) and BUFFER_SCAN_SECONDS (1).

The request path appends each request's rows (the NDJSON lines the lakes write,
encoded once and shared by every buffered destination) to its worker's segment before
anything is dispatched, and answers only once the frame is as durable as BUFFER_FSYNC
asks. The delivery layer keeps its in-memory buffers as before (flushes never read the
disk back: the bytes are the same) and acknowledges rows per segment as destinations or
the dead letter take them; a segment is deleted once every buffered destination has
acknowledged all of it. What a killed process leaves behind, another worker adopts and
delivers (recovery.py). The design follows Vector's disk buffer (length-framed,
checksummed records; files deleted only once fully acknowledged) and Fluent Bit's
filesystem storage (memory for speed, a file copy for safety).

Only destinations that buffer (DELIVERY=batch) take part: `sync` ones write before the
reply, and Mixpanel's synchronous forwarding answers with Mixpanel's own verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from core.settings import Settings
from destinations.delivery import RowDestination
from destinations.wal.log import BufferConfig, Ticket, WriteAheadLog, fsync_name
from destinations.wal.payload import encode
from destinations.wal.recovery import Recovery
from destinations.wal.segments import BufferFull

__all__ = ["BufferConfig", "BufferFull", "DiskBuffer", "Ticket", "config_from_settings", "open_buffer"]
logger = logging.getLogger(__name__)  # not `log`: that name is the submodule destinations.wal.log


def config_from_settings(settings: Settings) -> BufferConfig:
    return BufferConfig(
        directory=settings.buffer_dir,
        fsync_ms=settings.buffer_fsync_ms,
        max_bytes=settings.buffer_max_bytes,
        segment_bytes=settings.get_int("buffer_segment_bytes", BufferConfig.segment_bytes, 64 * 1024),
        segment_seconds=settings.get_float("buffer_segment_seconds", BufferConfig.segment_seconds, 1),
        scan_seconds=settings.get_float("buffer_scan_seconds", BufferConfig.scan_seconds, 0.05),
    )


class DiskBuffer:
    """The write-ahead log of this worker, the destinations it protects, and their recovery."""

    def __init__(self, config: BufferConfig, destinations: list[Any]) -> None:
        self.wal = WriteAheadLog(config)
        self.destinations = destinations
        self.names = [d.name for d in destinations]
        self.records_too = any(d.capabilities.takes == "records" for d in destinations)
        for destination in destinations:
            destination.attach(self.wal)
        self.recovery = Recovery(self.wal, {d.name: d for d in destinations})

    def start(self) -> None:
        """Adopt and deliver what stopped processes left, now and every BUFFER_SCAN_SECONDS.
        Idempotent: gunicorn's post_worker_init calls it, and so does the first request (for
        servers without that hook)."""
        self.recovery.start()

    @property
    def started(self) -> bool:
        return self.recovery.started

    def append(self, endpoint: str, rows: Any, record_lines: Sequence[bytes] | None) -> Ticket | None:
        """Put one request's rows (and, when a destination keeps records, the records' NDJSON
        lines) on disk (raises BufferFull). None if it has nothing to keep."""
        payload = encode(endpoint, self.names, rows, record_lines if self.records_too else None)
        return None if payload is None else self.wal.append(payload)

    def wait_durable(self, ticket: Ticket) -> None:
        self.wal.wait_durable(ticket)

    @property
    def refusing(self) -> str | None:
        return self.wal.refusing

    def health(self) -> dict[str, Any]:
        return {
            **self.wal.health(),
            "recovered_rows": self.recovery.recovered_rows,
            "damaged_bytes": self.recovery.damaged_bytes,
        }

    def stop_recovery(self) -> None:
        self.recovery.stop()

    def close(self) -> None:
        self.recovery.stop()
        self.wal.close()


def open_buffer(settings: Settings, destinations: list[Any]) -> DiskBuffer | None:
    """The disk buffer for the destinations that buffer rows, or None (BUFFER=memory, or
    every destination writes inside the request). Raises ConfigError (one line) when
    BUFFER_DIR is read-only or not a directory. A full disk does not stop a worker: it
    answers 503 (no_space) until there is room (gunicorn.conf.py refuses to start on one)."""
    if settings.buffer != "disk":
        return None
    buffered = [d for d in destinations if isinstance(d, RowDestination) and d.config.mode == "batch"]
    if not buffered:
        return None
    config = config_from_settings(settings)
    buffer = DiskBuffer(config, buffered)
    logger.info(
        "write-ahead buffer in %s (fsync %s, at most %d bytes) for %s",
        buffer.wal.home or f"{config.directory} (once it has room)",
        fsync_name(config.fsync_ms),
        config.max_bytes,
        ", ".join(buffer.names),
    )
    return buffer
