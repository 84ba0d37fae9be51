"""One request as the write-ahead buffer stores it, and back.

A record's payload is NDJSON: a header line, then each table's rows as the NDJSON lines
the lakes write (encoded once per request and shared with them), then, only when a
destination takes SDK-shaped records (Mixpanel with MIXPANEL_DELIVERY=batch), the
records themselves:

    {"e":"track","d":["files","s3"],"t":[["events",50]],"r":0}
    {"event":"Page View","event_time":...,"insert_id":"...",...}
    ...

`d` names the destinations the rows were promised to; `t` gives each table's row count;
`r` the number of record lines. Rows keep every column, so a recovered row carries the
`insert_id` (and `insert_time`) it had when the SDK was answered.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core import codec
from destinations.rows import RowBatch, hour_of, line_of


def encode(endpoint: str, destinations: list[str], rows: RowBatch | None, record_lines: Sequence[bytes] | None) -> bytes | None:
    """The payload for one request, or None when it carries nothing a buffered destination
    takes. `record_lines`: the records as NDJSON lines, when a destination keeps records."""
    tables = [(table, rows.lines(table)) for table in rows.tables] if rows is not None else []
    records = record_lines or ()
    if not records and not any(lines for _, lines in tables):
        return None
    head = {"e": endpoint, "d": destinations, "t": [[table, len(lines)] for table, lines in tables], "r": len(records)}
    parts = [codec.dumps(head)]
    for _, lines in tables:
        parts.extend(map(line_of, lines))
    parts.extend(records)
    return b"\n".join(parts)


@dataclass
class Decoded:
    endpoint: str
    destinations: list[str]
    tables: dict[str, list[bytes]]  # table -> NDJSON row lines
    records: list[bytes]  # SDK-shaped records, NDJSON

    def items(self, takes: str, table: str) -> list[Any]:
        """The table's rows (or, for "records", the endpoint's records) as the buffer of a sink
        of this kind holds them (see destinations.base.Chunk)."""
        if takes == "records":
            return self.records
        lines = self.tables.get(table, [])
        if takes == "lines":
            return [(hour_of(codec.loads_exact(line)), line) for line in lines]
        return lines

    def keys(self, takes: str) -> list[tuple[str, int]]:
        """[(table, row count)] in the shape a sink of this kind takes: the endpoint for records."""
        if takes == "records":
            return [(self.endpoint, len(self.records))] if self.records else []
        return [(table, len(lines)) for table, lines in self.tables.items()]


def decode(payload: bytes) -> Decoded:
    """Raises ValueError when the payload is not what `encode` wrote."""
    lines = payload.split(b"\n")
    head = json.loads(lines[0])
    tables: dict[str, list[bytes]] = {}
    at = 1
    for table, count in head["t"]:
        tables[str(table)] = lines[at : at + int(count)]
        at += int(count)
    records = lines[at : at + int(head["r"])]
    if at + int(head["r"]) != len(lines):
        raise ValueError("row counts do not match the payload")
    return Decoded(str(head["e"]), [str(d) for d in head["d"]], tables, records)
