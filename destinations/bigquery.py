"""`bigquery`: rows into three day-partitioned, clustered BigQuery tables.

Reads: BIGQUERY_PROJECT, BIGQUERY_DATASET (required), BIGQUERY_LOCATION,
BIGQUERY_KEYFILE (a key file's path or its JSON), or BIGQUERY_SERVICE_ACCOUNT_EMAIL with
BIGQUERY_SERVICE_ACCOUNT_PRIVATE_KEY; without them Application Default Credentials.
BIGQUERY_API_ENDPOINT points the client at an emulator or a private endpoint (anonymous
credentials when no credentials are configured). BIGQUERY_WRITE (`stream` | `load`),
and for `load`: BIGQUERY_LOAD_JOBS_PER_DAY, BIGQUERY_LOAD_PROCESSES,
BIGQUERY_LOAD_INTERVAL_SECONDS. Table names and extra columns come from the one
schema (destinations/schema.py); the DDL below is derived from it.

Write modes (docs/bigquery.md explains the choice):
* `stream` (default): `tabledata.insertAll` with `insertId` = the row's `insert_id`
  (events) or a hash of the row (users, groups), `skipInvalidRows`, so one bad row is
  rejected with BigQuery's message and the rest are stored.
* `load`: free batch load jobs of NDJSON over a resumable upload, spaced so that each
  table stays under BigQuery's 1,500 load jobs a day. A job's id is derived from its
  content: a retry polls the job it already started instead of submitting it again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from core import green
from core.settings import ConfigError, Settings
from destinations.base import Capabilities, LazyClient, PermanentError, Rejection, RowSink, SinkResult, TransientError
from destinations.google import GoogleAuth
from destinations.rows import Row, json_safe
from destinations.schema import TableSchema, build_schemas

log = logging.getLogger(__name__)

WRITE_MODES = ("stream", "load")
HTTP_TIMEOUT = (10.0, 60.0)  # connect, read: one API call
# insertAll: 10 MB per HTTP request and 50,000 rows; Google recommends about 500 rows.
STREAM_MAX_ROWS = 500
STREAM_REQUEST_BYTES = 9 * 1024 * 1024
LOAD_QUOTA_PER_TABLE = 1500  # BigQuery's load jobs per table per day, failed ones included
DEFAULT_LOAD_JOBS_PER_DAY = 1000  # leaves room for the user's own loads and our retries
LOAD_ATTEMPT_SECONDS = 600.0  # a load job is not an HTTP call: minutes, not seconds
MAX_LOAD_ROUNDS = 4  # load jobs one write may spend taking out rows BigQuery refused
# Row-level reasons worth retrying (BigQuery reports them per row in insertErrors).
TRANSIENT_REASONS = {"backendError", "internalError", "timeout", "rateLimitExceeded", "quotaExceeded", "stopped"}
JOB_TRANSIENT_REASONS = TRANSIENT_REASONS | {"jobRateLimitExceeded", "jobBackendError", "jobInternalError"}
# BigQuery's legacy type names, as tables report them.
LEGACY_TYPES = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}
# Where a load error names the bad row: BigQuery gives its byte offset, the emulator its line.
ROW_AT_POSITION = re.compile(r"row starting at position (\d+)")
ROW_AT_LINE = re.compile(r"in line (\d+)")


@dataclass(frozen=True)
class BigQueryConfig:
    project: str
    dataset: str
    location: str | None = None
    api_endpoint: str | None = None
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
            raise ConfigError("bigquery_project is required by the bigquery destination")
        write = (settings.get("bigquery_write") or "stream").lower()
        if write not in WRITE_MODES:
            raise ConfigError(f"BIGQUERY_WRITE={write!r} must be one of {', '.join(WRITE_MODES)}")
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


def _require_batching(settings: Settings) -> None:
    from destinations.delivery import DeliveryConfig

    if DeliveryConfig.from_settings(settings, "bigquery").mode != "batch":
        raise ConfigError("BIGQUERY_WRITE=load needs batched delivery (a load job per request would exhaust the quota)")


# --- DDL, derived from the one schema ---------------------------------------------------------


def schema_fields(table: TableSchema) -> list[Any]:
    from google.cloud import bigquery

    return [bigquery.SchemaField(c.name, LEGACY_TYPES.get(c.type, c.type), mode=c.mode) for c in table.columns]


def table_definition(project: str, dataset: str, table: TableSchema) -> Any:
    """A new table: day partitions on the schema's partition column, its clustering columns."""
    from google.cloud import bigquery

    definition = bigquery.Table(f"{project}.{dataset}.{table.name}", schema=schema_fields(table))
    if table.partition_by:
        day = bigquery.TimePartitioningType.DAY
        definition.time_partitioning = bigquery.TimePartitioning(type_=day, field=table.partition_by)
    if table.cluster_by:
        definition.clustering_fields = list(table.cluster_by)
    definition.description = f"Mixpanel {table.kind} rows written by mixpanel-dwh-proxy"
    return definition


