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
from core.settings import Settings
from destinations import build_destinations, upstream_client
from destinations.base import Destination
from destinations.mixpanel import MixpanelClient
from destinations.rows import RowBatch, to_rows
from destinations.schema import TableSchema, build_schemas
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

    def close(self, timeout: float | None = None) -> None:
        """Drain every destination (flush buffers, spool the rest). Idempotent, and a second
        caller waits for the first to finish (gunicorn may signal a worker twice)."""
        with self._closing:
            if self.closed:
                return
            self._drain(timeout)
            self.closed = True

    def _drain(self, timeout: float | None) -> None:
        for destination in self.destinations:
            try:
                destination.close(timeout=timeout)
            except Exception:  # noqa: BLE001 - keep closing the others
                log.exception("closing %s failed", destination.name)
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
    )


def runtime(app: Flask | None = None) -> Runtime:
    return (app or current_app).extensions["mpproxy"]
