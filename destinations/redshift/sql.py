"""Redshift SQL from the one schema model: DDL, and parameterised multi-row INSERTs cut to size.

Pure functions, no I/O. Every value travels as a bound parameter (a string, as the Data
API takes them); the SQL text holds only identifiers (validated, then quoted), the
placeholders, and the constants NULL and '' (the Data API refuses empty and null
parameter values). `properties` and other JSON columns are SUPER, loaded with
JSON_PARSE(<placeholder>).

The same statements run on both paths; only the placeholder spelling differs (`:v0` for
the Data API, `$1` for the PostgreSQL protocol).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from destinations.rows import json_safe, text
from destinations.schema import Column, TableSchema

#: Redshift's VARCHAR limit, in bytes. Longer values are refused row by row before sending.
VARCHAR_MAX_BYTES = 65535
REDSHIFT_TYPES = {
    "STRING": f"VARCHAR({VARCHAR_MAX_BYTES})",
    "INT64": "BIGINT",
    "FLOAT64": "DOUBLE PRECISION",
    "BOOL": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMP",
    "JSON": "SUPER",
}
# Unquoted Redshift identifiers are case-insensitive and lower-cased (quoted ones too, unless
# enable_case_sensitive_identifier is on): we lower-case ourselves so PostgreSQL agrees.
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_$]{0,126}$")
#: Per-parameter overhead in a Data API request ({"name":"v123","value":"..."}), for the budget.
PARAMETER_OVERHEAD = 32
#: The PostgreSQL protocol counts parameters in 16 bits; stay well below.
MAX_PARAMETERS = 32_000

Placeholder = Callable[[int], str]


def data_api_placeholder(n: int) -> str:
    return f":v{n}"


def postgres_placeholder(n: int) -> str:
    return f"${n + 1}"


def identifier(name: str, what: str = "identifier") -> str:
    """`name` lower-cased and double-quoted; ValueError unless it is a plain identifier."""
    lowered = name.lower()
    if not IDENTIFIER.match(lowered):
        raise ValueError(f"{what} {name!r} must match {IDENTIFIER.pattern} (after lower-casing)")
    return f'"{lowered}"'


def qualified(schema: str, table: str) -> str:
    return f"{identifier(schema, 'schema')}.{identifier(table, 'table')}"


# --- DDL ------------------------------------------------------------------------------------


def column_ddl(column: Column) -> str:
    null = " NOT NULL" if column.mode == "REQUIRED" else ""
    return f"{identifier(column.name, 'column')} {REDSHIFT_TYPES[column.type]}{null}"


def create_schema(schema: str) -> str:
    return f"CREATE SCHEMA IF NOT EXISTS {identifier(schema, 'schema')}"


def create_table(schema: str, table: TableSchema) -> str:
    """No SORTKEY/DISTKEY: Redshift then applies automatic table optimisation (SORTKEY AUTO,
    DISTSTYLE AUTO), and the statement runs unchanged on PostgreSQL. See docs/redshift.md."""
    columns = ",\n  ".join(column_ddl(c) for c in table.columns)
    return f"CREATE TABLE IF NOT EXISTS {qualified(schema, table.name)} (\n  {columns}\n)"


def drop_table(schema: str, table: str) -> str:
    return f"DROP TABLE IF EXISTS {qualified(schema, table)}"


def existing_tables(placeholder: Placeholder, count: int) -> str:
    """Which of `count` table names exist in a schema: parameters (schema, name, name, ...)."""
    names = ", ".join(placeholder(i + 1) for i in range(count))
    return f"SELECT table_name FROM information_schema.tables WHERE table_schema = {placeholder(0)} AND table_name IN ({names})"


# --- values ---------------------------------------------------------------------------------


class RowRefused(ValueError):
    """A row Redshift cannot take as it is; the message names the column, never the value."""


def encode(value: Any, column: Column) -> str | None:
    """A row value as the string parameter Redshift converts to the column's type."""
    if value is None:
        return None
    if column.type == "JSON":
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return json.dumps(json_safe(value), ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, (int, str)):
        out = str(value)
    else:
        out = text(value) or ""
    if column.type == "STRING":
        if "\x00" in out:
            raise RowRefused(f"column {column.name} holds a NUL character, which Redshift text cannot store")
        if len(out) * 4 > VARCHAR_MAX_BYTES and len(out.encode("utf-8")) > VARCHAR_MAX_BYTES:
            raise RowRefused(f"column {column.name} is over Redshift's VARCHAR limit of {VARCHAR_MAX_BYTES} bytes")
    return out