def missing_fields(existing: list[Any], table: TableSchema) -> list[Any]:
    """Columns the schema has and the table lacks, as NULLABLE fields (BigQuery adds no other)."""
    from google.cloud import bigquery

    have = {f.name.lower(): f for f in existing}
    added = []
    for column in table.columns:
        current = have.get(column.name.lower())
        if current is None:
            added.append(bigquery.SchemaField(column.name, LEGACY_TYPES.get(column.type, column.type), mode="NULLABLE"))
        elif current.field_type.upper() not in {column.type, LEGACY_TYPES.get(column.type, column.type)}:
            log.warning(
                "bigquery: %s.%s is %s in BigQuery but %s here; kept as it is (rows it cannot take are rejected)",
                table.name, column.name, current.field_type, column.type,
            )  # fmt: skip
    return added


# --- row encoding ---------------------------------------------------------------------------


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return json.dumps(json_safe(value), ensure_ascii=False, separators=(",", ":"))


def stream_row(row: Row, json_columns: tuple[str, ...]) -> Row:
    """insertAll's shape: JSON columns travel as JSON text (as the official client sends them)."""
    return {k: (_json_text(v) if k in json_columns and v is not None else v) for k, v in row.items()}


def row_ids(rows: list[Row], kind: str) -> list[str]:
    """insertIds: an event's `insert_id`; for profile and group rows, which have none, a hash
    of the row with a counter for identical rows in one write (two identical `$add`s in one
    request are two updates). The same rows always get the same ids, so a retry de-duplicates."""
    ids: list[str] = []
    seen: Counter[str] = Counter()
    for row in rows:
        if kind == "event" and row.get("insert_id"):
            value = str(row["insert_id"])
            ids.append(value if len(value) <= 128 else "sha256:" + hashlib.sha256(value.encode()).hexdigest())
            continue
        digest = hashlib.sha256(_json_text({k: row[k] for k in sorted(row)}).encode()).hexdigest()[:40]
        seen[digest] += 1
        ids.append(f"{kind[0]}-{digest}-{seen[digest]}")
    return ids


def ndjson(rows: list[Row]) -> tuple[bytes, list[int]]:
    """Load-job data (JSON columns as JSON values) and the byte offset where each row starts."""
    out, offsets, position = [], [], 0
    for row in rows:
        line = _json_text(row).encode("utf-8") + b"\n"
        offsets.append(position)
        position += len(line)
        out.append(line)
    return b"".join(out), offsets


def bad_rows(errors: list[dict[str, Any]], offsets: list[int]) -> dict[int, str]:
    """Map a failed load job's errors to row indices: BigQuery names a row by the byte offset
    where it starts, the emulator by its line number. Errors that name no row are skipped."""
    starts = {offset: i for i, offset in enumerate(offsets)}
    found: dict[int, str] = {}
    for error in errors:
        message = str(error.get("message", ""))
        index = None
        if match := ROW_AT_POSITION.search(message):
            index = starts.get(int(match.group(1)))
        elif (match := ROW_AT_LINE.search(message)) and 0 < int(match.group(1)) <= len(offsets):
            index = int(match.group(1)) - 1
        if index is not None and index not in found:
            found[index] = _reason(error)
    return found


def _reason(error: dict[str, Any]) -> str:
    text = " ".join(str(error.get("message") or error.get("reason") or "rejected").split())
    location = error.get("location")
    text = f"{location}: {text}" if location and not str(location).startswith(("file:", "gs:")) else text
    return text if len(text) <= 300 else text[:299] + "…"


# --- errors -----------------------------------------------------------------------------------


class Missing(PermanentError):
    """The dataset or table is not there (404): set-up can make it again."""


