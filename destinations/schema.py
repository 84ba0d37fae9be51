"""The one definition of the events, users and groups tables.

Every warehouse DDL, lake row and Pub/Sub message is derived from `build_schemas()`:
no other list of columns exists. Extra columns (`EVENTS_EXTRA_COLUMNS`, ...) are
parsed here and appended to their table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from core.records import Kind
from core.settings import ConfigError, Settings

TYPE_ALIASES = {
    "STRING": "STRING",
    "INT64": "INT64",
    "INTEGER": "INT64",
    "INT": "INT64",
    "FLOAT64": "FLOAT64",
    "FLOAT": "FLOAT64",
    "NUMERIC": "FLOAT64",
    "BOOL": "BOOL",
    "BOOLEAN": "BOOL",
    "TIMESTAMP": "TIMESTAMP",
    "JSON": "JSON",
}
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # BigQuery spelling: STRING, INT64, FLOAT64, BOOL, TIMESTAMP, JSON
    mode: str = "NULLABLE"  # or REQUIRED
    source: str | None = None  # for extra columns: the property the value comes from


@dataclass(frozen=True)
class TableSchema:
    kind: Kind
    name: str
    columns: tuple[Column, ...]
    partition_by: str | None
    cluster_by: tuple[str, ...]

    @cached_property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @cached_property
    def extra_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.source is not None)


BASE_COLUMNS: dict[Kind, tuple[Column, ...]] = {
    "event": (
        Column("event", "STRING"),
        Column("event_time", "TIMESTAMP", "REQUIRED"),
        Column("insert_time", "TIMESTAMP", "REQUIRED"),
        Column("token", "STRING"),
        Column("device_id", "STRING"),
        Column("insert_id", "STRING", "REQUIRED"),
        Column("user_id", "STRING"),
        Column("distinct_id", "STRING"),
        Column("properties", "JSON"),
    ),
    "user": (
        Column("token", "STRING"),
        Column("distinct_id", "STRING"),
        Column("ip", "STRING"),
        Column("insert_time", "TIMESTAMP", "REQUIRED"),
        Column("operation", "STRING", "REQUIRED"),
        Column("properties", "JSON"),
    ),
    "group": (
        Column("token", "STRING"),
        Column("group_key", "STRING"),
        Column("group_id", "STRING"),
        Column("operation", "STRING", "REQUIRED"),
        Column("insert_time", "TIMESTAMP", "REQUIRED"),
        Column("properties", "JSON"),
    ),
}
LAYOUT: dict[Kind, tuple[str | None, tuple[str, ...]]] = {
    "event": ("event_time", ("event",)),
    "user": ("insert_time", ("distinct_id",)),
    "group": ("insert_time", ("group_id",)),
}
EXTRA_VARIABLES: dict[Kind, str] = {
    "event": "EVENTS_EXTRA_COLUMNS",
    "user": "USERS_EXTRA_COLUMNS",
    "group": "GROUPS_EXTRA_COLUMNS",
}


def parse_extra_columns(spec: str | None, variable: str, taken: tuple[str, ...]) -> tuple[Column, ...]:
    """`utm_source:STRING,$browser:browser:STRING` -> columns. Raises ConfigError naming the entry."""
    if not spec or not spec.strip():
        return ()
    columns: list[Column] = []
    names = set(taken)
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        parts = entry.rsplit(":", 2) if entry.count(":") >= 2 else entry.split(":")
        if len(parts) == 2:
            source, type_name = parts
            name = re.sub(r"[^A-Za-z0-9_]", "_", source.lstrip("$")) or "_"
            if name[0].isdigit():
                name = "_" + name
        elif len(parts) == 3:
            source, name, type_name = parts
        else:
            raise ConfigError(f"{variable}: {entry!r} must be property:TYPE or property:column:TYPE")
        source, name, type_name = source.strip(), name.strip(), type_name.strip().upper()
        if not source:
            raise ConfigError(f"{variable}: {entry!r} names no property")
        if type_name not in TYPE_ALIASES:
            raise ConfigError(f"{variable}: {entry!r} has unknown type {type_name!r} (use {', '.join(sorted(TYPE_ALIASES))})")
        if not COLUMN_NAME.match(name):
            raise ConfigError(f"{variable}: column name {name!r} must match {COLUMN_NAME.pattern}")
        if name.lower() in {n.lower() for n in names}:
            raise ConfigError(f"{variable}: column {name!r} already exists in the table")
        names.add(name)
        columns.append(Column(name, TYPE_ALIASES[type_name], "NULLABLE", source))
    return tuple(columns)


def build_schemas(settings: Settings) -> dict[Kind, TableSchema]:
    schemas: dict[Kind, TableSchema] = {}
    for kind, base in BASE_COLUMNS.items():
        variable = EXTRA_VARIABLES[kind]
        extras = parse_extra_columns(settings.get(variable), variable, tuple(c.name for c in base))
        partition, cluster = LAYOUT[kind]
        schemas[kind] = TableSchema(kind, settings.table_names[kind], base + extras, partition, cluster)
    return schemas

