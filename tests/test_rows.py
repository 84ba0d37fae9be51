"""The row model: records -> rows, exactly, for every SDK's typical records."""

from __future__ import annotations

import copy
import math
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.records import Record, normalize
from core.settings import ConfigError, Settings
from destinations import rows
from destinations.rows import RowBatch, cast, dumps_row, encode_lines, hour_of, insert_id, json_safe, parse_time, to_rows
from destinations.schema import Column, build_schemas, parse_extra_columns

RECEIVED = 1_700_000_100.25  # 2023-11-14T22:15:00.250000Z
RECEIVED_TS = "2023-11-14T22:15:00.250000Z"


def schemas(**env: str):
    return build_schemas(Settings.from_mapping(env))


def rows_for(kind: str, payload, **env: str) -> RowBatch:
    return to_rows([Record(kind, payload, RECEIVED, "9.9.9.9")], schemas(**env))


BROWSER = {
    "event": "Page View",
    "properties": {
        "$os": "Mac OS X",
        "$browser": "Chrome",
        "browser": "my own browser property",
        "$current_url": "https://shop.example/",
        "$browser_version": 120,
        "mp_lib": "web",
        "$lib_version": "2.83.0",
        "$insert_id": "k2j3h4g5",
        "time": 1700000000.123,
        "distinct_id": "$device:d-1",
        "$device_id": "d-1",
        "token": "tok",
        "ip": "9.9.9.9",
    },
}
PYTHON = {
    "event": "signup",
    "properties": {
        "token": "tok",
        "distinct_id": "u-1",
        "time": 1700000000,
        "$insert_id": "py-1",
        "mp_lib": "python",
        "plan": "pro",
    },
}
NODE = {"event": "purchase", "properties": {"distinct_id": "u-2", "token": "tok", "time": 1700000000123, "mp_lib": "node"}}
ANDROID = {
    "event": "app open",
    "properties": {
        "token": "tok",
        "time": 1700000000123,
        "distinct_id": "u-3",
        "$device_id": "dev-3",
        "$user_id": "u-3",
        "$os": "Android",
    },
    "$mp_metadata": {"$mp_event_id": "5e1f0c", "$mp_session_id": "s-1", "$mp_session_seq_id": 3},
}
SWIFT = {
    "event": "tap",
    "properties": {"token": "tok", "time": 1700000000.5, "distinct_id": "u-4", "$insert_id": "sw-1", "$device_id": "dev-4"},
}


@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    [
        (
            "browser",
            BROWSER,
            {
                "event": "Page View",
                "event_time": "2023-11-14T22:13:20.123000Z",
                "token": "tok",
                "device_id": "d-1",
                "insert_id": "k2j3h4g5",
                "user_id": None,
                "distinct_id": "$device:d-1",
                "properties": BROWSER["properties"],
            },
        ),
        (
            "python",
            PYTHON,
            {
                "event": "signup",
                "event_time": "2023-11-14T22:13:20.000000Z",
                "token": "tok",
                "device_id": None,
                "insert_id": "py-1",
                "user_id": None,
                "distinct_id": "u-1",
                "properties": PYTHON["properties"],
            },
        ),
        (
            "android",
            ANDROID,
            {
                "event": "app open",
                "event_time": "2023-11-14T22:13:20.123000Z",
                "token": "tok",
                "device_id": "dev-3",
                "insert_id": "5e1f0c",
                "user_id": "u-3",
                "distinct_id": "u-3",
                # $mp_metadata sits beside properties in the SDK's record; it is kept, losslessly.
                "properties": {**ANDROID["properties"], "$mp_metadata": ANDROID["$mp_metadata"]},
            },
        ),
        (
            "swift",
            SWIFT,
            {
                "event": "tap",
                "event_time": "2023-11-14T22:13:20.500000Z",
                "token": "tok",
                "device_id": "dev-4",
                "insert_id": "sw-1",
                "user_id": None,
                "distinct_id": "u-4",
                "properties": SWIFT["properties"],
            },
        ),
    ],
)
def test_event_rows_per_sdk(name, payload, expected):
    batch = rows_for("event", payload)
    assert batch.tables == {"events": [{**expected, "insert_time": RECEIVED_TS}]}
    assert not batch.dropped


def test_node_event_without_insert_id_gets_a_deterministic_hash():
    first = rows_for("event", NODE).tables["events"][0]
    again = rows_for("event", dict(NODE)).tables["events"][0]
    assert first["insert_id"] == again["insert_id"]
    assert len(first["insert_id"]) == 32 and int(first["insert_id"], 16) >= 0
    other = rows_for("event", {**NODE, "properties": {**NODE["properties"], "time": 1700000000124}}).tables["events"][0]
    assert other["insert_id"] != first["insert_id"]
    assert first["event_time"] == "2023-11-14T22:13:20.123000Z"


