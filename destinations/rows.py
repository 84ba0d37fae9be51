"""records -> rows: pure functions, no I/O.

Columns are filled from well-known fields; `properties` keeps every original
property under its original key (`$` included), so nothing is lost and no user
property can overwrite a column. Rows hold JSON-ready values only: timestamps are
RFC 3339 strings in UTC, `properties` is a JSON object (or list, for `$unset`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import orjson

from core.records import Kind, Record
from destinations.schema import Column, TableSchema

PROFILE_OPERATIONS = ("$set", "$set_once", "$add", "$append", "$union", "$remove", "$unset", "$delete", "$ignore_alias")
MS_THRESHOLD = 1e11  # above this a numeric time is milliseconds (year 5138 in seconds)
MIN_EPOCH = datetime(1, 1, 1, tzinfo=UTC).timestamp()
MAX_EPOCH = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
MAX_DEPTH = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Row = dict[str, Any]
# A row encoded once: (its insert hour "YYYY-MM-DDTHH", its NDJSON line without the newline).
Line = tuple[str, bytes]
line_of = itemgetter(1)  # a Line's bytes


@dataclass
class RowBatch:
    """Rows per table name, plus counts of what could not become a row (reason -> n)."""

    tables: dict[str, list[Row]] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    cast_failures: Counter = field(default_factory=Counter)

    _lines: dict[str, list[Line]] = field(default_factory=dict, repr=False, compare=False)

    def lines(self, table: str) -> list[Line]:
        """The table's rows as (hour, NDJSON line) pairs, encoded once per request however
        many destinations write them."""
        lines = self._lines.get(table)
        if lines is None:
            lines = self._lines[table] = encode_lines(self.tables[table])
        return lines

    def encoded_bytes(self, table: str) -> int:
        """The size of the table's NDJSON, newlines included: what delivery buffers count."""
        lines = self.lines(table)
        return sum(map(len, map(line_of, lines))) + len(lines)


# --- value helpers ----------------------------------------------------------------------


_SECONDS: dict[int, str] = {}  # whole second -> "YYYY-MM-DDTHH:MM:SS": a batch's events share a few
_SECONDS_KEPT = 4096


def format_timestamp(epoch_seconds: float) -> str:
    """RFC 3339 UTC with microseconds, `2024-11-29T12:00:00.123456Z`, rounded as datetime
    rounds (half to even). Two calls per event make this a hot spot: the date and time of
    day are formatted once per whole second, the microseconds as datetime splits them (the
    fraction `epoch_seconds - whole` is exact for a double, as `math.modf`'s is)."""
    if epoch_seconds >= 0:
        whole = int(epoch_seconds)
        micro = round((epoch_seconds - whole) * 1e6)
        if micro >= 1_000_000:
            whole, micro = whole + 1, micro - 1_000_000
        prefix = _SECONDS.get(whole)
        if prefix is None:
            if len(_SECONDS) >= _SECONDS_KEPT:
                _SECONDS.clear()
            prefix = _SECONDS[whole] = datetime.fromtimestamp(whole, UTC).isoformat()[:-6]
        return "%s.%06dZ" % (prefix, micro)  # noqa: UP031 - twice as fast as the f-string's format spec
    try:
        moment = datetime.fromtimestamp(epoch_seconds, UTC)
    except (OverflowError, OSError, ValueError):  # a platform's gmtime range: count from the epoch instead
        moment = _EPOCH + timedelta(seconds=epoch_seconds)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def hour_of(row: Row) -> str:
    """The row's insert hour, `YYYY-MM-DDTHH`: lakes partition by it."""
    return (row.get("insert_time") or "")[:13]


def parse_time(value: Any) -> float | None:
    """Epoch seconds from seconds, milliseconds, floats, numeric strings or ISO 8601; None if
    unusable (whatever the client sent: the row then takes the receive time). Never raises."""
    if value.__class__ is float:  # what the SDKs send: tested first, it is on every event's path
        seconds = value
    elif isinstance(value, bool) or value is None:
        return None
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            return _iso_seconds(text)
    elif isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any double: as unusable as any other odd time
            return None
    else:
        return None
    if abs(seconds) >= MS_THRESHOLD:
        seconds /= 1000.0
    # NaN and the infinities fail the range test too.
    return seconds if MIN_EPOCH <= seconds <= MAX_EPOCH else None


