"""`redshift` against PostgreSQL 15 (direct connection) and the Data API test server in
front of the same database; one schema per run. The direct adapter reads back over the
PostgreSQL protocol, the Data API adapter through the Data API (GetStatementResult)."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.destinations.adapters.base import Adapter
from tests.support.standins.redshift import DATABASE, WORKGROUP, RedshiftStandin


class RedshiftAdapter(Adapter):
    name = "redshift"
    standin = "redshift_standin"

    def __init__(self, standin: RedshiftStandin, unique: str) -> None:
        super().__init__(standin, unique)
        self.schema = f"conf_{self.variant}_{unique}"
        self.other = f"{self.schema}_other"

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def _admin(self, *statements: str) -> None:
        with self.standin.connect() as conn:
            for statement in statements:
                conn.execute(statement)

    def plant_foreign(self) -> None:
        self._admin(
            f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"',
            f'CREATE SCHEMA IF NOT EXISTS "{self.other}"',
            f'CREATE TABLE "{self.schema}"."events_archive" (note varchar(20))',
            f'CREATE TABLE "{self.other}"."events" (note varchar(20))',
            f'INSERT INTO "{self.schema}"."events_archive" VALUES (\'not ours\')',
            f'INSERT INTO "{self.other}"."events" VALUES (\'not ours\')',
        )

    def foreign_intact(self) -> bool:
        with self.standin.connect() as conn:
            kept = [
                conn.execute(f'SELECT note FROM "{schema}"."{table}"').fetchall()
                for schema, table in ((self.schema, "events_archive"), (self.other, "events"))
            ]
        return kept == [[("not ours",)], [("not ours",)]]

    def cleanup(self) -> None:
        self._admin(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE', f'DROP SCHEMA IF EXISTS "{self.other}" CASCADE')


class RedshiftDirectAdapter(RedshiftAdapter):
    variant = "direct"

    def env(self) -> dict[str, str]:
        return self.standin.direct_env(self.schema)

    def rows(self, table: str) -> list[dict[str, Any]]:
        import psycopg
        from psycopg.rows import dict_row

        with self.standin.connect() as conn:
            try:
                return conn.cursor(row_factory=dict_row).execute(f'SELECT * FROM "{self.schema}"."{table}"').fetchall()
            except psycopg.errors.UndefinedTable:
                return []


class RedshiftDataApiAdapter(RedshiftAdapter):
    variant = "data_api"

    def env(self) -> dict[str, str]:
        return self.standin.data_api_env(self.schema)

    def rows(self, table: str) -> list[dict[str, Any]]:
        client = self.standin.client()
        reply = client.execute_statement(
            Sql=f'SELECT * FROM "{self.schema}"."{table}"', WorkgroupName=WORKGROUP, Database=DATABASE
        )
        while (described := client.describe_statement(Id=reply["Id"]))["Status"] not in ("FINISHED", "FAILED", "ABORTED"):
            time.sleep(0.05)
        if described["Status"] != "FINISHED":
            if "does not exist" in described.get("Error", ""):
                return []
            raise AssertionError(described.get("Error"))
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = client.get_statement_result(Id=reply["Id"], **({"NextToken": token} if token else {}))
            columns = [(c["name"], c["typeName"]) for c in page["ColumnMetadata"]]
            for record in page["Records"]:
                row: dict[str, Any] = {}
                for (name, type_name), field in zip(columns, record, strict=True):
                    value = None if field.get("isNull") else next(iter(field.values()))
                    row[name] = json.loads(value) if type_name == "super" and value is not None else value
                out.append(row)
            token = page.get("NextToken")
            if not token:
                return out


ADAPTERS = [RedshiftDirectAdapter, RedshiftDataApiAdapter]
