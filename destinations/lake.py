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
from typing import Protocol

from destinations.rows import Row, dumps_row

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

    @classmethod
    def from_settings(cls, settings) -> LakeConfig:  # noqa: ANN001 - avoid a cycle with proxy.settings typing
        prefix = (settings.get("lake_prefix") or "").strip("/")
        return cls(prefix=prefix, max_object_bytes=settings.get_int("lake_max_object_bytes", 64 * 1024 * 1024, 1024))


def table_prefix(config: LakeConfig, table: str) -> str:
    """The exact prefix this proxy owns for a table, always ending in `/`."""
    return f"{config.prefix}/{table}/" if config.prefix else f"{table}/"


def object_key(config: LakeConfig, table: str, partition: str, now: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    return f"{table_prefix(config, table)}{partition}/{stamp}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.json.gz"


def _partition(row: Row) -> str:
    stamp = row.get("insert_time") or ""
    # insert_time is always our own RFC 3339 UTC string: YYYY-MM-DDTHH:...
    return f"dt={stamp[:10]}/hr={stamp[11:13]}"


def encode_objects(rows: Sequence[Row], max_object_bytes: int) -> list[tuple[str, bytes, int]]:
    """Group rows by partition and encode them: [(partition, gzip bytes, row count)]."""
    lines_by_partition: dict[str, list[str]] = {}
    for row in rows:
        lines_by_partition.setdefault(_partition(row), []).append(dumps_row(row))
    out: list[tuple[str, bytes, int]] = []
    for partition, lines in lines_by_partition.items():
        chunk: list[str] = []
        size = 0
        for line in lines:
            length = len(line.encode("utf-8")) + 1  # bytes, not characters: rows keep non-ASCII text
            if chunk and size + length > max_object_bytes:
                out.append((partition, _gzip(chunk), len(chunk)))
                chunk, size = [], 0
            chunk.append(line)
            size += length
        if chunk:
            out.append((partition, _gzip(chunk), len(chunk)))
    return out


def _gzip(lines: list[str]) -> bytes:
    # Level 6 is gzip's default; mtime=0 keeps identical input byte-identical.
    return gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), compresslevel=6, mtime=0)


class LakeWriter:
    def __init__(self, store: ObjectStore, config: LakeConfig, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    def write(self, table: str, rows: Sequence[Row]) -> list[str]:
        """Write rows as one or more objects; returns the keys written."""
        if not rows:
            return []
        now = self.clock()
        keys = []
        for partition, data, _count in encode_objects(rows, self.config.max_object_bytes):
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
