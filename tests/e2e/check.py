"""Checking one client's run: every record it sent must be at the Mixpanel double exactly
as sent apart from the documented normalisation, and in every destination as exactly the
rows the row model (destinations/rows.py `to_rows`) makes of that normalised record,
compared column by column. Session replay batches must reach the double byte for byte.
Results go into the matrix; problems are collected and asserted by the test."""

from __future__ import annotations

import gzip
import json
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from core.records import Record
from core.settings import Settings
from destinations.rows import parse_time, to_rows
from destinations.schema import TableSchema, build_schemas
from tests.e2e.destinations import Landing
from tests.e2e.matrix import MATRIX
from tests.e2e.wire import KIND, AnyTime, Sent, SentRecord, flag, sdk_json
from tests.support.mixpanel_double import MixpanelDouble, Received

IDENTITY = ("operation", "distinct_id", "group_key", "group_id")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return parse_time(value)


def same(column_type: str, expected: Any, got: Any) -> bool:
    """Equal as stored: lakes hold JSON text, a warehouse may hand back datetimes or JSON strings."""
    if column_type == "TIMESTAMP":
        a, b = _epoch(expected), _epoch(got)
        return a is not None and b is not None and abs(a - b) < 1e-6
    if column_type == "JSON":
        return _json(expected) == _json(got)
    return expected == got


@dataclass
class Report:
    client: str
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)

    @property
    def text(self) -> str:
        return f"{len(self.problems)} problem(s) for {self.client}:\n" + "\n".join(self.problems[:40])


# -- Mixpanel ----------------------------------------------------------------------------------


def received_records(mp: MixpanelDouble) -> list[tuple[str, Any, Received]]:
    out = []
    for request in mp.requests():
        endpoint = request.path.strip("/").split("/")[0]
        if endpoint in KIND:
            out += [(endpoint, record, request) for record in request.records]
    return out


def pair_with_mixpanel(
    records: list[SentRecord], received: list[tuple[str, Any, Received]], report: Report
) -> dict[int, tuple[Any, Received]]:
    """Index of each sent record -> the record (and request) the double got for it."""
    free = list(received)
    pairs: dict[int, tuple[Any, Received]] = {}
    for index, record in enumerate(records):
        for slot, (endpoint, got, request) in enumerate(free):
            if endpoint != record.endpoint:
                continue
            if record.expected == got:
                pairs[index] = (got, request)
            elif record.as_sent and got == record.sent and _body(request) == sdk_json(record.request):
                # The SDK's own JSON, the client IP in X-Forwarded-For (check_forwarding): the
                # rows are still the normalised record's.
                pairs[index] = (record.expected, request)
            else:
                continue
            del free[slot]
            break
        else:
            nearest = [g for e, g, _ in free if e == record.endpoint]
            report.problem(
                f"mixpanel: {record.operation}: not received as expected\n  expected {canonical(record.expected)}"
                + (f"\n  nearest  {canonical(nearest[0])}" if nearest else "")
            )
    for endpoint, got, _ in free:
        report.problem(f"mixpanel: /{endpoint} got a record nobody sent (or sent twice): {canonical(got)[:300]}")
    return pairs


def _body(request: Received) -> bytes:
    gzipped = request.headers.get("content-encoding", "").lower() == "gzip"
    return gzip.decompress(request.body) if gzipped else request.body


def check_forwarding(record: SentRecord, upstream: Received, client_ip: str, report: Report) -> None:
    """How the proxy called Mixpanel for it: the client's IP only when the SDK asked for
    geolocation, the SDK's /import credentials passed on."""
    if record.endpoint == "import":
        if upstream.headers.get("authorization") != record.request.headers.get("authorization"):
            report.problem(f"mixpanel: {record.operation}: /import Authorization not forwarded as sent")
        return
    wants_ip = flag(record.request, "ip") == "1"
    ip, forwarded = upstream.query.get("ip"), upstream.headers.get("x-forwarded-for")
    if wants_ip and (ip != "1" or forwarded != client_ip):
        report.problem(f"mixpanel: {record.operation}: sent with ip=1 but forwarded ip={ip}, X-Forwarded-For={forwarded}")
    if not wants_ip and (ip != "0" or forwarded is not None):
        report.problem(f"mixpanel: {record.operation}: sent with ip=0 but forwarded ip={ip}, X-Forwarded-For={forwarded}")


