"""`redshift`: rows into Amazon Redshift tables, through the Data API or a direct connection.

Reads: REDSHIFT_SCHEMA_NAME (default `public`), REDSHIFT_DATABASE, and one way in:

* Data API, serverless: REDSHIFT_WORKGROUP.
* Data API, provisioned cluster: REDSHIFT_CLUSTER_IDENTIFIER with REDSHIFT_DB_USER
  (temporary credentials) or REDSHIFT_SECRET_ARN (Secrets Manager; also usable with a
  workgroup).
  Both take REDSHIFT_REGION, REDSHIFT_ACCESS_KEY_ID, REDSHIFT_SECRET_ACCESS_KEY,
  REDSHIFT_SESSION_TOKEN (without keys boto3's standard credential chain applies) and
  REDSHIFT_ENDPOINT_URL (else AWS_ENDPOINT_URL_REDSHIFT_DATA).
* Direct connection (PostgreSQL protocol, psycopg): REDSHIFT_HOST, REDSHIFT_PORT (5439),
  REDSHIFT_USER, REDSHIFT_PASSWORD, REDSHIFT_SSLMODE (`require`), REDSHIFT_MAX_CONNECTIONS (8).

Tuning: REDSHIFT_POLL_TIMEOUT_SECONDS (100), REDSHIFT_STATEMENT_TIMEOUT_SECONDS (50, under the
60-second attempt timeout).

Tables are created with CREATE TABLE IF NOT EXISTS from the one schema model
(destinations/schema.py); rows go in as parameterised multi-row INSERTs cut under the
Data API's 100 KB statement limit. A value the table refuses rejects that row alone (the
statement is split until the row is found); the rest of the write lands.
"""

from __future__ import annotations

from typing import Any, Protocol

from core.settings import ConfigError, Settings
from destinations.base import Capabilities, Rejection, RowSink, SinkResult, TransientError
from destinations.redshift import sql
from destinations.redshift.config import RedshiftConfig
from destinations.redshift.errors import MissingTable
from destinations.schema import TableSchema, build_schemas

__all__ = ["RedshiftConfig", "RedshiftSink"]


class Transport(Protocol):
    statement_bytes: int

    @staticmethod
    def placeholder(n: int) -> str: ...

    def run(self, statements: list[sql.Statement]) -> list[str | None]: ...

    def batch(self, sqls: list[str]) -> None: ...

    def query(self, sql: str, params: list[str]) -> list[list[Any]]: ...

    def close(self) -> None: ...


def make_transport(config: RedshiftConfig) -> Transport:
    if config.mode == "direct":
        try:
            from destinations.redshift.direct import Direct
        except ImportError as exc:
            raise ConfigError(f"the redshift direct connection needs psycopg installed: {exc.name}") from None
        return Direct(config)
    from destinations.redshift.data_api import DataApi

    return DataApi(config)


class RedshiftSink(RowSink):
    name = "redshift"

    def __init__(self, settings: Settings) -> None:
        self.config = RedshiftConfig.from_settings(settings)
        self.tables: dict[str, TableSchema] = {t.name: t for t in build_schemas(settings).values()}
        for table in self.tables.values():
            try:
                sql.create_table(self.config.schema, table)
            except ValueError as exc:
                raise ConfigError(f"redshift: {exc}") from None
        self.transport = make_transport(self.config)
        if self.config.mode == "direct":
            self.capabilities = Capabilities("rows", max_rows=10_000, max_bytes=4 * 1024 * 1024, attempt_timeout=60.0)
        else:
            # A write is a few statements of under 100 KB each, submitted together, then polled.
            self.capabilities = Capabilities("rows", max_rows=5_000, max_bytes=1024 * 1024, attempt_timeout=120.0)

    # -- set-up and drop ----------------------------------------------------------------------
    def setup(self) -> None:
        statements = [sql.create_schema(self.config.schema)]
        statements += [sql.create_table(self.config.schema, t) for t in self.tables.values()]
        for attempt in range(3):
            try:
                self.transport.batch(statements)
                return
            except Exception as exc:
                # Two workers creating the same table at once: PostgreSQL reports the loser as a
                # duplicate; the next round sees the table and does nothing.
                if attempt == 2 or not any(w in str(exc) for w in ("already exists", "duplicate key")):
                    raise

    def drop(self, tables: list[str]) -> list[str]:
        names = [t.lower() for t in tables]
        found = self.transport.query(sql.existing_tables(self.transport.placeholder, len(names)), [self.config.schema, *names])
        present = sorted({str(row[0]) for row in found})
        if present:
            self.transport.batch([sql.drop_table(self.config.schema, t) for t in present])
        return [f"{self.config.schema}.{t}" for t in present]

    # -- writes -------------------------------------------------------------------------------
    def write(self, table: str, items: list[dict[str, Any]]) -> SinkResult:
        schema = self.tables.get(table)
        if schema is None:
            raise TransientError(f"redshift: no table definition for {table!r}")
        builder = sql.InsertBuilder(self.config.schema, schema, self.transport.placeholder, self.transport.statement_bytes)
        encoded, refused = sql.encode_rows(schema, items)
        statements, too_large = builder.statements(encoded)
        rejected = [Rejection(i, reason) for i, reason in refused + too_large]
        by_index = {row.index: row for row in encoded}
        try:
            rejected += self._insert(builder, statements, by_index)
        except MissingTable:
            self.setup()  # dropped behind our back: create it again, once
            rejected += self._insert(builder, statements, by_index)
        rejected.sort(key=lambda r: r.index)
        return SinkResult(len(items) - len(rejected), tuple(rejected))

    def _insert(
        self, builder: sql.InsertBuilder, statements: list[sql.Statement], rows: dict[int, sql.EncodedRow]
    ) -> list[Rejection]:
        """Run statements; split any that a value made fail until the row is found."""
        rejected: list[Rejection] = []
        while statements:
            outcomes = self.transport.run(statements)
            again: list[sql.Statement] = []
            for statement, outcome in zip(statements, outcomes, strict=True):
                if outcome is None:
                    continue
                if outcome == "":  # rolled back with the failing one: run it again
                    again.append(statement)
                elif len(statement.rows) == 1:
                    rejected.append(Rejection(statement.rows[0], f"refused by Redshift: {outcome}"))
                else:
                    half = len(statement.rows) // 2
                    for part in (statement.rows[:half], statement.rows[half:]):
                        again += builder.statements([rows[i] for i in part])[0]
            statements = again
        return rejected

    def health(self) -> dict[str, Any]:
        return {"mode": self.config.mode, "target": self.config.where, "schema": self.config.schema}

    def close(self) -> None:
        self.transport.close()
