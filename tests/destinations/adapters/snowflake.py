"""`snowflake` against fakesnow in server mode, on the insert and the stage load paths.

Each adapter gets a database of its own. Rows are read back with the real connector;
`properties` comes back as the VARIANT's JSON text and is parsed here (fakesnow cannot
evaluate `properties:"$browser"` paths, real Snowflake can)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from tests.destinations.adapters.base import Adapter
from tests.support.standins.snowflake import SnowflakeStandin

SCHEMA = "MIXPANEL"


def read_table(standin: SnowflakeStandin, database: str, table: str) -> list[dict[str, Any]]:
    """Every row of DATABASE.MIXPANEL.<TABLE> as a dict with lower-case keys; VARIANT columns parsed."""
    exists = standin.query(
        f'SELECT COUNT(*) FROM "{database}".information_schema.tables WHERE table_schema = ? AND table_name = ?',
        (SCHEMA, table.upper()),
    )
    if not exists or not exists[0][0]:
        return []
    with standin.connect() as conn:
        cursor = conn.cursor()
        cursor.execute(f'SELECT * FROM "{database}"."{SCHEMA}"."{table.upper()}"')
        names = [d.name.lower() for d in cursor.description]
        variant = {d.name.lower() for d in cursor.description if d.type_code in (5, 9, 10)}  # VARIANT, OBJECT, ARRAY
        rows = []
        for values in cursor.fetchall():
            row = dict(zip(names, values, strict=True))
            for name in variant:
                if isinstance(row[name], str):
                    row[name] = json.loads(row[name])
            rows.append(row)
        return rows


class SnowflakeAdapter(Adapter):
    name = "snowflake"
    standin = "snowflake_standin"
    load_env: ClassVar[dict[str, str]] = {}

    def __init__(self, standin: SnowflakeStandin, unique: str) -> None:
        super().__init__(standin, unique)
        self.database = f"CONF_{self.variant.upper()}_{unique.upper()}"
        # Made here, before any proxy starts: two workers running the proxy's own `CREATE DATABASE
        # IF NOT EXISTS` at the same moment race in fakesnow (a DuckDB ATTACH answers "database ...
        # already exists"), where Snowflake's IF NOT EXISTS cannot fail. The proxy's setup still
        # runs it, against a database that exists, as it would against an operator's.
        standin.query(f'CREATE DATABASE IF NOT EXISTS "{self.database}"')

    def env(self) -> dict[str, str]:
        return self.standin.env(self.database, **self.load_env)

    def rows(self, table: str) -> list[dict[str, Any]]:
        return read_table(self.standin, self.database, table)

    def plant_foreign(self) -> None:
        for name in ("EVENTS_ARCHIVE", "OTHER"):
            self.standin.query(f'CREATE TABLE IF NOT EXISTS "{self.database}"."{SCHEMA}"."{name}" ("V" VARCHAR)')
            self.standin.query(f'INSERT INTO "{self.database}"."{SCHEMA}"."{name}" ("V") VALUES (?)', ("not ours",))

    def foreign_intact(self) -> bool:
        return all(
            self.standin.query(f'SELECT "V" FROM "{self.database}"."{SCHEMA}"."{name}"') == [("not ours",)]
            for name in ("EVENTS_ARCHIVE", "OTHER")
        )

    def cleanup(self) -> None:
        # fakesnow cannot DROP DATABASE; each adapter's database has a name of its own anyway.
        for name in ("EVENTS", "USERS", "GROUPS", "EVENTS_ARCHIVE", "OTHER"):
            self.standin.query(f'DROP TABLE IF EXISTS "{self.database}"."{SCHEMA}"."{name}"')


class SnowflakeInsertAdapter(SnowflakeAdapter):
    variant = "insert"


class SnowflakeStageAdapter(SnowflakeAdapter):
    variant = "stage"
    load_env: ClassVar[dict[str, str]] = {"snowflake_stage": "PROXY_STAGE"}


ADAPTERS = [SnowflakeInsertAdapter, SnowflakeStageAdapter]