def check_replay(sent: list[Sent], mp: MixpanelDouble, report: Report) -> tuple[int, int]:
    """/record batches: forwarded byte for byte, with their query and Authorization."""
    batches = [r for r in sent if r.endpoint == "record" and r.method == "POST"]
    free = list(mp.requests("record"))
    landed = 0
    for batch in batches:
        for slot, got in enumerate(free):
            if got.body == batch.body and got.query == {k: v for k, v in _query_pairs(batch)}:
                if got.headers.get("authorization") != batch.headers.get("authorization"):
                    report.problem("replay: Authorization not forwarded as sent")
                landed += 1
                del free[slot]
                break
        else:
            report.problem(f"replay: a /record batch ({len(batch.body)} bytes, {batch.url[-120:]}) did not reach Mixpanel intact")
    if free:
        report.problem(f"replay: Mixpanel got {len(free)} /record request(s) nobody sent")
    return landed, len(batches)


def _query_pairs(request: Sent) -> Iterable[tuple[str, str]]:
    return parse_qsl(urlsplit(request.url).query, keep_blank_values=True)


# -- destinations ------------------------------------------------------------------------------


@dataclass
class Expected:
    index: int  # of the SentRecord
    table: str
    row: dict[str, Any]


def expected_rows(
    records: list[SentRecord], pairs: dict[int, tuple[Any, Received]], schemas: dict[str, TableSchema]
) -> list[Expected]:
    out = []
    for index, record in enumerate(records):
        # The normalised record as the double got it (the receive time filled in); if it
        # never got there, the expectation itself (its receive time left unknown).
        payload = pairs[index][0] if index in pairs else _unknown_time(record.expected)
        batch = to_rows([Record(KIND[record.endpoint], payload, 0.0, None)], schemas)  # type: ignore[arg-type]
        for table, rows in batch.tables.items():
            # insert_time is the proxy's clock: checked against the run's window instead.
            out += [Expected(index, table, {**row, "insert_time": None}) for row in rows]
    return out


