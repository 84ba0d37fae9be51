"""`BIGQUERY_WRITE=stream`: `tabledata.insertAll` with an `insertId` per row.

Requests carry at most 500 rows and 9 MB (BigQuery's limit is 10 MB), with
`skipInvalidRows`: a row BigQuery refuses is reported in `insertErrors` and the others
are stored. Row errors with a retryable reason retry the whole write; rows already
stored carry the same insertIds then, and BigQuery drops the repeats (best effort).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from destinations.base import Capabilities, Rejection, SinkResult, TransientError
from destinations.bigquery.config import HTTP_TIMEOUT, BigQueryConfig, json_text, reason_of
from destinations.bigquery.errors import TRANSIENT_REASONS, errors
from destinations.rows import Row
from destinations.schema import TableSchema

MAX_ROWS = 500  # Google's recommendation; the hard limit is 50,000
REQUEST_BYTES = 9 * 1024 * 1024
CAPABILITIES = Capabilities(takes="rows", max_rows=MAX_ROWS, max_bytes=4 * 1024 * 1024, attempt_timeout=60.0, idempotent=True)


def stream_row(row: Row, json_columns: tuple[str, ...]) -> Row:
    """insertAll's shape: JSON columns travel as JSON text (as the official client sends them)."""
    return {k: (json_text(v) if k in json_columns and v is not None else v) for k, v in row.items()}


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
        digest = hashlib.sha256(json_text({k: row[k] for k in sorted(row)}).encode()).hexdigest()[:40]
        seen[digest] += 1
        ids.append(f"{kind[0]}-{digest}-{seen[digest]}")
    return ids


class StreamWriter:
    def __init__(self, config: BigQueryConfig, client: Callable[[], Any]) -> None:
        self.config = config
        self.client = client

    def write(self, table: TableSchema, items: list[Row]) -> SinkResult:
        json_columns = tuple(c.name for c in table.columns if c.type == "JSON")
        ids = row_ids(items, table.kind)
        rejected: dict[int, str] = {}
        batch: list[int] = []
        encoded: dict[int, Row] = {}
        size = 0
        for index, row in enumerate(items):
            wire = stream_row(row, json_columns)
            row_bytes = len(json_text(wire).encode("utf-8")) + len(ids[index]) + 32
            if row_bytes > REQUEST_BYTES:
                rejected[index] = f"row is {row_bytes} bytes, over BigQuery's 10 MB insertAll request limit"
                continue
            if batch and size + row_bytes > REQUEST_BYTES:
                rejected.update(self._insert(table, batch, encoded, ids))
                batch, encoded, size = [], {}, 0
            batch.append(index)
            encoded[index] = wire
            size += row_bytes
        if batch:
            rejected.update(self._insert(table, batch, encoded, ids))
        return SinkResult(len(items) - len(rejected), tuple(Rejection(i, r) for i, r in sorted(rejected.items())))

    def _insert(self, table: TableSchema, indices: list[int], encoded: dict[int, Row], ids: list[str]) -> dict[int, str]:
        """One insertAll request; returns the rows BigQuery refused (position in the write -> reason)."""
        with errors(f"bigquery insertAll into {table.name}"):
            found = self.client().insert_rows_json(
                self.config.table_id(table.name),
                [encoded[i] for i in indices],
                row_ids=[ids[i] for i in indices],
                skip_invalid_rows=True,
                ignore_unknown_values=False,
                retry=None,
                timeout=HTTP_TIMEOUT,
            )
        refused: dict[int, str] = {}
        for entry in found or []:
            details = [e for e in entry.get("errors", []) if isinstance(e, dict)]
            if any(e.get("reason") in TRANSIENT_REASONS for e in details):
                raise TransientError(f"bigquery insertAll into {table.name}: {details[0].get('reason')} on some rows")
            position = entry.get("index")
            if isinstance(position, int) and 0 <= position < len(indices):
                refused[indices[position]] = reason_of(details[0]) if details else "rejected by BigQuery"
        return refused
