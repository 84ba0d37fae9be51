"""BigQuery settings, one frozen dataclass, and JSON text as BigQuery takes it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from core.settings import ConfigError, Settings
from destinations.google import GoogleAuth
from destinations.rows import json_safe

WRITE_MODES = ("stream", "load")
HTTP_TIMEOUT = (10.0, 60.0)  # connect, read: one API call
LOAD_QUOTA_PER_TABLE = 1500  # BigQuery's load jobs per table per day, failed ones included
DEFAULT_LOAD_JOBS_PER_DAY = 1000  # leaves room for the user's own loads and our retries
# BigQuery's legacy type names, as tables report them.
LEGACY_TYPES = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}


@dataclass(frozen=True)
class BigQueryConfig:
    project: str
    dataset: str
    location: str | None = None
    api_endpoint: str | None = None
    #: The Storage Write API's gRPC endpoint (`host:port`; `http://host:port` for plaintext).
    write: str = "stream"
    #: Seconds between two load jobs into one table, per process (load mode).
    load_interval: float = 0.0
    #: Load jobs one process may start per table in 24 hours (a hard guard behind the interval).
    load_jobs_per_process: int = DEFAULT_LOAD_JOBS_PER_DAY
    auth: GoogleAuth = field(default_factory=GoogleAuth)

    @classmethod
    def from_settings(cls, settings: Settings) -> BigQueryConfig:
        auth = GoogleAuth.from_settings(settings, "bigquery")
        project = settings.get("bigquery_project") or auth.project()
        if not project:
            raise ConfigError("BIGQUERY_PROJECT is required by the bigquery destination")
        write = settings.get_choice("bigquery_write", WRITE_MODES, "stream")
        per_day = settings.get_int("bigquery_load_jobs_per_day", DEFAULT_LOAD_JOBS_PER_DAY, 1)
        if per_day > LOAD_QUOTA_PER_TABLE:
            raise ConfigError(f"BIGQUERY_LOAD_JOBS_PER_DAY={per_day} is over BigQuery's {LOAD_QUOTA_PER_TABLE} per table")
        processes = settings.get_int("bigquery_load_processes", settings.get_int("web_concurrency", os.cpu_count() or 1, 1), 1)
        interval = settings.get_float("bigquery_load_interval_seconds", 86400.0 * processes / per_day, 0.0)
        if write == "load":
            _require_batching(settings)
        return cls(
            project=project,
            dataset=settings.require("bigquery_dataset", "bigquery"),
            location=settings.get("bigquery_location"),
            api_endpoint=settings.get("bigquery_api_endpoint"),
            write=write,
            load_interval=interval,
            load_jobs_per_process=max(1, per_day // processes),
            auth=auth,
        )

    def table_id(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"


def _require_batching(settings: Settings) -> None:
    from destinations.delivery import DeliveryConfig

    if DeliveryConfig.from_settings(settings, "bigquery").mode != "batch":
        raise ConfigError("BIGQUERY_WRITE=load needs batched delivery (a load job per request would exhaust the quota)")


def json_text(value: Any) -> str:
    """Compact JSON, UTF-8 kept as is; anything odd a transform produced is made safe first."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return json.dumps(json_safe(value), ensure_ascii=False, separators=(",", ":"))


def reason_of(error: dict[str, Any]) -> str:
    """BigQuery's message for one error entry, one line, bounded; with the column it names."""
    text = " ".join(str(error.get("message") or error.get("reason") or "rejected").split())
    location = error.get("location")
    text = f"{location}: {text}" if location and not str(location).startswith(("file:", "gs:")) else text
    return text if len(text) <= 300 else text[:299] + "…"