def _unknown_time(value: Any) -> Any:
    if isinstance(value, AnyTime):
        return None
    if isinstance(value, dict):
        return {k: _unknown_time(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unknown_time(v) for v in value]
    return value


def identity(table: str, row: dict[str, Any], columns: set[str]) -> str:
    if table == "events":  # by insert_id; a destination that keeps only properties, by those
        return canonical(["events", row.get("insert_id") if "insert_id" in columns else _json(row.get("properties"))])
    return canonical([table, [row.get(c) for c in IDENTITY if c in columns], _json(row.get("properties"))])


def compare_landing(
    landing: Landing,
    records: list[SentRecord],
    expected: list[Expected],
    schemas: dict[str, TableSchema],
    window: tuple[float, float],
    report: Report | None,
) -> set[int]:
    """Indexes of the sent records whose every row landed exactly once, column for column."""
    by_table: dict[str, list[Expected]] = defaultdict(list)
    for item in expected:
        by_table[item.table].append(item)
    failed: set[int] = set()
    schema_by_name = {s.name: s for s in schemas.values()}
    for table in sorted({s.name for s in schemas.values()}):
        landed = landing.rows(table)
        columns = set().union(*(row.keys() for row in landed)) if landed else set(schema_by_name[table].column_names)
        pool: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in landed:
            pool[identity(table, row, columns)].append(row)
        for item in by_table.get(table, []):
            key = identity(table, item.row, columns)
            if not pool.get(key):
                failed.add(item.index)
                if report:
                    report.problem(
                        f"{landing.name}: {records[item.index].operation}: row missing from {table}: {canonical(item.row)[:300]}"
                    )
                continue
            got = pool[key].pop(0)
            diffs = [
                c.name
                for c in schema_by_name[table].columns
                if c.name in got and c.name != "insert_time" and not same(c.type, item.row.get(c.name), got[c.name])
            ]
            inserted = _epoch(got.get("insert_time")) if "insert_time" in got else window[0]
            if inserted is None or not window[0] - 5 <= inserted <= window[1] + 120:
                diffs.append("insert_time")
            if diffs:
                failed.add(item.index)
                if report:
                    shown = {c: (item.row.get(c), got.get(c)) for c in diffs}
                    report.problem(
                        f"{landing.name}: {records[item.index].operation}: {table} columns differ (expected, got): {shown}"
                    )
        extra = [row for rows in pool.values() for row in rows]
        if extra and report:
            report.problem(f"{landing.name}: {len(extra)} unexpected row(s) in {table}, e.g. {canonical(extra[0])[:300]}")
            failed.add(-1)
    return failed


# -- one client's run --------------------------------------------------------------------------


def run(
    client: str,
    records: list[SentRecord],
    sent: list[Sent],
    mp: MixpanelDouble,
    proxy: Any,
    *,
    client_ip: str = "127.0.0.1",
    replay: bool = False,
    not_applicable: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Report:
    """Check everything, fill the matrix for `client`, stop the proxy on the way (so that
    shutdown drains every buffer), and return the problems found."""
    report = Report(client)
    window = (proxy.started_at, time.time())

    # Mixpanel is forwarded synchronously, but beacons give no answer: wait for them all.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(received_records(mp)) < len(records):
        time.sleep(0.1)
    pairs = pair_with_mixpanel(records, received_records(mp), report)
    for index, (_, upstream) in pairs.items():
        check_forwarding(records[index], upstream, client_ip, report)

    schemas = build_schemas(Settings.from_mapping(proxy.env))
    expected = expected_rows(records, pairs, schemas)
    # Rows land within BATCH_MAX_SECONDS while the proxy runs ...
    deadline = time.monotonic() + timeout
    while any(compare_landing(d, records, expected, schemas, window, None) for d in proxy.landings):
        if time.monotonic() > deadline:
            report.problem(f"rows had not all landed {timeout:.0f} s after the client finished (while the proxy ran)")
            break
        time.sleep(0.5)
    # ... and nothing more arrives when it shuts down (SIGTERM drains every buffer).
    code = proxy.stop()
    if code != 0:
        report.problem(f"proxy exited with {code}:\n{proxy.log()[-2000:]}")
    if proxy.dead_lettered():
        report.problem(f"dead-lettered: {[str(p) for p in proxy.dead_lettered()][:5]}\n{proxy.log()[-2000:]}")
    window = (window[0], time.time())
    failed = {d.name: compare_landing(d, records, expected, schemas, window, report) for d in proxy.landings}

    by_operation: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_operation[record.operation].append(index)
    for operation, indexes in by_operation.items():
        MATRIX.add(client, operation, "mixpanel", sum(i in pairs for i in indexes), len(indexes))
        for landing in proxy.landings:
            MATRIX.add(client, operation, landing.name, sum(i not in failed[landing.name] for i in indexes), len(indexes))
        for name, reason in proxy.missing.items():
            MATRIX.add(client, operation, name, None, len(indexes), "skipped")
            MATRIX.note(f"{name}: not run ({reason})")
    if replay:
        landed, total = check_replay(sent, mp, report)
        MATRIX.add(client, "session replay (/record batches)", "mixpanel", landed, total)
        for landing in proxy.landings:
            MATRIX.add(client, "session replay (/record batches)", landing.name, None, total, "pass-through")
        if not total:
            report.problem("replay: the browser sent no /record batch")
    for operation, reason in (not_applicable or {}).items():
        MATRIX.add(client, operation, "mixpanel", None, 0, "n/a")
        MATRIX.note(f"{client} {operation}: {reason}")
    if not records:
        report.problem("the client sent no record")
    return report