def test_insert_id_precedence():
    assert insert_id({"$mp_metadata": {"$mp_event_id": "meta"}}, {"$insert_id": "explicit"}) == "explicit"
    assert insert_id({"$mp_metadata": {"$mp_event_id": "meta"}}, {"$insert_id": ""}) == "meta"
    assert insert_id({"$mp_metadata": {"$mp_event_id": 42}}, {}) == "42"


ENGAGE = {
    "$token": "tok",
    "$distinct_id": "u-1",
    "$ip": "1.2.3.4",
    "$set": {"$email": "a@example.com", "plan": "pro"},
    "$set_once": {"first_seen": "2023-11-14"},
    "$add": {"logins": 1},
    "$append": {"visited": "home"},
    "$union": {"tags": ["a", "b"]},
    "$remove": {"tags": "a"},
    "$unset": ["old_prop", "$older"],
    "$delete": "",
    "$ignore_alias": "true",
}


def test_engage_has_one_row_per_operation_in_a_fixed_order():
    batch = rows_for("user", ENGAGE)
    ops = ["$set", "$set_once", "$add", "$append", "$union", "$remove", "$unset", "$delete", "$ignore_alias"]
    assert batch.tables["users"] == [
        {
            "token": "tok",
            "distinct_id": "u-1",
            "ip": "1.2.3.4",
            "insert_time": RECEIVED_TS,
            "operation": op,
            "properties": ENGAGE[op],
        }
        for op in ops
    ]
    # $unset stays a list of names (the original turned it into "0","1" keys).
    assert batch.tables["users"][6]["properties"] == ["old_prop", "$older"]


def test_groups_rows():
    payload = {"$token": "tok", "$group_key": "company", "$group_id": "acme", "$set": {"name": "Acme"}, "$unset": ["x"]}
    assert rows_for("group", payload).tables["groups"] == [
        {
            "token": "tok",
            "group_key": "company",
            "group_id": "acme",
            "operation": "$set",
            "insert_time": RECEIVED_TS,
            "properties": {"name": "Acme"},
        },
        {
            "token": "tok",
            "group_key": "company",
            "group_id": "acme",
            "operation": "$unset",
            "insert_time": RECEIVED_TS,
            "properties": ["x"],
        },
    ]


def test_profile_without_operation_and_non_objects_are_counted_not_raised():
    batch = to_rows(
        [Record("user", {"$distinct_id": "u"}, RECEIVED), Record("event", None, RECEIVED), Record("event", [1], RECEIVED)],
        schemas(),
    )
    assert batch.tables == {}
    assert batch.dropped == {"no_operation": 1, "not_an_object": 2}


def test_user_properties_never_overwrite_columns():
    payload = {
        "event": "real",
        "properties": {"event": "fake", "insert_time": "1999", "properties": "p", "token": "t", "event_time": "x", "time": 5},
    }
    row = rows_for("event", payload).tables["events"][0]
    assert row["event"] == "real"
    assert row["insert_time"] == RECEIVED_TS
    assert row["event_time"] == "1970-01-01T00:00:05.000000Z"
    assert row["token"] == "t"  # the token column is the token property, by definition
    assert row["properties"] == payload["properties"]


def test_odd_events_still_make_rows():
    row = rows_for("event", {"event": 42, "properties": "not an object"}).tables["events"][0]
    assert row["event"] == "42"
    assert row["properties"] == {"properties": "not an object"}
    assert row["event_time"] == RECEIVED_TS
    row = rows_for("event", {"properties": {"distinct_id": 7, "time": "garbage"}}).tables["events"][0]
    assert row["event"] is None and row["distinct_id"] == "7"
    assert row["event_time"] == RECEIVED_TS
    assert row["properties"]["time"] == "garbage"  # the original value is kept


TIMES = [
    (1700000000, 1700000000.0),
    (1700000000.5, 1700000000.5),
    (1700000000123, 1700000000.123),
    (1700000000123.456, 1700000000.123456),  # ms with a fraction
    ("1700000000", 1700000000.0),
    ("1700000000123", 1700000000.123),
    (" 1700000000.25 ", 1700000000.25),
    ("2023-11-14T22:13:20Z", 1700000000.0),
    ("2023-11-14T22:13:20.5+00:00", 1700000000.5),
    ("2023-11-15T00:13:20+02:00", 1700000000.0),  # offsets honoured
    ("2023-11-14T22:13:20", 1700000000.0),  # naive means UTC
    ("2023-11-14", 1699920000.0),
    (0, 0.0),
    (-86400, -86400.0),
    (253402300799, 253402300.799),  # ms, year 1978: unambiguous by the 1e11 rule
    ("garbage", None),
    ("", None),
    (None, None),
    (True, None),
    (float("nan"), None),
    (float("inf"), None),
    (float("-inf"), None),
    ("nan", None),
    ("-Infinity", None),
    ("1e400", None),
    (1e20, None),  # far future even as ms
    (-1e20, None),  # far past
    ({"t": 1}, None),
    ([1700000000], None),
    (1e11 - 0.5, 1e11 - 0.5),  # the last float taken as seconds
    (-0.0, 0.0),
]


