"""The user transform hooks: `TRANSFORM=package.module:function` or `path/to/file.py:function`,
and `WAREHOUSE_TRANSFORM` for the warehouse and lake copy only (see RowTransformer).

Called once per record as `function(record, kind)` before dispatch, so Mixpanel sees
the transformed record too. Return a dict (the new record), None (drop it) or a
list (several records). If it raises, TRANSFORM_ON_ERROR decides: `pass` (default)
forwards the record unchanged, `drop` drops it. Failures are logged without the
payload and counted, as are drops.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core import metrics
from core.records import Record
from core.settings import ConfigError, Settings
from destinations.rows import RowBatch, json_safe

log = logging.getLogger(__name__)
Hook = Callable[[dict, str], Any]


def load_hook(spec: str) -> Hook:
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"TRANSFORM={spec!r} must be package.module:function or path/to/file.py:function")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            module_spec = importlib.util.spec_from_file_location(f"mpproxy_transform_{path.stem}", path)
            if module_spec is None or module_spec.loader is None or not path.is_file():
                raise ConfigError(f"TRANSFORM: file {target!r} not found")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        hook = getattr(module, attr)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any import failure stops start-up with one line
        raise ConfigError(f"TRANSFORM={spec!r} cannot be loaded: {type(exc).__name__}: {exc}") from None
    if not callable(hook):
        raise ConfigError(f"TRANSFORM={spec!r} is not callable")
    return hook


class Transformer:
    def __init__(self, hook: Hook, on_error: str = "pass") -> None:
        if on_error not in {"pass", "drop"}:
            raise ConfigError(f"TRANSFORM_ON_ERROR={on_error!r} must be pass or drop")
        self.hook = hook
        self.on_error = on_error

    @classmethod
    def from_settings(cls, settings: Settings) -> Transformer | None:
        spec = settings.get("transform")
        if not spec:
            return None
        return cls(load_hook(spec), (settings.get("transform_on_error") or "pass").lower())

    def apply(self, records: Sequence[Record]) -> list[Record]:
        out: list[Record] = []
        for record in records:
            if not isinstance(record.payload, dict):
                out.append(record)
                continue
            try:
                # The hook gets its own copy: it may mutate freely.
                result = self.hook(copy.deepcopy(record.payload), record.kind)
            except Exception as exc:  # noqa: BLE001 - user code
                metrics.TRANSFORM.labels(f"error_{self.on_error}").inc()
                log.warning(
                    "transform raised %s on a %s record; %s",
                    type(exc).__name__,
                    record.kind,
                    "forwarding it unchanged" if self.on_error == "pass" else "dropping it",
                )
                if self.on_error == "pass":
                    out.append(record)
                else:
                    metrics.DROPPED.labels("all", "transform_error").inc()
                continue
            if result is None:
                metrics.TRANSFORM.labels("dropped").inc()
                metrics.DROPPED.labels("all", "transform_dropped").inc()
                continue
            produced = result if isinstance(result, list) else [result]
            for item in produced:
                if isinstance(item, dict):
                    out.append(record._replace(payload=json_safe(item)))
                else:
                    metrics.DROPPED.labels("all", "transform_bad_return").inc()
                    log.warning("transform returned %s for a %s record; dropped", type(item).__name__, record.kind)
            metrics.TRANSFORM.labels("ok").inc()
        return out


class RowTransformer:
    """`WAREHOUSE_TRANSFORM=module:function`: called as `function(row, kind)` on each row
    of the warehouse and lake copy only (Mixpanel never sees it). Returns the row (a new
    dict or the same one, modified), or None to keep the record out of the warehouse copy.
    Rows are shared by every row destination, so it runs once per request. A hook
    that raises keeps the row unchanged (logged and counted)."""

    def __init__(self, hook: Hook) -> None:
        self.hook = hook

    @classmethod
    def from_settings(cls, settings: Settings) -> RowTransformer | None:
        spec = settings.get("warehouse_transform")
        return cls(load_hook(spec)) if spec else None

    def apply(self, batch: RowBatch, kinds: dict[str, str]) -> RowBatch:
        tables: dict[str, list[dict]] = {}
        for table, rows in batch.tables.items():
            kept = []
            for row in rows:
                try:
                    result = self.hook(copy.deepcopy(row), kinds[table])
                except Exception as exc:  # noqa: BLE001 - user code
                    metrics.TRANSFORM.labels("warehouse_error_pass").inc()
                    log.warning("warehouse transform raised %s on a %s row; keeping it unchanged", type(exc).__name__, table)
                    kept.append(row)
                    continue
                if result is None:
                    batch.dropped["warehouse_transform_dropped"] += 1
                elif isinstance(result, dict):
                    kept.append(json_safe(result))
                else:
                    batch.dropped["warehouse_transform_bad_return"] += 1
            if kept:
                tables[table] = kept
        return RowBatch(tables, batch.dropped, batch.cast_failures)
