"""bqemulator, the BigQuery stand-in: REST and gRPC on free ports, started once per run.

Installed by scripts/test.d/bigquery.sh into .standins/bigquery/ (a venv of its own, with
the DuckDB spatial extension under a private HOME so DuckDB never tries to download it).
Ready when the official client has listed datasets through it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT, Server, free_port, wait_until

DIR = ROOT / ".standins" / "bigquery"
BINARY = DIR / "venv" / "bin" / "bqemulator"
PROJECT = "test-project"


@dataclass
class BigQueryStandin:
    server: Server
    rest_port: int
    grpc_port: int
    project: str = PROJECT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def client(self, endpoint: str | None = None) -> Any:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        options = ClientOptions(api_endpoint=endpoint or self.url)
        return bigquery.Client(project=self.project, credentials=AnonymousCredentials(), client_options=options)

    def env(self, dataset: str, endpoint: str | None = None) -> dict[str, str]:
        """Proxy variables for a dataset of its own on this stand-in (REST and gRPC)."""
        return {
            "bigquery_project": self.project,
            "bigquery_dataset": dataset,
            "bigquery_api_endpoint": endpoint or self.url,
        }

    def query(self, sql: str) -> list[dict[str, Any]]:
        return [dict(row) for row in self.client().query(sql).result()]

    def align_storage(self, dataset: str, table: str) -> None:
        """Emulator gap: `tables.patch` adds columns to bqemulator's catalog but not to its
        DuckDB table (BigQuery does both), so a test that adds columns that way adds them to
        storage too, with the DDL BigQuery would accept."""
        legacy = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}
        for column in self.client().get_table(f"{self.project}.{dataset}.{table}").schema:
            kind = legacy.get(column.field_type, column.field_type)
            sql = f"ALTER TABLE `{self.project}.{dataset}.{table}` ADD COLUMN IF NOT EXISTS `{column.name}` {kind}"
            self.client().query(sql).result()


def ensure_installed() -> None:
    if not BINARY.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "test.d" / "bigquery.sh")], check=True, cwd=ROOT)


def start_bigquery(logs: Path) -> BigQueryStandin:
    ensure_installed()
    rest, grpc = free_port(), free_port()
    args = [str(BINARY), "start", "--rest-host", "127.0.0.1", "--rest-port", str(rest), "--grpc-host", "127.0.0.1"]
    args += ["--grpc-port", str(grpc), "--project", PROJECT, "--ephemeral", "--log-level", "warning"]
    # A private HOME holds the DuckDB extension; uploads land under the run's own temporary folder.
    env = {"HOME": str(DIR / "home"), "TMPDIR": str(logs)}
    server = Server(args, env=env, log=logs / "bqemulator.log").start()
    standin = BigQueryStandin(server, rest, grpc)
    try:
        wait_until(lambda: list(standin.client().list_datasets(retry=None, timeout=2)) is not None, 90, 0.3, what="bqemulator")
    except BaseException:
        server.stop()
        raise
    return standin


@pytest.fixture(scope="session")
def bigquery_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryStandin]:
    standin = start_bigquery(tmp_path_factory.mktemp("bigquery-standin"))
    yield standin
    standin.server.stop(timeout=15)
