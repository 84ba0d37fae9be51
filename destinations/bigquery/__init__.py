"""`bigquery`: rows into three day-partitioned, clustered BigQuery tables.

Reads: BIGQUERY_PROJECT, BIGQUERY_DATASET (required), BIGQUERY_LOCATION,
BIGQUERY_KEYFILE (a key file's path or its JSON), or BIGQUERY_SERVICE_ACCOUNT_EMAIL with
BIGQUERY_SERVICE_ACCOUNT_PRIVATE_KEY; without them Application Default Credentials.
BIGQUERY_API_ENDPOINT points the REST client at an emulator or a private endpoint
(anonymous credentials when no credentials are configured). BIGQUERY_WRITE picks the write mode; for `load` also
BIGQUERY_LOAD_JOBS_PER_DAY, BIGQUERY_LOAD_PROCESSES, BIGQUERY_LOAD_INTERVAL_SECONDS.
Table names and extra columns come from the one schema (destinations/schema.py); the
DDL is derived from it in `ddl.py`. docs/bigquery.md explains the modes and the default.

* `stream` (default, `stream.py`): insertAll with an insertId per row;
* `load` (`load.py`): free load jobs, spaced under the 1,500-a-day quota per table.
"""

from __future__ import annotations

from typing import Any

from core.settings import Settings
from destinations.base import LazyClient, PermanentError, RowSink, SinkResult, TransientError
from destinations.bigquery import ddl, load, stream
from destinations.bigquery.config import HTTP_TIMEOUT, BigQueryConfig
from destinations.bigquery.errors import Missing, classify, errors
from destinations.bigquery.load import bad_rows
from destinations.bigquery.stream import row_ids
from destinations.rows import Row
from destinations.schema import TableSchema, build_schemas


class BigQuerySink(RowSink):
    name = "bigquery"

    def __init__(self, settings: Settings) -> None:
        self.config = BigQueryConfig.from_settings(settings)
        self.tables: dict[str, TableSchema] = {t.name: t for t in build_schemas(settings).values()}
        self._client = LazyClient(self._make_client)
        self.writer: stream.StreamWriter | load.LoadWriter
        if self.config.write == "load":
            self.capabilities = load.capabilities(self.config)
            self.writer = load.LoadWriter(self.config, self.client)
        else:
            self.capabilities = stream.CAPABILITIES
            self.writer = stream.StreamWriter(self.config, self.client)

    def _make_client(self) -> Any:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        c = self.config
        credentials = c.auth.credentials()
        options = None
        if c.api_endpoint:
            options = ClientOptions(api_endpoint=c.api_endpoint)
            if credentials is None:
                credentials = AnonymousCredentials()
        return bigquery.Client(project=c.project, credentials=credentials, location=c.location, client_options=options)

    def client(self) -> Any:
        """The REST client, made once per process."""
        with errors("bigquery client"):
            return self._client.get()

    def setup(self) -> None:
        """Create the dataset and the three tables if missing; add configured columns that an
        existing table lacks. Nothing is dropped, replaced or re-typed."""
        client = self.client()
        ddl.ensure_dataset(client, self.config)
        for table in self.tables.values():
            ddl.ensure_table(client, self.config, table)

    def write(self, table: str, items: list[Row]) -> SinkResult:
        if not items:
            return SinkResult(0)
        schema = self.tables.get(table)
        if schema is None:
            raise PermanentError(f"bigquery: {table} is not one of this proxy's tables")
        try:
            return self.writer.write(schema, items)
        except Missing:
            # The table went away after set-up (dropped by hand): make it again, then retry.
            self.setup()
            raise TransientError(f"bigquery: table {table} was missing and has been created again") from None

    def drop(self, tables: list[str]) -> list[str]:
        """Delete exactly this proxy's tables (never the dataset, never another table)."""
        from google.api_core import exceptions as gx

        dropped = []
        client = self.client()
        for name in tables:
            table_id = self.config.table_id(name)
            with errors(f"bigquery drop of {table_id}"):
                try:
                    client.delete_table(table_id, retry=None, timeout=HTTP_TIMEOUT)
                except gx.NotFound:
                    continue
            dropped.append(table_id)
        return dropped

    def health(self) -> dict[str, Any]:
        info: dict[str, Any] = {"dataset": f"{self.config.project}.{self.config.dataset}", "write": self.config.write}
        if self.config.write == "load":
            info["load_interval_seconds"] = round(self.config.load_interval, 1)
        if self.config.api_endpoint:
            info["endpoint"] = self.config.api_endpoint
        return info

    def close(self) -> None:
        self._client.close()


__all__ = ["BigQueryConfig", "BigQuerySink", "Missing", "bad_rows", "classify", "row_ids"]