def _iso_seconds(text: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        seconds = parsed.timestamp()
    except (OverflowError, ValueError):
        return None
    # An offset can carry year 1 or 9999 past what a UTC timestamp column holds.
    return seconds if MIN_EPOCH <= seconds <= MAX_EPOCH else None


def json_safe(value: Any, depth: int = 0) -> Any:
    """A JSON-serialisable copy of `value`. Unknown types become strings; nesting deeper
    than MAX_DEPTH becomes a string; cycles are cut. Never raises."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return _repr(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return _repr(value)


def _repr(value: Any) -> str:
    try:
        return json.dumps(value, default=str)[:10_000]
    except (TypeError, ValueError, RecursionError):
        try:
            return str(value)[:10_000]
        except Exception:  # noqa: BLE001 - a user object whose __str__ raises
            return f"<{type(value).__name__}>"


def text(value: Any) -> str | None:
    """A column value for STRING: strings as is, numbers as their JSON text, objects as JSON."""
    if value is None or value.__class__ is str or isinstance(value, str):  # the exact type first: faster
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value) if isinstance(value, int) or math.isfinite(value) else str(value)
    return _repr(value)


_MISSING = object()


def cast(value: Any, column: Column) -> Any:
    """Cast a property to an extra column's type; raises ValueError when it cannot."""
    if value is None:
        return None
    kind = column.type
    if kind == "STRING":
        return text(value)
    if kind == "JSON":
        return json_safe(value)
    if kind == "BOOL":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0"}:
            return value.strip().lower() in {"true", "1"}
        raise ValueError
    if kind == "INT64":
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise ValueError
            return value
        if isinstance(value, str):
            number = float(value.strip())
            if number.is_integer() and -(2**63) <= number < 2**63:
                return int(number)
        raise ValueError
    if kind == "FLOAT64":
        if isinstance(value, bool):
            raise ValueError
        number = float(value) if isinstance(value, (int, float, str)) else None
        if number is None or not math.isfinite(number):
            raise ValueError
        return number
    if kind == "TIMESTAMP":
        seconds = parse_time(value)
        if seconds is None:
            raise ValueError
        return format_timestamp(seconds)
    raise ValueError


def _extras(row: Row, source: Any, table: TableSchema, batch: RowBatch) -> None:
    for column in table.extra_columns:
        value = source.get(column.source, None) if isinstance(source, dict) else None
        try:
            row[column.name] = cast(value, column)
        except (ValueError, TypeError, OverflowError):
            row[column.name] = None
            batch.cast_failures[f"{table.name}.{column.name}"] += 1


# --- per kind -----------------------------------------------------------------------------


def insert_id(payload: dict, properties: dict) -> str:
    explicit = properties.get("$insert_id")
    if explicit not in (None, ""):
        return text(explicit)  # type: ignore[return-value]
    metadata = payload.get("$mp_metadata")
    if isinstance(metadata, dict) and metadata.get("$mp_event_id") not in (None, ""):
        return text(metadata["$mp_event_id"])  # type: ignore[return-value]
    basis = [payload.get("event"), properties.get("distinct_id"), properties.get("time"), properties]
    try:
        canonical = json.dumps(basis, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        canonical = json.dumps(json_safe(basis), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return digest[:32]


# An event's own keys; any other top-level key ($mp_metadata, ...) is kept in `properties`.
_EVENT_KEYS = frozenset(("event", "properties"))


def _event_properties(payload: dict, properties: Any) -> dict:
    """An event's `properties` as its row keeps them, when the event is not simply
    `{"event": ..., "properties": {...}}`."""
    if not isinstance(properties, dict):
        properties = {} if properties is None else {"properties": properties}
    if not payload.keys() <= _EVENT_KEYS:
        # Top-level extras beside `properties` are kept losslessly too, in a copy.
        properties = dict(properties)
        for key, value in payload.items():
            if key not in _EVENT_KEYS and key not in properties:
                properties[key] = value
    return properties


def event_row(record: Record, table: TableSchema, batch: RowBatch, insert_time: str) -> Row:
    payload = record.payload
    properties = payload.get("properties")
    # What every SDK sends, `{"event": ..., "properties": {...}}`, needs no more checks.
    if properties.__class__ is not dict or len(payload) != 2 or "event" not in payload:
        properties = _event_properties(payload, properties)
    # Unless the event had top-level extras, the row shares the record's `properties`: records
    # and rows are read-only (a WAREHOUSE_TRANSFORM hook gets a deep copy), and a copy per
    # event cost 0.8 µs.
    get = properties.get
    seconds = get("time")
    if seconds.__class__ is not float or not 0.0 <= seconds < MS_THRESHOLD:  # a float in seconds is as is
        seconds = parse_time(seconds)
    # Each column tests for the common case (a string) before calling text(): 50 events a
    # browser batch, 6 columns each.
    event, token, device, explicit, user, distinct = (
        payload.get("event"),
        get("token"),
        get("$device_id"),
        get("$insert_id"),
        get("$user_id"),
        get("distinct_id"),
    )
    row: Row = {
        "event": event if event.__class__ is str else text(event),
        "event_time": format_timestamp(record.received_at if seconds is None else seconds),
        "insert_time": insert_time,
        "token": token if token.__class__ is str else text(token),
        "device_id": device if device.__class__ is str else text(device),
        "insert_id": explicit if explicit.__class__ is str and explicit else insert_id(payload, properties),
        "user_id": user if user.__class__ is str else text(user),
        "distinct_id": distinct if distinct.__class__ is str else text(distinct),
        "properties": properties,
    }
    if table.extra_columns:
        _extras(row, properties, table, batch)
    return row


def profile_rows(record: Record, table: TableSchema, batch: RowBatch, insert_time: str) -> list[Row]:
    payload = record.payload
    operations = [op for op in PROFILE_OPERATIONS if op in payload]
    if not operations:
        batch.dropped["no_operation"] += 1
        return []
    common: Row = {"token": text(payload.get("$token"))}
    if record.kind == "user":
        common["distinct_id"] = text(payload.get("$distinct_id"))
        common["ip"] = text(payload.get("$ip"))
    else:
        common["group_key"] = text(payload.get("$group_key"))
        common["group_id"] = text(payload.get("$group_id"))
    rows = []
    for op in operations:
        value = payload[op]
        row = dict(common, insert_time=insert_time, operation=op, properties=value)
        _extras(row, value, table, batch)
        rows.append({name: row.get(name) for name in table.column_names})
    return rows


def to_rows(records: Iterable[Record], schemas: dict[Kind, TableSchema]) -> RowBatch:
    batch = RowBatch()
    received_at, insert_time = None, ""
    kind, table, bucket = None, None, []
    for record in records:
        if not isinstance(record.payload, dict):
            batch.dropped["not_an_object"] += 1
            continue
        if record.received_at != received_at:  # one request's records share it: format once
            received_at, insert_time = record.received_at, format_timestamp(record.received_at)
        if record.kind != kind:  # one request's records share a kind too: look its table up once
            kind, table = record.kind, schemas[record.kind]
            bucket = batch.tables.setdefault(table.name, [])
        if kind == "event":
            bucket.append(event_row(record, table, batch, insert_time))
        else:
            bucket.extend(profile_rows(record, table, batch, insert_time))
    batch.tables = {name: rows for name, rows in batch.tables.items() if rows}
    return batch


def encode_lines(rows: Iterable[Row]) -> list[Line]:
    """[(hour_of(row), dumps_row(row))] for the rows, in one loop: a request's rows share one
    `insert_time` (the same string), so its hour is cut once, and orjson is called directly."""
    lines: list[Line] = []
    seen: Any = _MISSING
    hour = ""
    for row in rows:
        when = row.get("insert_time")
        if when is not seen:
            seen, hour = when, hour_of(row)
        try:
            line = b"".join((orjson.dumps(row), b""))  # sized exactly: see dumps_row
        except (TypeError, orjson.JSONEncodeError):
            line = dumps_row(row)
        lines.append((hour, line))
    return lines


def dumps_row(row: Row) -> bytes:
    """One NDJSON line (UTF-8, no newline). Rows from JSON input serialise directly (orjson);
    anything odd a transform produced is made safe first, so this never raises.

    Lines wait in delivery buffers, so each is copied to its exact size: orjson returns its
    working buffer as the bytes object (8 KiB for a 900-byte row) and never shrinks it. Kept
    as they came, 64 MiB of buffered lines (MAX_BUFFER_BYTES) held about 500 MiB, and a
    worker with a hanging destination reached 960 MiB RSS (bench/RESULTS.md, "Isolation",
    now 235 MiB). The copy costs about 0.07 us a row."""
    try:
        return b"".join((orjson.dumps(row), b""))
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(json_safe(row), ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
