"""The lake writer shared by `files`, `s3`, `gcs` and `azure`.

Each flush becomes gzip NDJSON objects (the row model), keyed Hive-style:
`<prefix>/<table>/dt=YYYY-MM-DD/hr=HH/<UTC timestamp>-<host>-<pid>-<random>.json.gz`.
Rows are partitioned by their `insert_time` (the receive clock), so a batch that
spans midnight lands under both dates. Objects roll over at `LAKE_MAX_OBJECT_BYTES`
(uncompressed). The only thing a lake destination supplies is an `ObjectStore`:
how bytes reach storage.

In batch mode the delivery buffer holds `PackedRows`: rows are gzip-compressed as
they arrive, so the buffer costs compressed bytes (NDJSON shrinks 8-11x) and the
flush only seals and uploads. Buffer limits are then rarely reached before the
flush timer, so a lake gets one object per interval per table and worker.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from core import codec
from core.green import off_loop
from core.settings import Settings
from destinations.base import Capabilities, RowSink, SinkResult
from destinations.rows import Line, Row, encode_lines

CONTENT_TYPE = "application/x-ndjson"
CONTENT_ENCODING = "gzip"
PROBE_PREFIX = "_proxy_probe/"
DEFAULT_MAX_OBJECT_BYTES = 256 * 1024 * 1024
# Compress an add this large on the thread pool rather than on the event loop.
OFF_LOOP_BYTES = 256 * 1024
# Dead-lettering a packed chunk decompresses it in pieces of about this many bytes.
SPOOL_PIECE_BYTES = 8 * 1024 * 1024
_HOST = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())[:40] or "host"


class ObjectStore(Protocol):
    """How bytes reach one storage service. Errors are raised as Transient/PermanentError."""

    def put(self, key: str, data: bytes | bytearray, content_type: str, content_encoding: str | None) -> None: ...

    def ensure_container(self) -> None: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LakeConfig:
    prefix: str = ""
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    gzip_level: int = 6

    @classmethod
    def from_settings(cls, settings: Settings) -> LakeConfig:
        prefix = (settings.get("lake_prefix") or "").strip("/")
        return cls(
            prefix=prefix,
            max_object_bytes=settings.get_int("lake_max_object_bytes", DEFAULT_MAX_OBJECT_BYTES, 1024),
            gzip_level=settings.get_int("lake_gzip_level", 6, 1, 9),
        )


def table_prefix(config: LakeConfig, table: str) -> str:
    """The exact prefix this proxy owns for a table, always ending in `/`."""
    return f"{config.prefix}/{table}/" if config.prefix else f"{table}/"


def object_key(config: LakeConfig, table: str, partition: str, now: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    return f"{table_prefix(config, table)}{partition}/{stamp}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.json.gz"


def _partition(hour: str) -> str:
    # hour is our own insert hour, YYYY-MM-DDTHH
    return f"dt={hour[:10]}/hr={hour[11:13]}"


def encode_objects(lines: Sequence[Line], max_object_bytes: int, level: int = 6) -> list[tuple[str, bytes, int]]:
    """Group encoded rows by partition and gzip them into objects: [(partition, bytes, row count)]."""
    by_partition: dict[str, list[bytes]] = {}
    for hour, line in lines:
        by_partition.setdefault(hour, []).append(line)
    out: list[tuple[str, bytes, int]] = []
    for hour, chunk_lines in by_partition.items():
        chunk: list[bytes] = []
        size = 0
        for line in chunk_lines:
            length = len(line) + 1
            if chunk and size + length > max_object_bytes:
                out.append((_partition(hour), _gzip(chunk, level), len(chunk)))
                chunk, size = [], 0
            chunk.append(line)
            size += length
        if chunk:
            out.append((_partition(hour), _gzip(chunk, level), len(chunk)))
    return out


def _gzip(lines: list[bytes], level: int) -> bytes:
    # ISA-L releases the GIL on the pool; its gzip header carries no timestamp, so identical
    # input stays byte-identical.
    return off_loop(codec.gzip, b"\n".join(lines) + b"\n", level)


class _Stream:
    """One hour's rows as a gzip stream being written."""

    __slots__ = ("compressor", "data", "rows")

    def __init__(self, level: int) -> None:
        # wbits 31: a gzip header and trailer, so the sealed bytes are a .gz file as they are.
        self.compressor = codec.compressor(level)
        # Grown in place, never joined: sealing adds no second copy of the object to memory
        # (glibc grows a large bytearray with mremap, see proxy/memory.py).
        self.data = bytearray()
        self.rows = 0


