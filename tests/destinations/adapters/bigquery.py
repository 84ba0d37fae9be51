"""`bigquery` against bqemulator, once per write mode: `stream` (insertAll) and `load` (load jobs)."""

from __future__ import annotations

from typing import Any, ClassVar

from tests.destinations.adapters.base import Adapter
from tests.support.standins.bigquery import BigQueryStandin

FOREIGN_TABLE = "events_archive"


class BigQueryAdapter(Adapter):
    name = "bigquery"
    standin = "bigquery_standin"
    write: ClassVar[str]

    def __init__(self, standin: BigQueryStandin, unique: str) -> None:
        super().__init__(standin, unique)
        self.dataset = f"conf_{unique}_{self.write}"

    def env(self) -> dict[str, str]:
        return {**self.standin.env(self.dataset), "bigquery_write": self.write, **self.extra_env()}

    def extra_env(self) -> dict[str, str]:
        return {}

    def rows(self, table: str) -> list[dict[str, Any]]:
        from google.api_core import exceptions as gx

        try:
            return self.standin.query(f"SELECT * FROM `{self.standin.project}.{self.dataset}.{table}`")
        except gx.NotFound:
            return []

    def plant_foreign(self) -> None:
        client = self.standin.client()
        client.query(f"CREATE TABLE IF NOT EXISTS `{self.standin.project}.{self.dataset}.{FOREIGN_TABLE}` (keep STRING)").result()
        client.query(f"INSERT INTO `{self.standin.project}.{self.dataset}.{FOREIGN_TABLE}` (keep) VALUES ('not ours')").result()

    def foreign_intact(self) -> bool:
        return self.standin.query(f"SELECT keep FROM `{self.standin.project}.{self.dataset}.{FOREIGN_TABLE}`") == [
            {"keep": "not ours"}
        ]

    def cleanup(self) -> None:
        self.standin.client().delete_dataset(f"{self.standin.project}.{self.dataset}", delete_contents=True, not_found_ok=True)


class StreamAdapter(BigQueryAdapter):
    variant = "stream"
    write = "stream"


class LoadAdapter(BigQueryAdapter):
    variant = "load"
    write = "load"

    def extra_env(self) -> dict[str, str]:
        # A short interval so the suite's waits hold; the daily-budget spacing is tested in
        # tests/destinations/test_bigquery.py.
        return {"bigquery_load_interval_seconds": "1"}


ADAPTERS = [StreamAdapter, LoadAdapter]