def classify(exc: BaseException, where: str) -> Exception:
    """Transient (retry) or permanent (dead-letter) for one failed call. BigQuery answers
    quota and rate limits with 403 and a reason, so reasons decide before statuses."""
    import requests
    from google.api_core import exceptions as gx
    from google.auth import exceptions as ax

    if isinstance(exc, gx.GoogleAPICallError):
        status = exc.code if isinstance(exc.code, int) else 0
        reasons = {str(e.get("reason")) for e in (exc.errors or []) if isinstance(e, dict)}
        label = f"{where}: HTTP {status} {'/'.join(sorted(reasons)) or type(exc).__name__}"
        if reasons & JOB_TRANSIENT_REASONS or status in (408, 429) or status >= 500:
            return TransientError(label)
        if status == 401:
            return PermanentError(f"{where}: credentials rejected (HTTP 401)")
        if status == 403:
            return PermanentError(f"{where}: permission denied (bigquery.dataEditor and bigquery.jobUser are needed)")
        if status == 404:
            return Missing(f"{where}: not found (HTTP 404)")
        return PermanentError(f"{label}: {' '.join(str(exc.message).split())[:200]}")
    if isinstance(exc, ax.RefreshError):
        error = TransientError if getattr(exc, "retryable", False) else PermanentError
        return error(f"{where}: credentials could not be refreshed")
    if isinstance(exc, ax.TransportError):
        return TransientError(f"{where}: {type(exc).__name__}")
    if isinstance(exc, ax.GoogleAuthError):
        return PermanentError(f"{where}: {type(exc).__name__} (no usable Google credentials)")
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return TransientError(f"{where}: {type(exc).__name__}")
    if isinstance(exc, (ValueError, KeyError, OSError)):
        # A key file that is missing or not JSON, a value the client cannot encode.
        return PermanentError(f"{where}: {type(exc).__name__}")
    return TransientError(f"{where}: {type(exc).__name__}")


@contextmanager
def _errors(where: str) -> Iterator[None]:
    try:
        yield
    except (TransientError, PermanentError):
        raise
    except Exception as exc:  # noqa: BLE001 - every SDK failure is classified, none escapes raw
        raise classify(exc, where) from None


# --- the sink ---------------------------------------------------------------------------------