class PackedRows:
    """Encoded rows of one table, gzip-compressed per insert hour as they are added: one
    chunk of a lake's delivery buffer, and at most one object per hour once sealed.

    `add` takes lines while the chunk stays within `max_raw_bytes` of NDJSON (the object
    size cap; an empty chunk takes at least one, so an oversized row still moves) and
    within about `max_packed_bytes` compressed (BATCH_MAX_BYTES, which lakes count
    compressed), and returns how many it took. `nbytes` is what the chunk costs in memory:
    the compressed bytes so far.
    `objects()` seals it; after that it only reads. The delivery buffer's lock serialises
    `add`, and a chunk is sealed only once the buffer has handed it to the flusher."""

    def __init__(
        self,
        level: int = 6,
        max_raw_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        max_rows: int = 1 << 62,
        max_packed_bytes: int = 1 << 62,
    ) -> None:
        self.level = level
        self.max_raw_bytes = max_raw_bytes
        self.max_rows = max_rows
        self.max_packed_bytes = max_packed_bytes
        self.raw_bytes = 0
        self.nbytes = 0
        self._rows = 0
        self._streams: dict[str, _Stream] = {}
        self._sealed: list[tuple[str, bytearray, int]] | None = None
        # A drain may spool a chunk that a stuck flusher holds: only one of them seals it.
        self._seal_lock = threading.Lock()

    def __len__(self) -> int:
        return self._rows

    @property
    def full(self) -> bool:
        return (
            self._sealed is not None
            or self.raw_bytes >= self.max_raw_bytes
            or self.nbytes >= self.max_packed_bytes
            or self._rows >= self.max_rows
        )

    def payload(self) -> PackedRows:
        """A sink's `write` receives the chunk itself: sealing it is the sink's business."""
        return self

    def select(self, indices: Sequence[int]) -> list[Line]:
        """The rows at these positions, in the order `pieces()` yields them."""
        wanted = set(indices)
        rows = (line for piece in self.pieces() for line in piece)
        return [line for index, line in enumerate(rows) if index in wanted]

    def add(self, lines: Sequence[Line], size: int = 0) -> int:
        """Compress as many of `lines` as fit; returns how many were taken. `size` (their
        encoded size) is not needed: the chunk counts what it holds compressed."""
        if self._sealed is not None:
            raise RuntimeError("rows added to a sealed chunk")
        if self._rows and self.nbytes >= self.max_packed_bytes:
            return 0
        by_hour: dict[str, list[bytes]] = {}
        taken = 0
        raw, most, room = self.raw_bytes, self.max_raw_bytes, self.max_rows - self._rows
        hour_now: str | None = None
        group: list[bytes] = []
        for hour, line in lines:
            size = len(line) + 1
            if (raw and raw + size > most) or taken >= room:
                break
            if hour is not hour_now:  # a request's rows share their hour (the same string)
                hour_now, group = hour, by_hour.setdefault(hour, [])
            group.append(line)
            raw += size
            taken += 1
        self.raw_bytes = raw
        for hour, group in by_hour.items():
            stream = self._streams.get(hour)
            if stream is None:
                stream = self._streams[hour] = _Stream(self.level)
            data = b"\n".join(group) + b"\n"
            if len(data) >= OFF_LOOP_BYTES:
                out = off_loop(stream.compressor.compress, data)
            else:
                out = stream.compressor.compress(data)
            stream.data += out
            self.nbytes += len(out)
            stream.rows += len(group)
        self._rows += taken
        return taken

    def objects(self) -> list[tuple[str, bytearray, int]]:
        """[(partition, gzip bytes, row count)], one per hour. Seals the chunk (idempotent)."""
        with self._seal_lock:
            if self._sealed is None:
                sealed = []
                for hour, stream in self._streams.items():
                    stream.data += stream.compressor.flush()
                    sealed.append((hour, stream.data, stream.rows))
                self._sealed = sealed
                self._streams = {}
                self.nbytes = sum(len(data) for _, data, _ in sealed)
        return [(_partition(hour), data, rows) for hour, data, rows in self._sealed]

    def pieces(self, max_bytes: int = SPOOL_PIECE_BYTES) -> Iterator[list[Line]]:
        """The rows again as (hour, line) lists of about `max_bytes` each, decompressed a
        piece at a time: what the dead letter takes, without inflating the whole chunk."""
        self.objects()
        assert self._sealed is not None
        for hour, data, _rows in self._sealed:
            inflater = zlib.decompressobj(31)
            piece: list[Line] = []
            size = 0
            tail = b""
            view = memoryview(data)
            for start in range(0, len(data), 1 << 20):
                text = tail + inflater.decompress(view[start : start + (1 << 20)])
                *complete, tail = text.split(b"\n")
                for line in complete:
                    piece.append((hour, line))
                    size += len(line) + 1
                    if size >= max_bytes:
                        yield piece
                        piece, size = [], 0
            text = tail + inflater.flush()
            piece.extend((hour, line) for line in text.split(b"\n") if line)
            if piece:
                yield piece