@pytest.mark.parametrize(("value", "expected"), TIMES)
def test_parse_time(value, expected):
    result = parse_time(value)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("value", "expected"), TIMES)
def test_an_events_time_column_is_its_parsed_time_or_the_receive_time(value, expected):
    """event_row takes a float in seconds as it is, without parse_time: the column must be
    what parse_time gives all the same, in the SDKs' own shape and in any other."""
    for payload in ({"event": "e", "properties": {"time": value}}, {"event": "e", "properties": {"time": value}, "x": 1}):
        row = rows_for("event", payload).tables["events"][0]
        assert row["event_time"] == rows.format_timestamp(RECEIVED if expected is None else parse_time(value))


def test_far_future_time_uses_receive_time_and_keeps_original():
    row = rows_for("event", {"event": "e", "properties": {"time": 10**19}}).tables["events"][0]
    assert row["event_time"] == RECEIVED_TS and row["properties"]["time"] == 10**19


EXTRA = "utm_source:STRING,$browser:browser:STRING,cart_value:FLOAT64,qty:INT64,vip:BOOL,signup:TIMESTAMP,meta:JSON"


def test_extra_columns_are_cast_and_stay_in_properties():
    props = {
        "utm_source": 12,
        "$browser": "Chrome",
        "cart_value": "19.5",
        "qty": 3.0,
        "vip": "true",
        "signup": 1700000000,
        "meta": {"a": [1]},
        "time": 1,
    }
    batch = rows_for("event", {"event": "e", "properties": props}, events_extra_columns=EXTRA)
    row = batch.tables["events"][0]
    assert {k: row[k] for k in ("utm_source", "browser", "cart_value", "qty", "vip", "signup", "meta")} == {
        "utm_source": "12",
        "browser": "Chrome",
        "cart_value": 19.5,
        "qty": 3,
        "vip": True,
        "signup": "2023-11-14T22:13:20.000000Z",
        "meta": {"a": [1]},
    }
    assert row["properties"] == props
    assert not batch.cast_failures


def test_extra_column_cast_failures_leave_null_and_are_counted():
    props = {"cart_value": "lots", "qty": 2.5, "vip": "maybe", "signup": "never"}
    batch = rows_for("event", {"event": "e", "properties": props}, events_extra_columns=EXTRA)
    row = batch.tables["events"][0]
    assert [row[k] for k in ("cart_value", "qty", "vip", "signup", "utm_source")] == [None] * 5
    assert batch.cast_failures == {"events.cart_value": 1, "events.qty": 1, "events.vip": 1, "events.signup": 1}


def test_profile_extra_columns_read_the_operation_value():
    batch = rows_for(
        "user", {"$distinct_id": "u", "$set": {"$email": "a@b"}, "$unset": ["x"]}, users_extra_columns="$email:email:STRING"
    )
    assert [r["email"] for r in batch.tables["users"]] == ["a@b", None]


@pytest.mark.parametrize(
    "spec",
    ["nocolon", "a:NOTATYPE", ":STRING", "a:bad name:STRING", "event:STRING", "a:x:STRING,b:x:INT64", "a:b:c:d"],
)
def test_invalid_extra_column_specs_stop_start_up(spec):
    with pytest.raises(ConfigError, match="EVENTS_EXTRA_COLUMNS"):
        schemas(events_extra_columns=spec)


def test_extra_column_name_derived_from_property():
    (column,) = parse_extra_columns("$utm-source:STRING", "X", ())
    assert column == Column("utm_source", "STRING", "NULLABLE", "$utm-source")


@pytest.mark.parametrize(
    ("value", "type_", "expected"),
    [
        (True, "INT64", ValueError),
        (2**63, "INT64", ValueError),
        ("7", "INT64", 7),
        (1, "BOOL", True),
        (float("nan"), "FLOAT64", ValueError),
        (False, "STRING", "false"),
        ([1, {"a": None}], "STRING", '[1, {"a": null}]'),
        (None, "FLOAT64", None),
    ],
)
def test_cast(value, type_, expected):
    column = Column("c", type_, source="c")
    if expected is ValueError:
        with pytest.raises(ValueError):
            cast(value, column)
    else:
        assert cast(value, column) == expected