@dataclass(frozen=True)
class EncodedRow:
    index: int  # position in the write
    values: tuple[str | None, ...]
    nbytes: int  # what its values cost in a request


def encode_rows(table: TableSchema, rows: Sequence[dict[str, Any]]) -> tuple[list[EncodedRow], list[tuple[int, str]]]:
    """Rows as parameter strings, plus (index, reason) for rows refused before sending."""
    columns = table.columns
    encoded: list[EncodedRow] = []
    refused: list[tuple[int, str]] = []
    for index, row in enumerate(rows):
        try:
            values = tuple(encode(row.get(c.name), c) for c in columns)
        except RowRefused as exc:
            refused.append((index, str(exc)))
            continue
        size = sum(len(v.encode("utf-8")) + PARAMETER_OVERHEAD for v in values if v)
        encoded.append(EncodedRow(index, values, size))
    return encoded, refused


# --- INSERT statements ----------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    sql: str
    params: tuple[str, ...]
    rows: tuple[int, ...]  # indices into the write

    @property
    def nbytes(self) -> int:
        return len(self.sql.encode("utf-8")) + sum(len(p.encode("utf-8")) + PARAMETER_OVERHEAD for p in self.params)


class InsertBuilder:
    """Packs encoded rows into INSERT ... VALUES statements of at most `max_bytes` (SQL text
    plus parameters) and `max_rows` rows each."""

    def __init__(self, schema: str, table: TableSchema, placeholder: Placeholder, max_bytes: int, max_rows: int = 1000) -> None:
        self.table = table
        self.placeholder = placeholder
        self.max_bytes = max_bytes
        self.max_rows = max(1, min(max_rows, MAX_PARAMETERS // max(1, len(table.columns))))
        names = ", ".join(identifier(c.name, "column") for c in table.columns)
        self.head = f"INSERT INTO {qualified(schema, table.name)} ({names}) VALUES "
        self.json = tuple(c.type == "JSON" for c in table.columns)

    def _tuple(self, row: EncodedRow, params: list[str]) -> str:
        parts = []
        for value, is_json in zip(row.values, self.json, strict=True):
            if value is None:
                parts.append("NULL")
            elif value == "":
                parts.append("''")
            else:
                mark = self.placeholder(len(params))
                params.append(value)
                parts.append(f"JSON_PARSE({mark})" if is_json else mark)
        return "(" + ", ".join(parts) + ")"

    def single(self, row: EncodedRow) -> Statement:
        params: list[str] = []
        return Statement(self.head + self._tuple(row, params), tuple(params), (row.index,))

    def statements(self, rows: Sequence[EncodedRow]) -> tuple[list[Statement], list[tuple[int, str]]]:
        """Statements for `rows`, plus (index, reason) for any row too large for a statement alone."""
        out: list[Statement] = []
        refused: list[tuple[int, str]] = []
        tuples: list[str] = []
        params: list[str] = []
        indices: list[int] = []
        size = len(self.head)

        def close() -> None:
            nonlocal tuples, params, indices, size
            if tuples:
                out.append(Statement(self.head + ", ".join(tuples), tuple(params), tuple(indices)))
            tuples, params, indices, size = [], [], [], len(self.head)

        for row in rows:
            mark = len(params)
            piece = self._tuple(row, params)
            cost = len(piece) + 2 + row.nbytes
            if tuples and (size + cost > self.max_bytes or len(tuples) >= self.max_rows):
                del params[mark:]
                close()
                piece = self._tuple(row, params)
            if len(self.head) + len(piece) + row.nbytes > self.max_bytes:
                del params[len(params) - sum(1 for v in row.values if v) :]
                reason = f"row is too large for one statement ({row.nbytes} bytes; the limit is {self.max_bytes})"
                refused.append((row.index, reason))
                continue
            tuples.append(piece)
            indices.append(row.index)
            size += cost
        close()
        return out, refused