class LakeSink(RowSink):
    """What every lake destination shares: encoded rows go through `self.writer` as gzip
    NDJSON objects. Objects are named uniquely, so a retried write never overwrites one;
    it is not idempotent (a retry after a lost reply writes a second object)."""

    writer: LakeWriter

    def __init__(self, writer: LakeWriter) -> None:
        self.writer = writer
        self.capabilities = Capabilities(
            takes="lines", max_rows=1 << 62, max_bytes=writer.config.max_object_bytes, attempt_timeout=60.0, idempotent=False
        )

    def write(self, table: str, items: Sequence[Line] | PackedRows) -> SinkResult:
        self.writer.write_lines(table, items)
        return SinkResult(len(items))

    def new_chunk(self, max_rows: int, max_bytes: int) -> PackedRows:
        """What the delivery buffer fills for this sink: rows compressed as they arrive, up to
        one object's worth (LAKE_MAX_OBJECT_BYTES of NDJSON) and `max_bytes` compressed. A
        chunk is one object per hour, so at 25,000 events/s a flush interval is one object
        per table per worker, not one per 32 MiB of NDJSON."""
        return PackedRows(self.writer.config.gzip_level, self.writer.config.max_object_bytes, max_rows, max_bytes)

    def drop(self, tables: list[str]) -> list[str]:
        return self.writer.drop(tables)

    def setup(self) -> None:
        """Create the bucket or container if missing, then prove write access."""
        self.writer.store.ensure_container()
        self.writer.probe()

    def close(self) -> None:
        self.writer.store.close()


class LakeWriter:
    def __init__(self, store: ObjectStore, config: LakeConfig, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    def write(self, table: str, rows: Sequence[Row]) -> list[str]:
        """Write rows as one or more objects; returns the keys written."""
        return self.write_lines(table, encode_lines(rows))

    def write_lines(self, table: str, lines: Sequence[Line] | PackedRows) -> list[str]:
        """Write encoded rows (or a packed chunk) as one or more objects; returns the keys written."""
        if not lines:
            return []
        now = self.clock()
        keys = []
        if isinstance(lines, PackedRows):
            objects = lines.objects()
        else:
            objects = encode_objects(lines, self.config.max_object_bytes, self.config.gzip_level)
        for partition, data, _count in objects:
            key = object_key(self.config, table, partition, now)
            self.store.put(key, data, CONTENT_TYPE, CONTENT_ENCODING)
            keys.append(key)
        return keys

    def probe(self) -> None:
        """Prove write access with a uniquely named object, then remove it."""
        key = (
            f"{self.config.prefix + '/' if self.config.prefix else ''}{PROBE_PREFIX}{_HOST}-{os.getpid()}-{secrets.token_hex(6)}"
        )
        self.store.put(key, b"probe\n", "text/plain", None)
        self.store.delete(key)

    def drop(self, tables: Sequence[str]) -> list[str]:
        deleted = []
        for table in tables:
            for key in self.store.list_keys(table_prefix(self.config, table)):
                self.store.delete(key)
                deleted.append(key)
        return deleted
