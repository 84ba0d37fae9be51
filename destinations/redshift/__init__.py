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

Tuning: REDSHIFT_POLL_TIMEOUT_SECONDS (100), REDSHIFT_STATEMENT_TIMEOUT_SECONDS (300).

Tables are created with CREATE TABLE IF NOT EXISTS from the one schema model
(destinations/schema.py); rows go in as parameterised multi-row INSERTs cut under the
Data API's 100 KB statement limit. A value the table refuses rejects that row alone (the
statement is split until the row is found); the rest of the write lands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from core.settings import ConfigError, Settings
from destinations.base import Capabilities, Rejection, RowSink, SinkResult, TransientError
from destinations.redshift import sql
from destinations.redshift.errors import MissingTable
from destinations.schema import TableSchema, build_schemas


@dataclass(frozen=True)
class RedshiftConfig:
    mode: str  # "data_api" | "direct"
    schema: str = "public"
    database: str | None = None
    # Data API
    workgroup: str | None = None
    cluster_identifier: str | None = None
    db_user: str | None = None
    secret_arn: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    poll_initial_seconds: float = 0.05
    poll_max_seconds: float = 2.0
    poll_timeout_seconds: float = 100.0
    # direct
    host: str | None = None
    port: int = 5439
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    sslmode: str = "require"
    max_connections: int = 8
    statement_timeout_seconds: float = 300.0

    @property
    def where(self) -> str:
        """Where rows go, for messages (never a secret)."""
        if self.mode == "direct":
            return f"{self.host}:{self.port}/{self.database}"
        return f"{'workgroup ' + self.workgroup if self.workgroup else 'cluster ' + str(self.cluster_identifier)}/{self.database}"

    @classmethod
    def from_settings(cls, settings: Settings) -> RedshiftConfig:
        get = settings.get
        schema = (get("redshift_schema_name") or "public").lower()
        try:
            sql.identifier(schema, "schema")
        except ValueError as exc:
            raise ConfigError(f"redshift_schema_name: {exc}") from None
        timeout = settings.get_float("redshift_statement_timeout_seconds", 300.0, 1)
        common: dict[str, Any] = {"schema": schema, "statement_timeout_seconds": timeout}
        if get("redshift_host"):
            return cls(
                mode="direct",
                database=settings.require("redshift_database", "redshift (direct connection)"),
                host=get("redshift_host"),
                port=settings.get_int("redshift_port", 5439, 1),
                user=settings.require("redshift_user", "redshift (direct connection)"),
                password=get("redshift_password"),
                sslmode=(get("redshift_sslmode") or "require").lower(),
                max_connections=settings.get_int("redshift_max_connections", 8, 1),
                **common,
            )
        workgroup, cluster = get("redshift_workgroup"), get("redshift_cluster_identifier")
        if not workgroup and not cluster:
            raise ConfigError(
                "redshift needs redshift_workgroup (serverless), redshift_cluster_identifier (provisioned) "
                "or redshift_host (direct connection)"
            )
        if workgroup and cluster:
            raise ConfigError("redshift: set redshift_workgroup or redshift_cluster_identifier, not both")
        if cluster and not (get("redshift_db_user") or get("redshift_secret_arn")):
            raise ConfigError("redshift_cluster_identifier needs redshift_db_user or redshift_secret_arn")
        return cls(
            mode="data_api",
            database=settings.require("redshift_database", "redshift"),
            workgroup=workgroup,
            cluster_identifier=cluster,
            db_user=get("redshift_db_user"),
            secret_arn=get("redshift_secret_arn"),
            region=get("redshift_region"),
            endpoint_url=get("redshift_endpoint_url") or get("aws_endpoint_url_redshift_data"),
            access_key_id=get("redshift_access_key_id"),
            secret_access_key=get("redshift_secret_access_key"),
            session_token=get("redshift_session_token"),
            poll_timeout_seconds=settings.get_float("redshift_poll_timeout_seconds", 100.0, 1),
            **common,
        )


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
