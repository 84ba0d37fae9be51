"""The per-process state a Flask app carries: settings, destinations, hooks, caches.

`build_runtime(settings)` makes all of it and is the whole configuration check: every
setting any part reads is parsed there (constructors validate and never connect
anywhere), so gunicorn's master runs it once before any worker starts (see
gunicorn.conf.py) and `create_app` runs it again for itself.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import cached_property

from flask import Flask, current_app

from core.records import Kind, Record
from core.settings import DEFAULT_BODY_READ_TIMEOUT_SECONDS, DEFAULT_MAX_URL_BYTES, Settings
from destinations import build_destinations, upstream_client
from destinations.base import Destination
from destinations.mixpanel import MixpanelClient
from destinations.rows import RowBatch, dumps_row, to_rows
from destinations.schema import TableSchema, build_schemas
from destinations.wal import DiskBuffer
from proxy.staticlib import LibraryCache
from proxy.transform import RowTransformer, Transformer

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    destinations: list[Destination]
    transformer: Transformer | None
    library: LibraryCache
    upstream: MixpanelClient
    schemas: dict[Kind, TableSchema]
    row_transformer: RowTransformer | None = None
    # BODY_READ_TIMEOUT_SECONDS and MAX_URL_BYTES, read (and validated) once at start-up.
    body_read_timeout: float = DEFAULT_BODY_READ_TIMEOUT_SECONDS
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES
    # The write-ahead buffer (BUFFER=disk), when any destination buffers rows.
    buffer: DiskBuffer | None = None
    closed: bool = field(default=False)
    _closing: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def needs_rows(self) -> bool:
        """Whether any destination takes rows (fixed once the runtime is built)."""
        return any(d.needs_rows for d in self.destinations)

    def rows(self, records: tuple[Record, ...]) -> RowBatch | None:
        """The row model of one request, built once and shared by every row destination."""
        if not self.needs_rows:
            return None
        batch = to_rows(records, self.schemas)
        if self.row_transformer is not None:
            batch = self.row_transformer.apply(batch, {s.name: s.kind for s in self.schemas.values()})
        return batch

    @cached_property
    def buffers_records(self) -> bool:
        """Whether a destination buffers SDK-shaped records (Mixpanel with MIXPANEL_DELIVERY=batch)."""
        return any(getattr(getattr(d, "capabilities", None), "takes", None) == "records" for d in self.destinations)

    def record_lines(self, records: tuple[Record, ...]) -> tuple[bytes, ...] | None:
        """The records' NDJSON lines, encoded once per request for every destination (and the
        write-ahead buffer) that keeps records, or None when none does."""
        return tuple(dumps_row(r.payload) for r in records) if self.buffers_records else None

    def start(self) -> None:
        """Begin background work that belongs to a serving process only (not to `flask setup`):
        adopting and delivering what stopped processes left in BUFFER_DIR."""
        if self.buffer is not None:
            self.buffer.start()

    @cached_property
    def buffers_rows(self) -> bool:
        """Whether any destination keeps rows after the reply (and so needs admission control)."""
        return self.settings.buffers_rows

    def refusal(self, size: int) -> str | None:
        """Why a request bringing about `size` bytes of rows cannot be kept now (it is then
        answered 503 before anything is dispatched), or None. The write-ahead buffer makes
        its own check when the rows are appended."""
        for destination in self.destinations:
            reason = destination.refusal(size)
            if reason:
                return reason
        return None

    def close(self, timeout: float | None = None) -> None:
        """Drain every destination (flush buffers, spool the rest). Idempotent, and a second
        caller waits for the first to finish (gunicorn may signal a worker twice)."""
        with self._closing:
            if self.closed:
                return
            self._drain(timeout)
            self.closed = True

    def _drain(self, timeout: float | None) -> None:
        if self.buffer is not None:
            self.buffer.stop_recovery()  # hand over nothing new while destinations drain
        for destination in self.destinations:
            try:
                destination.close(timeout=timeout)
            except Exception:  # noqa: BLE001 - keep closing the others
                log.exception("closing %s failed", destination.name)
        if self.buffer is not None:
            try:
                self.buffer.close()  # deletes delivered segments; keeps the rest for the next start
            except Exception:  # noqa: BLE001
                log.exception("closing the write-ahead buffer failed")
        self.upstream.close()


def build_runtime(settings: Settings) -> Runtime:
    """Everything a worker serves with, built from `settings` without I/O; raises ConfigError."""
    schemas = build_schemas(settings)
    upstream = upstream_client(settings)  # the worker's one pool to Mixpanel, opened on first use
    return Runtime(
        settings=settings,
        destinations=build_destinations(settings, schemas, upstream),
        schemas=schemas,
        row_transformer=RowTransformer.from_settings(settings),
        transformer=Transformer.from_settings(settings),
        library=LibraryCache(settings.mixpanel_cdn_url, settings.mixpanel_lib_dir, proxies=settings.outbound_proxies),
        upstream=upstream,
        body_read_timeout=settings.body_read_timeout_seconds,
        max_url_bytes=settings.max_url_bytes,
    )


def runtime(app: Flask | None = None) -> Runtime:
    # The app itself, not the context-local proxy: an attribute read through it raises and
    # catches an AttributeError first.
    return (app or current_app._get_current_object()).extensions["mpproxy"]
