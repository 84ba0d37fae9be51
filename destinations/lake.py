"""The lake writer shared by `files`, `s3`, `gcs` and `azure`.

Each flush becomes gzip NDJSON objects (the row model), keyed Hive-style:
`<prefix>/<table>/dt=YYYY-MM-DD/hr=HH/<UTC timestamp>-<host>-<pid>-<random>.json.gz`.
Rows are partitioned by their `insert_time` (the receive clock), so a batch that
spans midnight lands under both dates. Objects roll over at `LAKE_MAX_OBJECT_BYTES`
(uncompressed). The only thing a lake destination supplies is an `ObjectStore`:
how bytes reach storage.
"""

from __future__ import annotations

import gzip
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gevent import monkey
from gevent.hub import get_hub

from destinations.rows import Line, Row, dumps_row, hour_of

T = TypeVar("T")
CONTENT_TYPE = "application/x-ndjson"
CONTENT_ENCODING = "gzip"
PROBE_PREFIX = "_proxy_probe/"
_HOST = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())[:40] or "host"


class ObjectStore(Protocol):
    """How bytes reach one storage service. Errors are raised as Transient/PermanentError."""

    def put(self, key: str, data: bytes, content_type: str, content_encoding: str | None) -> None: ...

    def ensure_container(self) -> None: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self, prefix: str) -> list[str]: ...


@dataclass(frozen=True)
class LakeConfig:
    prefix: str = ""
    max_object_bytes: int = 64 * 1024 * 1024
    gzip_level: int = 6

    @classmethod
    def from_settings(cls, settings) -> LakeConfig:  # noqa: ANN001 - avoid a cycle with proxy.settings typing
        prefix = (settings.get("lake_prefix") or "").strip("/")
        return cls(
            prefix=prefix,
            max_object_bytes=settings.get_int("lake_max_object_bytes", 64 * 1024 * 1024, 1024),
            gzip_level=min(9, settings.get_int("lake_gzip_level", 6, 1)),
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


def off_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (zlib, disk I/O) on gevent's thread pool when gevent drives this
    process, so the event loop keeps serving requests meanwhile; else just call it."""
    if monkey.is_module_patched("threading"):
        return get_hub().threadpool.apply(function, args, kwargs)
    return function(*args, **kwargs)


def _gzip(lines: list[bytes], level: int) -> bytes:
    # mtime=0 keeps identical input byte-identical; zlib releases the GIL on the pool.
    return off_loop(gzip.compress, b"\n".join(lines) + b"\n", compresslevel=level, mtime=0)


class LakeSink:
    """What every lake destination shares: rows and encoded lines go through `self.writer`."""

    name: str
    writer: LakeWriter

    def write_rows(self, table: str, rows: list[Row]) -> int:
        return self.write_lines(table, [(hour_of(r), dumps_row(r).encode("utf-8")) for r in rows])

    def write_lines(self, table: str, lines: list[Line]) -> int:
        self.writer.write_lines(table, lines)
        return len(lines)

    def drop(self, tables: list[str]) -> list[str]:
        return self.writer.drop(tables)

    def setup(self) -> None:
        """Create the bucket or container if missing, then prove write access."""
        self.writer.store.ensure_container()
        self.writer.probe()

    def close(self) -> None:
        close = getattr(self.writer.store, "close", None)
        if close is not None:
            close()


class LakeWriter:
    def __init__(self, store: ObjectStore, config: LakeConfig, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    def write(self, table: str, rows: Sequence[Row]) -> list[str]:
        """Write rows as one or more objects; returns the keys written."""
        return self.write_lines(table, [(hour_of(r), dumps_row(r).encode("utf-8")) for r in rows])

    def write_lines(self, table: str, lines: Sequence[Line]) -> list[str]:
        """Write encoded rows as one or more objects; returns the keys written."""
        if not lines:
            return []
        now = self.clock()
        keys = []
        for partition, data, _count in encode_objects(lines, self.config.max_object_bytes, self.config.gzip_level):
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
