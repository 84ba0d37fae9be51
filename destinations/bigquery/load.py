"""`BIGQUERY_WRITE=load`: free batch load jobs of NDJSON over a resumable upload.

BigQuery allows 1,500 load jobs per table per day (failed ones included). The delivery
layer spaces this destination's flushes (`Capabilities.min_flush_seconds`, from
BIGQUERY_LOAD_JOBS_PER_DAY and BIGQUERY_LOAD_PROCESSES), and a hard guard here refuses,
transiently, any job beyond this process's share of the day.

A job's id comes from the table and the exact bytes it loads. An attempt cut off while
its job runs leaves the job running; the retry finds it (in this process's job map, or
by the `409 Already Exists` BigQuery answers for the same id) and polls it: the same
rows are never submitted twice. A job is atomic: when BigQuery refuses the data nothing
was stored, so the rows its errors name are rejected and the rest go in a new job.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from core import green
from destinations.base import Capabilities, PermanentError, Rejection, SinkResult, TransientError
from destinations.bigquery.config import HTTP_TIMEOUT, BigQueryConfig, json_text, reason_of
from destinations.bigquery.errors import TRANSIENT_REASONS, Missing, errors
from destinations.rows import Row
from destinations.schema import TableSchema

ATTEMPT_SECONDS = 600.0  # a load job is not an HTTP call: minutes, not seconds
MAX_ROUNDS = 4  # load jobs one write may spend taking out rows BigQuery refused
# Where a load error names the bad row: BigQuery gives its byte offset, the emulator its line.
ROW_AT_POSITION = re.compile(r"row starting at position (\d+)")
ROW_AT_LINE = re.compile(r"in line (\d+)")


def capabilities(config: BigQueryConfig) -> Capabilities:
    return Capabilities(
        takes="rows",
        max_rows=1 << 62,
        max_bytes=1 << 30,
        attempt_timeout=ATTEMPT_SECONDS,
        idempotent=True,
        min_flush_seconds=config.load_interval,
    )


def ndjson(rows: list[Row]) -> tuple[bytes, list[int]]:
    """Load-job data (JSON columns as JSON values) and the byte offset where each row starts."""
    out, offsets, position = [], [], 0
    for row in rows:
        line = json_text(row).encode("utf-8") + b"\n"
        offsets.append(position)
        position += len(line)
        out.append(line)
    return b"".join(out), offsets


def bad_rows(found: list[dict[str, Any]], offsets: list[int]) -> dict[int, str]:
    """Map a failed load job's errors to row indices: BigQuery names a row by the byte offset
    where it starts, the emulator by its line number. Errors that name no row are skipped."""
    starts = {offset: i for i, offset in enumerate(offsets)}
    named: dict[int, str] = {}
    for error in found:
        message = str(error.get("message", ""))
        index = None
        if match := ROW_AT_POSITION.search(message):
            index = starts.get(int(match.group(1)))
        elif (match := ROW_AT_LINE.search(message)) and 0 < int(match.group(1)) <= len(offsets):
            index = int(match.group(1)) - 1
        if index is not None and index not in named:
            named[index] = reason_of(error)
    return named


def _digest(table: TableSchema, data: bytes) -> str:
    return hashlib.sha256(table.name.encode() + b"\0" + data).hexdigest()


def _transient(job: Any) -> bool:
    reasons = {str(e.get("reason")) for e in [job.error_result, *(job.errors or [])] if isinstance(e, dict)}
    return bool(reasons & TRANSIENT_REASONS)


class LoadWriter:
    def __init__(self, config: BigQueryConfig, client: Callable[[], Any]) -> None:
        self.config = config
        self.client = client
        self._lock = threading.Lock()
        # Content digest -> (job id as the service knows it, submissions so far).
        self._jobs: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._started: dict[str, deque[float]] = {}

    def write(self, table: TableSchema, items: list[Row]) -> SinkResult:
        remaining = list(range(len(items)))
        rejected: dict[int, str] = {}
        for _ in range(MAX_ROUNDS):
            data, offsets = ndjson([items[i] for i in remaining])
            found = self._run(table, data)
            if found is None:
                return SinkResult(len(remaining), tuple(Rejection(i, r) for i, r in sorted(rejected.items())))
            named = bad_rows(found, offsets)
            if not named:
                self._check_table(table, data)
                # A whole-write error names the reason, not BigQuery's text (it may quote row values).
                reasons = "/".join(sorted({str(e.get("reason")) for e in found if e.get("reason")})) or "no reason given"
                raise PermanentError(f"bigquery load into {table.name} failed: {reasons}")
            rejected.update({remaining[i]: reason for i, reason in named.items()})
            remaining = [index for position, index in enumerate(remaining) if position not in named]
            if not remaining:
                return SinkResult(0, tuple(Rejection(i, r) for i, r in sorted(rejected.items())))
        raise PermanentError(f"bigquery load into {table.name}: more bad rows than {MAX_ROUNDS} load jobs could take out")

    def _run(self, table: TableSchema, data: bytes) -> list[dict[str, Any]] | None:
        """Run (or find and wait for) the job for exactly these bytes. None when it succeeded,
        its errors when BigQuery refused the data; raises for anything else."""
        digest = _digest(table, data)
        with self._lock:
            known = self._jobs.get(digest)
        job = self._find(known[0]) if known else None
        if job is not None and job.state == "DONE" and job.error_result and _transient(job):
            job = None  # that attempt failed for a reason worth retrying: a new job, with a new id
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
        if _transient(job):
            raise TransientError(f"bigquery load into {table.name}: {job.error_result.get('reason')}")
        if job.error_result.get("reason") == "notFound":
            self._forget(digest)
            raise Missing(f"bigquery load into {table.name}: table not found")
        return list(job.errors or [job.error_result])

    def _forget(self, digest: str) -> None:
        """The job failed for a reason set-up fixes: the retry must submit a new one."""
        with self._lock:
            self._jobs.pop(digest, None)

    def _check_table(self, table: TableSchema, data: bytes) -> None:
        """A job refused without naming a row: if the table is gone, say so (set-up fixes that)."""
        from google.api_core import exceptions as gx

        with errors(f"bigquery table {table.name}"):
            try:
                self.client().get_table(self.config.table_id(table.name), retry=None, timeout=HTTP_TIMEOUT)
            except gx.NotFound:
                self._forget(_digest(table, data))
                raise Missing(f"bigquery load into {table.name}: table not found") from None

    def _find(self, job_id: str) -> Any:
        from google.api_core import exceptions as gx

        with errors(f"bigquery job {job_id}"):
            try:
                return self.client().get_job(job_id, location=self.config.location, retry=None, timeout=HTTP_TIMEOUT)
            except gx.NotFound:
                return None

    def _submit(self, table: TableSchema, data: bytes, job_id: str) -> Any:
        from google.api_core import exceptions as gx
        from google.cloud import bigquery

        self._spend_budget(table.name)
        job_config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
            max_bad_records=0,
            ignore_unknown_values=False,
            labels={"written_by": "mixpanel-dwh-proxy"},
        )
        with errors(f"bigquery load into {table.name}"):
            try:
                # No size=: a resumable upload (multipart uploads are refused by some endpoints).
                return self.client().load_table_from_file(
                    io.BytesIO(data),
                    self.config.table_id(table.name),
                    job_id=job_id,
                    location=self.config.location,
                    job_config=job_config,
                    num_retries=0,
                    timeout=HTTP_TIMEOUT,
                )
            except gx.Conflict:
                # A job with this id exists: an earlier attempt's reply was lost. Poll that one.
                found = self._find(job_id)
                if found is None:
                    raise TransientError(f"bigquery load into {table.name}: job {job_id} exists but cannot be read") from None
                return found

    def _spend_budget(self, table: str) -> None:
        """This process never starts more than its share of the table's daily load jobs in any
        24 hours, whatever the flushes asked for."""
        now = time.monotonic()
        with self._lock:
            started = self._started.setdefault(table, deque())
            while started and now - started[0] > 86400:
                started.popleft()
            if len(started) >= self.config.load_jobs_per_process:
                wait = 86400 - (now - started[0])
                raise TransientError(f"bigquery: {table}'s load-job budget for today is spent", retry_after=wait)
            started.append(now)

    def _wait(self, job: Any, table: str) -> Any:
        """Poll until the job is done (backing off to 5 s between polls)."""
        pause = 0.25
        while True:
            with errors(f"bigquery load into {table}: polling job {job.job_id}"):
                if job.done(retry=None, timeout=HTTP_TIMEOUT[1]):
                    return job
            green.sleep(pause)
            pause = min(pause * 2, 5.0)