def test_values_that_are_not_json_never_raise():
    cyclic: dict = {}
    cyclic["self"] = cyclic
    deep: list = []
    node = deep
    for _ in range(5000):
        node.append([])
        node = node[0]
    payload = {
        "event": "e",
        "properties": {"when": datetime(2024, 1, 1, tzinfo=UTC), "raw": b"\xff", "s": {1, 2}, "c": cyclic, "deep": deep},
    }
    batch = rows_for("event", payload)
    line = dumps_row(batch.tables["events"][0]).decode()
    assert '"when":"2024-01-01T00:00:00+00:00"' in line
    assert json_safe(math.inf) == "inf"


def test_end_to_end_records_become_exactly_these_rows_in_local_files(make_app, tmp_path):
    """Every SDK's typical records, posted to the running proxy, land in the local files as
    exactly the rows the row model defines (compared column by column)."""
    from tests.support import files

    app = make_app(delivery="sync")
    client = app.test_client()
    events = [BROWSER, PYTHON, NODE, ANDROID, SWIFT]
    groups = {"$token": "tok", "$group_key": "company", "$group_id": "acme", "$set": {"name": "Acme"}}
    for path, body in (("/track", events), ("/engage", ENGAGE), ("/groups", groups)):
        assert client.post(path, json=body, headers={"X-Forwarded-For": "9.9.9.9"}).data == b"1"

    data = tmp_path / "data"
    landed = {table: files.rows(data, table) for table in ("events", "users", "groups")}
    sent = {"events": ("track", events), "users": ("engage", [ENGAGE]), "groups": ("groups", [groups])}
    for table, (endpoint, items) in sent.items():
        received = {row["insert_time"] for row in landed[table]}
        assert len(received) == 1  # one request, one receive time
        at = parse_time(received.pop())
        # normalize() completes its items in place, as it does the decoder's: give it copies
        records = normalize(endpoint, copy.deepcopy(items), client_ip="9.9.9.9", ip_enabled=True, token=None, received_at=at)
        assert landed[table] == to_rows(records, schemas()).tables[table]


@settings(max_examples=2000, deadline=None)
@given(
    seconds=st.floats(min_value=rows.MIN_EPOCH, max_value=rows.MAX_EPOCH)
    | st.integers(min_value=1_500_000_000_000, max_value=2_000_000_000_000).map(lambda ms: ms / 1000)
    | st.integers(min_value=0, max_value=10**7).map(lambda us: 1_733_000_000 + us / 1e6)
)
def test_timestamps_are_the_instant_datetime_makes_of_them(seconds: float) -> None:
    """The per-second cache and the split into microseconds round exactly as datetime does."""
    m = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    expected = f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond:06d}Z"
    assert rows.format_timestamp(seconds) == expected


def test_encoded_lines_take_about_their_own_size_in_memory():
    """Lines wait in delivery buffers, which count them at their encoded size (MAX_BUFFER_BYTES).
    orjson hands back an over-allocated buffer (8 KiB for a 900-byte row); kept as it came, a
    buffer's real memory was 8x its count (a worker at 960 MiB under MAX_BUFFER_BYTES=64 MiB)."""
    props = {f"prop_{i}": f"value {i} " + "x" * 30 for i in range(20)}
    records = [
        Record("event", {"event": "Page View", "properties": {**props, "$insert_id": f"id-{n}"}}, 1.7e9) for n in range(2000)
    ]
    batch = to_rows(records, build_schemas(Settings({})))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        (table,) = batch.tables
        lines = batch.lines(table)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    encoded = sum(len(line) for _, line in lines)
    assert encoded > 1_500_000
    # bytes objects' headers, the (hour, line) tuples, the hour strings and the list
    assert held < encoded * 1.3, f"{held:,} bytes held for {encoded:,} bytes of lines"


def test_encoded_lines_are_each_row_s_hour_and_line_whatever_the_rows_share():
    """encode_lines cuts the hour once for a run of rows sharing one insert_time string, as a
    request's rows do; rows replayed from the dead letter or changed by WAREHOUSE_TRANSFORM
    carry their own, and odd values take dumps_row's safe path."""
    ten = "2024-05-01T10:59:59.000000Z"
    rows = [
        {"insert_time": ten, "n": 1},
        {"insert_time": ten, "n": 2},
        {"insert_time": "2024-05-01T11:00:00.000000Z", "n": 3},  # the next hour
        {"insert_time": "".join(["2024-05-01T", "12:00:00.000000Z"]), "n": 4},  # equal text, another object
        {"insert_time": None, "n": 5},
        {"n": 6},
        {"insert_time": ten, "when": datetime(2024, 1, 1, tzinfo=UTC), "raw": b"\xff"},  # not JSON as it is
    ]
    assert encode_lines(rows) == [(hour_of(row), dumps_row(row)) for row in rows]
    assert [hour for hour, _ in encode_lines(rows)] == [
        "2024-05-01T10",
        "2024-05-01T10",
        "2024-05-01T11",
        "2024-05-01T12",
        "",
        "",
        "2024-05-01T10",
    ]