class BigQuerySink(RowSink):
    name = "bigquery"

    def __init__(self, settings: Settings) -> None:
        self.config = BigQueryConfig.from_settings(settings)
        self.tables: dict[str, TableSchema] = {t.name: t for t in build_schemas(settings).values()}
        if self.config.write == "load":
            self.capabilities = Capabilities(
                takes="rows",
                max_rows=1 << 62,
                max_bytes=1 << 30,
                attempt_timeout=LOAD_ATTEMPT_SECONDS,
                idempotent=True,
                min_flush_seconds=self.config.load_interval,
            )
        else:
            self.capabilities = Capabilities(
                takes="rows", max_rows=STREAM_MAX_ROWS, max_bytes=4 * 1024 * 1024, attempt_timeout=60.0, idempotent=True
            )
        self._client = LazyClient(self._make_client)
        self._lock = threading.Lock()
        # Load jobs by content digest -> (job id, submissions): a retry finds and polls its job.
        self._jobs: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._loads: dict[str, deque[float]] = {}

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
        with _errors("bigquery client"):
            return self._client.get()

    def _table_id(self, table: str) -> str:
        return f"{self.config.project}.{self.config.dataset}.{table}"

    # -- set-up ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the dataset and the three tables if missing; add configured columns that an
        existing table lacks. Nothing is dropped, replaced or re-typed."""
        from google.api_core import exceptions as gx
        from google.cloud import bigquery

        client = self.client()
        dataset_id = f"{self.config.project}.{self.config.dataset}"
        with _errors(f"bigquery set-up of dataset {dataset_id}"):
            try:
                client.get_dataset(dataset_id, retry=None, timeout=HTTP_TIMEOUT)
            except gx.NotFound:
                dataset = bigquery.Dataset(dataset_id)
                if self.config.location:
                    dataset.location = self.config.location
                client.create_dataset(dataset, exists_ok=True, retry=None, timeout=HTTP_TIMEOUT)
        for table in self.tables.values():
            self._ensure_table(client, table)

    def _ensure_table(self, client: Any, table: TableSchema) -> None:
        from google.api_core import exceptions as gx

        table_id = self._table_id(table.name)
        with _errors(f"bigquery set-up of table {table_id}"):
            for _ in range(3):  # two workers adding the same column: re-read and try again
                try:
                    existing = client.get_table(table_id, retry=None, timeout=HTTP_TIMEOUT)
                except gx.NotFound:
                    definition = table_definition(self.config.project, self.config.dataset, table)
                    client.create_table(definition, exists_ok=True, retry=None, timeout=HTTP_TIMEOUT)
                    return
                added = missing_fields(list(existing.schema), table)
                if not added:
                    return
                existing.schema = list(existing.schema) + added
                try:
                    client.update_table(existing, ["schema"], retry=None, timeout=HTTP_TIMEOUT)
                except (gx.PreconditionFailed, gx.BadRequest, gx.Conflict):
                    continue
                log.info("bigquery: added %s to %s", ", ".join(f.name for f in added), table_id)
                return
            raise TransientError(f"bigquery set-up of table {table_id}: schema kept changing underneath")

    def drop(self, tables: list[str]) -> list[str]:
        """Delete exactly this proxy's tables (never the dataset, never another table)."""
        from google.api_core import exceptions as gx

        dropped = []
        client = self.client()
        for name in tables:
            table_id = self._table_id(name)
            with _errors(f"bigquery drop of {table_id}"):
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

    # -- writes ---------------------------------------------------------------------------
    def write(self, table: str, items: list[Row]) -> SinkResult:
        if not items:
            return SinkResult(0)
        schema = self.tables.get(table)
        if schema is None:
            raise PermanentError(f"bigquery: {table} is not one of this proxy's tables")
        try:
            if self.config.write == "load":
                return self._load(schema, items)
            return self._stream(schema, items)
        except Missing:
            # The table went away after set-up (dropped by hand): make it again, then retry.
            self.setup()
            raise TransientError(f"bigquery: table {table} was missing and has been created again") from None

    # stream: insertAll ------------------------------------------------------------------------
    def _stream(self, table: TableSchema, items: list[Row]) -> SinkResult:
        json_columns = tuple(c.name for c in table.columns if c.type == "JSON")
        ids = row_ids(items, table.kind)
        rejected: dict[int, str] = {}
        batch: list[int] = []
        size = 0
        encoded: dict[int, Row] = {}
        for index, row in enumerate(items):
            wire = stream_row(row, json_columns)
            row_bytes = len(_json_text(wire).encode("utf-8")) + len(ids[index]) + 32
            if row_bytes > STREAM_REQUEST_BYTES:
                rejected[index] = f"row is {row_bytes} bytes, over BigQuery's 10 MB insertAll request limit"
                continue
            if batch and size + row_bytes > STREAM_REQUEST_BYTES:
                rejected.update(self._insert(table, batch, encoded, ids))
                batch, size, encoded = [], 0, {}
            batch.append(index)
            encoded[index] = wire
            size += row_bytes
        if batch:
            rejected.update(self._insert(table, batch, encoded, ids))
        return SinkResult(len(items) - len(rejected), tuple(Rejection(i, r) for i, r in sorted(rejected.items())))

    def _insert(self, table: TableSchema, indices: list[int], encoded: dict[int, Row], ids: list[str]) -> dict[int, str]:
        """One insertAll request; returns the rows BigQuery refused (position in the write -> reason)."""
        with _errors(f"bigquery insertAll into {table.name}"):
            errors = self.client().insert_rows_json(
                self._table_id(table.name),
                [encoded[i] for i in indices],
                row_ids=[ids[i] for i in indices],
                skip_invalid_rows=True,
                ignore_unknown_values=False,
                retry=None,
                timeout=HTTP_TIMEOUT,
            )
        refused: dict[int, str] = {}
        for entry in errors or []:
            details = [e for e in entry.get("errors", []) if isinstance(e, dict)]
            if any(e.get("reason") in TRANSIENT_REASONS for e in details):
                # Some rows were not stored for a reason worth retrying: send the write again;
                # the rows already stored carry the same insertIds, so BigQuery drops the repeats.
                raise TransientError(f"bigquery insertAll into {table.name}: {details[0].get('reason')} on some rows")
            position = entry.get("index")
            if isinstance(position, int) and 0 <= position < len(indices):
                refused[indices[position]] = _reason(details[0]) if details else "rejected by BigQuery"
        return refused

    # load: batch load jobs ----------------------------------------------------------------------
    def _load(self, table: TableSchema, items: list[Row]) -> SinkResult:
        remaining = list(range(len(items)))
        rejected: dict[int, str] = {}
        for _ in range(MAX_LOAD_ROUNDS):
            data, offsets = ndjson([items[i] for i in remaining])
            errors = self._run_load(table, data)
            if errors is None:
                return SinkResult(len(remaining), tuple(Rejection(i, r) for i, r in sorted(rejected.items())))
            refused = bad_rows(errors, offsets)
            if not refused:
                reason = _reason(errors[0]) if errors else "no reason given"
                raise PermanentError(f"bigquery load into {table.name} failed: {reason}")
            # The job stored nothing (it is atomic): take out the rows it named and load the rest.
            rejected.update({remaining[i]: reason for i, reason in refused.items()})
            remaining = [index for position, index in enumerate(remaining) if position not in refused]
            if not remaining:
                return SinkResult(0, tuple(Rejection(i, r) for i, r in sorted(rejected.items())))
        raise PermanentError(f"bigquery load into {table.name}: more bad rows than {MAX_LOAD_ROUNDS} load jobs could take out")

    def _run_load(self, table: TableSchema, data: bytes) -> list[dict[str, Any]] | None:
        """Run (or find and wait for) the load job for exactly these bytes. Returns None when it
        succeeded, or its errors when BigQuery refused the data; raises for anything else."""
        digest = hashlib.sha256(table.name.encode() + b"\0" + data).hexdigest()
        with self._lock:
            known = self._jobs.get(digest)
        job = self._find_job(known[0]) if known else None
        if job is not None and job.state == "DONE" and job.error_result and self._job_transient(job):
            job = None  # that attempt failed for a reason worth retrying: a new job, a new id
        if job is None:
            submissions = (known[1] if known else 0) + 1
            job = self._submit(table, data, f"mpproxy_{table.name}_{digest[:40]}_{submissions}")
            with self._lock:
                self._jobs[digest] = (job.job_id, submissions)
                while len(self._jobs) > 1024:
                    self._jobs.popitem(last=False)
        job = self._wait(job, table.name)
        if not job.error_result:
            return None
        if self._job_transient(job):
            raise TransientError(f"bigquery load into {table.name}: {job.error_result.get('reason')}")
        return list(job.errors or [job.error_result])

    @staticmethod
    def _job_transient(job: Any) -> bool:
        reasons = {str(e.get("reason")) for e in [job.error_result, *(job.errors or [])] if isinstance(e, dict)}
        return bool(reasons & JOB_TRANSIENT_REASONS)

    def _find_job(self, job_id: str) -> Any:
        from google.api_core import exceptions as gx

        with _errors(f"bigquery job {job_id}"):
            try:
                return self.client().get_job(job_id, location=self.config.location, retry=None, timeout=HTTP_TIMEOUT)
            except gx.NotFound:
                return None

    def _submit(self, table: TableSchema, data: bytes, job_id: str) -> Any:
        from google.api_core import exceptions as gx
        from google.cloud import bigquery

        self._spend_budget(table.name)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
            max_bad_records=0,
            ignore_unknown_values=False,
            labels={"written_by": "mixpanel-dwh-proxy"},
        )
        with _errors(f"bigquery load into {table.name}"):
            try:
                # No size=: a resumable upload (multipart uploads are refused by some endpoints).
                return self.client().load_table_from_file(
                    io.BytesIO(data),
                    self._table_id(table.name),
                    job_id=job_id,
                    location=self.config.location,
                    job_config=config,
                    num_retries=0,
                    timeout=HTTP_TIMEOUT,
                )
            except gx.Conflict:
                # A job with this id exists: an earlier attempt's reply was lost. Poll that one.
                found = self._find_job(job_id)
                if found is None:
                    raise TransientError(f"bigquery load into {table.name}: job {job_id} exists but cannot be read") from None
                return found

    def _spend_budget(self, table: str) -> None:
        """A hard guard behind the flush interval: this process never starts more than its share
        of the table's daily load jobs in any 24 hours."""
        now = time.monotonic()
        with self._lock:
            started = self._loads.setdefault(table, deque())
            while started and now - started[0] > 86400:
                started.popleft()
            if len(started) >= self.config.load_jobs_per_process:
                wait = 86400 - (now - started[0])
                raise TransientError(f"bigquery: {table}'s load-job budget for today is spent", retry_after=wait)
            started.append(now)

    def _wait(self, job: Any, table: str) -> Any:
        """Poll until the job is done; an attempt cut off meanwhile leaves it running, and the
        retry finds it by its id (see _run_load) instead of loading the same rows again."""
        pause = 0.25
        while True:
            with _errors(f"bigquery load into {table}: polling job {job.job_id}"):
                if job.done(retry=None, timeout=HTTP_TIMEOUT[1]):
                    return job
            green.sleep(pause)
            pause = min(pause * 2, 5.0)


__all__ = ["BigQueryConfig", "BigQuerySink", "Missing", "bad_rows", "classify", "row_ids", "table_definition"]
