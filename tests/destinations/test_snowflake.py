"""The snowflake destination against fakesnow in server mode (the real connector's HTTP
protocol), through the running proxy under gunicorn where it matters.

fakesnow cannot evaluate a path with a `$` key (`properties:"$browser"::string` fails with
"Session variable '$BROWSER' does not exist"): the tests fetch the VARIANT and parse it,
which proves the same stored value. On real Snowflake that query works as written.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from core.settings import ConfigError, Settings
from destinations.base import PermanentError, TransientError
from destinations.rows import to_rows
from destinations.snowflake import RowError, SessionGone, SnowflakeConfig, SnowflakeSink, classify, resolve
from tests.destinations.adapters.snowflake import SCHEMA, read_table
from tests.fixtures_core import RunningProxy, run_proxy  # noqa: F401 - fixture
from tests.support.processes import free_port
from tests.support.standins.snowflake import SnowflakeStandin

pytestmark = pytest.mark.emulator

TRICKY: dict[str, Any] = {
    "$browser": "Chrome",
    "quote": "say \"hi\", it's 'quoted'",
    "backslash": "C:\\temp\\new \\u0041 \\\\",
    "newlines": "line1\nline2\r\nline3\ttab",
    "unicode": "naïve café – 日本語 – 🎉 👩‍💻",
    "nested": {"a": [1, {"b": None, "c": [True, False]}], "d": {"e": {"f": "g"}}, "empty": {}, "list": []},
    "dollar_value": "$browser $os :1 ? %s {0} ${x}",
    "sql": "'); DROP TABLE events; --",
    "large_int": 9007199254740993,
    "float": 1.0000000000000002,
    "null": None,
}


@pytest.fixture
def database() -> str:
    return f"T_{uuid.uuid4().hex[:10].upper()}"


def events(tag: str, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "event": f"test {tag}",
            "properties": {
                "token": "sf-token",
                "distinct_id": f"user-{i % 3}",
                "$insert_id": f"{tag}-{i}",
                "time": 1767225600 + i,
                "n": i,
                **extra,
            },
        }
        for i in range(n)
    ]


def post(proxy: RunningProxy, path: str, items: list[dict[str, Any]]) -> None:
    reply = requests.post(f"{proxy.url}{path}", data={"data": json.dumps(items)}, timeout=60)
    assert reply.status_code == 200 and reply.text == "1", (reply.status_code, reply.text[:300], proxy.log()[-2000:])


def proxy_env(standin: SnowflakeStandin, database: str, **extra: str) -> dict[str, str]:
    return {"DESTINATIONS": "snowflake", **{k.upper(): v for k, v in standin.env(database, **extra).items()}}


def sink_for(standin: SnowflakeStandin, database: str, **extra: str) -> SnowflakeSink:
    return SnowflakeSink(Settings.from_mapping(standin.env(database, **extra)))


def spooled(proxy: RunningProxy) -> list[dict[str, Any]]:
    spool = proxy.data_dir.parent / proxy.data_dir.name.replace("data", "spool")
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(spool.rglob("*.ndjson"))]


# -- through the proxy ------------------------------------------------------------------------


def test_records_sent_through_the_proxy_are_queryable(
    run_proxy: Callable[..., RunningProxy],  # noqa: F811
    snowflake_standin: SnowflakeStandin,
    database: str,
) -> None:
    proxy = run_proxy(**proxy_env(snowflake_standin, database))
    post(proxy, "/track", events("q", 25, **{"$browser": "Firefox"}))
    post(proxy, "/engage", [{"$token": "sf-token", "$distinct_id": "user-1", "$set": {"plan": "pro"}, "$unset": ["old"]}])
    post(proxy, "/groups", [{"$token": "sf-token", "$group_key": "company", "$group_id": "acme", "$set": {"size": 10}}])

    def count(table: str) -> int:
        return snowflake_standin.query(f'SELECT COUNT(*) FROM "{database}"."{SCHEMA}"."{table}"')[0][0]

    assert (count("EVENTS"), count("USERS"), count("GROUPS")) == (25, 2, 1)
    per_user = snowflake_standin.query(
        f'SELECT "DISTINCT_ID", COUNT(*) FROM "{database}"."{SCHEMA}"."EVENTS" GROUP BY 1 ORDER BY 1'
    )
    assert per_user == [("user-0", 9), ("user-1", 8), ("user-2", 8)]
    # Real Snowflake: SELECT properties:"$browser"::string FROM events. fakesnow cannot: parse the VARIANT.
    stored = snowflake_standin.query(f'SELECT "PROPERTIES" FROM "{database}"."{SCHEMA}"."EVENTS"')
    assert {json.loads(value)["$browser"] for (value,) in stored} == {"Firefox"}
    users = {row["operation"]: row for row in read_table(snowflake_standin, database, "users")}
    assert users["$set"]["properties"] == {"plan": "pro"} and users["$unset"]["properties"] == ["old"]
    [group] = read_table(snowflake_standin, database, "groups")
    assert (group["group_key"], group["group_id"], group["properties"]) == ("company", "acme", {"size": 10})


def test_insert_and_stage_paths_land_the_same_rows(
    run_proxy: Callable[..., RunningProxy],  # noqa: F811
    snowflake_standin: SnowflakeStandin,
) -> None:
    databases = {"insert": f"T_INS_{uuid.uuid4().hex[:8].upper()}", "stage": f"T_STG_{uuid.uuid4().hex[:8].upper()}"}
    sent = events("same", 40, **TRICKY)
    for path, database in databases.items():
        extra = {"snowflake_stage": "PROXY_STAGE"} if path == "stage" else {}
        proxy = run_proxy(**proxy_env(snowflake_standin, database, **extra))
        post(proxy, "/track", sent)
        proxy.stop()

    def landed(database: str) -> list[dict[str, Any]]:
        rows = read_table(snowflake_standin, database, "events")
        return sorted(({k: v for k, v in r.items() if k != "insert_time"} for r in rows), key=lambda r: r["insert_id"])

    by_insert, by_stage = landed(databases["insert"]), landed(databases["stage"])
    assert len(by_insert) == 40 and by_insert == by_stage
    for row in by_insert:  # every tricky value came back exactly, with its type
        for key, value in TRICKY.items():
            assert row["properties"][key] == value and type(row["properties"][key]) is type(value), key
    # PURGE removed every loaded file: nothing is left on the stage.
    assert snowflake_standin.query(f'LIST @"{databases["stage"]}"."{SCHEMA}"."PROXY_STAGE"') == []


def test_a_sql_error_in_one_batch_is_dead_lettered_and_the_next_batch_lands(
    run_proxy: Callable[..., RunningProxy],  # noqa: F811
    snowflake_standin: SnowflakeStandin,
    database: str,
) -> None:
    """The table's PLAN_CODE column is a NUMBER (made before the proxy, which sends it as a
    string): Snowflake refuses 'abc'. Only that row is dead-lettered, with Snowflake's reason;
    the rest of its batch and the next batch land."""
    snowflake_standin.query(f'CREATE DATABASE IF NOT EXISTS "{database}"')
    snowflake_standin.query(f'CREATE SCHEMA IF NOT EXISTS "{database}"."{SCHEMA}"')
    snowflake_standin.query(
        f'CREATE TABLE "{database}"."{SCHEMA}"."EVENTS" ("EVENT" VARCHAR, "EVENT_TIME" TIMESTAMP_NTZ, '
        '"INSERT_ID" VARCHAR, "PLAN_CODE" NUMBER(38,0))'
    )
    proxy = run_proxy(**proxy_env(snowflake_standin, database), EVENTS_EXTRA_COLUMNS="plan_code:STRING")
    first = events("first", 10, plan_code="42")
    first[6]["properties"]["plan_code"] = "abc"
    post(proxy, "/track", first)
    post(proxy, "/track", events("second", 5, plan_code="7"))

    landed = read_table(snowflake_standin, database, "events")
    assert sorted(r["insert_id"] for r in landed) == sorted(
        [f"first-{i}" for i in range(10) if i != 6] + [f"second-{i}" for i in range(5)]
    )
    assert {r["plan_code"] for r in landed} == {42, 7}
    [batch] = spooled(proxy)
    assert batch["destination"] == "snowflake" and batch["table"] == "events"
    assert batch["reason"].startswith("rejected: snowflake refused the row: "), batch["reason"]
    assert "abc" not in batch["reason"]  # Snowflake quotes the value back: it stays out of reasons and logs
    [row] = batch["rows"]
    assert row["insert_id"] == "first-6" and row["properties"]["plan_code"] == "abc"


# -- set-up ------------------------------------------------------------------------------------


def test_setup_is_idempotent_and_keeps_existing_tables_and_data(snowflake_standin, database):
    """An EVENTS table made earlier (an older column set, a column of the user's own, a row)
    survives set-up twice; only the missing columns are added, extra columns included."""
    q = snowflake_standin.query
    q(f'CREATE DATABASE IF NOT EXISTS "{database}"')
    q(f'CREATE SCHEMA IF NOT EXISTS "{database}"."{SCHEMA}"')
    q(f'CREATE TABLE "{database}"."{SCHEMA}"."EVENTS" ("EVENT" VARCHAR, "INSERT_ID" VARCHAR, "MINE" VARCHAR)')
    q(f'INSERT INTO "{database}"."{SCHEMA}"."EVENTS" ("EVENT", "INSERT_ID", "MINE") VALUES (?, ?, ?)', ("old", "o-1", "keep"))
    sink = sink_for(snowflake_standin, database, events_extra_columns="utm_source:STRING,cart:FLOAT64")
    try:
        sink.setup()
        sink.setup()
    finally:
        sink.close()
    columns = q(
        f'SELECT column_name FROM "{database}".information_schema.columns WHERE table_schema = ? AND table_name = ?',
        (SCHEMA, "EVENTS"),
    )
    expected = {"EVENT", "EVENT_TIME", "INSERT_TIME", "TOKEN", "DEVICE_ID", "INSERT_ID", "USER_ID", "DISTINCT_ID"}
    assert {c for (c,) in columns} == expected | {"PROPERTIES", "UTM_SOURCE", "CART", "MINE"}
    assert q(f'SELECT "EVENT", "INSERT_ID", "MINE" FROM "{database}"."{SCHEMA}"."EVENTS"') == [("old", "o-1", "keep")]
    tables = q(f'SELECT table_name FROM "{database}".information_schema.tables WHERE table_schema = ?', (SCHEMA,))
    assert {t for (t,) in tables} == {"EVENTS", "USERS", "GROUPS"}


def test_drop_removes_exactly_the_proxys_tables(snowflake_standin, database):
    sink = sink_for(snowflake_standin, database)
    try:
        sink.setup()
        snowflake_standin.query(f'CREATE TABLE "{database}"."{SCHEMA}"."EVENTS_ARCHIVE" ("V" VARCHAR)')
        dropped = sink.drop(["events", "users", "groups"])
    finally:
        sink.close()
    assert sorted(dropped) == sorted(f"{database}.{SCHEMA}.{t}" for t in ("EVENTS", "USERS", "GROUPS"))
    tables = snowflake_standin.query(
        f'SELECT table_name FROM "{database}".information_schema.tables WHERE table_schema = ?', (SCHEMA,)
    )
    assert tables == [("EVENTS_ARCHIVE",)]


# -- the session and its errors -------------------------------------------------------------------


def lines_for(sink: SnowflakeSink, tag: str, n: int) -> list[tuple[str, bytes]]:
    from core.records import Record

    records = [Record("event", e, 1767225600.0, "127.0.0.1") for e in events(tag, n)]  # type: ignore[arg-type]
    batch = to_rows(records, {s.kind: s for s in sink.tables.values()})
    return batch.lines("events")


def test_one_connection_is_reused_and_replaced_when_the_session_ends(snowflake_standin, database):
    sink = sink_for(snowflake_standin, database)
    try:
        sink.setup()
        assert sink.write("events", lines_for(sink, "a", 3)).written == 3
        assert sink.write("events", lines_for(sink, "b", 3)).written == 3
        assert sink.session.connects == 1
        # End the session server-side, as Snowflake does when a session expires.
        token = sink.session._conn.rest.token
        reply = requests.post(
            f"{snowflake_standin.url}/session?delete=true", headers={"Authorization": f'Snowflake Token="{token}"'}, timeout=10
        )
        assert reply.ok
        assert sink.write("events", lines_for(sink, "c", 3)).written == 3
        assert sink.session.connects == 2
    finally:
        sink.close()
    assert len(read_table(snowflake_standin, database, "events")) == 9


def test_errors_are_classified_for_the_delivery_layer(snowflake_standin, database, tmp_path: Path):
    sink = sink_for(snowflake_standin, database)
    try:
        sink.setup()
        snowflake_standin.query(f'DROP TABLE "{database}"."{SCHEMA}"."EVENTS"')
        with pytest.raises(PermanentError, match="002003"):  # the table is gone: no retry brings it back
            sink.write("events", lines_for(sink, "gone", 2))
    finally:
        sink.close()
    closed = sink_for(snowflake_standin, database, snowflake_access_url=f"http://127.0.0.1:{free_port()}")
    closed_settings = closed.config
    assert closed_settings.password not in repr(closed_settings)
    with pytest.raises(TransientError) as caught:  # nothing listens: retry later
        closed.write("events", lines_for(closed, "down", 1))
    assert "standin-password" not in str(caught.value)

    from snowflake.connector import errors as sf

    assert isinstance(classify(sf.ProgrammingError("x", errno=1003, sqlstate="42000"), "INSERT"), PermanentError)
    assert isinstance(classify(sf.ProgrammingError("x", errno=3001, sqlstate="42501"), "INSERT"), PermanentError)
    assert isinstance(classify(sf.ProgrammingError("Numeric value 'a'", errno=100038, sqlstate="22018"), "I"), RowError)
    assert isinstance(classify(sf.OperationalError("x", errno=250001), "INSERT"), TransientError)
    assert isinstance(classify(sf.ProgrammingError("lock", errno=625, sqlstate="57014"), "INSERT"), TransientError)
    assert isinstance(classify(sf.DatabaseError("x", errno=390112), "INSERT"), SessionGone)
    assert isinstance(classify(sf.DatabaseError("bad password", errno=390100, sqlstate="28000"), "login"), PermanentError)
    assert isinstance(classify(sf.ProgrammingError("no warehouse", errno=606, sqlstate="57P03"), "I"), PermanentError)
    assert isinstance(classify(sf.TooManyRequests(), "INSERT"), TransientError)


# -- settings ----------------------------------------------------------------------------------


def test_names_resolve_as_snowflake_identifiers():
    assert resolve("events", "v") == "EVENTS" and resolve('"Mixed Case"', "v") == "Mixed Case"
    with pytest.raises(ConfigError, match="snowflake_database"):
        base = {"snowflake_account": "a", "snowflake_user": "u", "snowflake_password": "p"}
        SnowflakeConfig.from_settings(Settings.from_mapping({**base, "snowflake_database": "bad-name"}))
    config = SnowflakeConfig.from_settings(
        Settings.from_mapping(
            {
                "snowflake_account": "a",
                "snowflake_user": "u",
                "snowflake_password": "p",
                "snowflake_database": "db",
                "snowflake_stage": "@other.stg",
                "snowflake_access_url": "http://127.0.0.1:8087",
            }
        )
    )
    assert config.stage == ("DB", "OTHER", "STG") and (config.host, config.port, config.protocol) == ("127.0.0.1", 8087, "http")
    assert config.schema == "PUBLIC" and config.load == "stage"


def test_missing_credentials_and_pipe_without_key_name_the_variable():
    base = {"snowflake_account": "a", "snowflake_user": "u", "snowflake_database": "db"}
    with pytest.raises(ConfigError, match="snowflake_password or snowflake_private_key"):
        SnowflakeConfig.from_settings(Settings.from_mapping(base))
    with pytest.raises(ConfigError, match="snowflake_stage"):
        SnowflakeConfig.from_settings(Settings.from_mapping({**base, "snowflake_password": "p", "snowflake_pipe": "p"}))
    with pytest.raises(ConfigError, match="snowflake_private_key"):
        SnowflakeConfig.from_settings(
            Settings.from_mapping({**base, "snowflake_password": "p", "snowflake_pipe": "p", "snowflake_stage": "s"})
        )


def test_key_pair_authentication_logs_in(snowflake_standin, database):
    """An encrypted PKCS#8 key with its passphrase: the connector signs its login JWT with it.
    (fakesnow does not check the signature; the Snowpipe test double does, see test_snowpipe.)"""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"s3cret")
    ).decode()
    env = snowflake_standin.env(database, snowflake_private_key=pem.replace("\n", "\\n"))
    env.pop("snowflake_password")
    settings = Settings.from_mapping({**env, "snowflake_private_key_passphrase": "s3cret"})
    sink = SnowflakeSink(settings)
    try:
        assert sink.config.connect_args()["authenticator"] == "SNOWFLAKE_JWT"
        sink.setup()
        assert sink.write("events", lines_for(sink, "kp", 2)).written == 2
    finally:
        sink.close()
    with pytest.raises(ConfigError, match="snowflake_private_key cannot be read"):
        SnowflakeConfig.from_settings(Settings.from_mapping({**env, "snowflake_private_key_passphrase": "wrong"}))
