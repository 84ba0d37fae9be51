"""The redshift destination against real PostgreSQL 15 and the Data API test server in front
of it (tests/support/standins/redshift.py): DDL and inserts run unchanged, rows land through
the proxy under gunicorn on both paths, values round-trip exactly, batches over 100 KB are
split, a refused value rejects only its row, failures are classified, a retried Data API
write does not insert twice, and a waiting query never blocks the gevent worker.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from core.records import Record
from core.settings import ConfigError, Settings
from destinations.base import PermanentError, TransientError
from destinations.redshift import RedshiftSink, sql
from destinations.redshift.data_api import STATEMENT_BYTES
from destinations.redshift.errors import classify, safe_message
from destinations.rows import to_rows
from destinations.schema import build_schemas
from tests.fixtures_core import run_proxy  # noqa: F401
from tests.support.processes import free_port, wait_until
from tests.support.standins.redshift import CLUSTER, DATABASE, KEY_ID, REGION, SECRET, WORKGROUP, RedshiftStandin

pytestmark = pytest.mark.emulator
EXTRAS = "utm_source:STRING,cart:FLOAT64,qty:INT64,vip:BOOL,seen:TIMESTAMP,$meta:meta:JSON"
TRICKY = {
    "quote": "say \"hi\", it's 'quoted'",
    "backslash": "C:\\temp\\new \\u0041 \\\\ \\n",
    "unicode": "naïve café – 日本語 – Ελληνικά – עברית 🎉 👩‍💻",
    "nested": {"a": [1, {"b": None, "c": [True, False]}], "d": {"e": {"f": "g"}}, "empty": {}, "list": []},
    "sql": "'); DROP TABLE events; --",
    "placeholder_like": ":v0 $1 %s ? {0} ::text",
    "large_int": 9007199254740993,
    "float": 1.0000000000000002,
    "empty_string": "",
}


@pytest.fixture
def schema() -> Iterator[str]:
    name = "t_" + uuid.uuid4().hex[:12]
    yield name


@pytest.fixture
def cleanup(redshift_standin: RedshiftStandin, schema: str) -> Iterator[None]:
    yield
    with redshift_standin.connect() as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def settings_for(env: dict[str, str], **extra: str) -> Settings:
    return Settings.from_mapping({**env, **extra})


def sink_for(standin: RedshiftStandin, mode: str, schema: str, **extra: str) -> RedshiftSink:
    env = standin.direct_env(schema) if mode == "direct" else standin.data_api_env(schema)
    return RedshiftSink(settings_for(env, **extra))


def select(standin: RedshiftStandin, query: str) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with standin.connect() as conn:
        return conn.cursor(row_factory=dict_row).execute(query).fetchall()


def event_rows(settings: Settings, count: int, blob: int = 0, start: int = 0) -> list[dict[str, Any]]:
    records = [
        Record(
            "event",
            {
                "event": "e",
                "properties": {
                    "distinct_id": f"u{i}",
                    "$insert_id": f"id-{i}",
                    "time": 1767225600 + i,
                    "i": i,
                    "blob": "x" * blob,
                },
            },
            1767225600.0,
            "203.0.113.9",
        )
        for i in range(start, start + count)
    ]
    return to_rows(records, build_schemas(settings)).tables["events"]


# --- DDL ---------------------------------------------------------------------------------------


def test_ddl_from_the_schema_model_runs_unchanged_and_setup_keeps_data(redshift_standin, schema, cleanup) -> None:
    sink = sink_for(redshift_standin, "direct", schema, events_extra_columns=EXTRAS)
    sink.setup()
    columns = select(
        redshift_standin,
        "SELECT column_name, data_type, domain_name, is_nullable, character_maximum_length FROM information_schema.columns "
        f"WHERE table_schema = '{schema}' AND table_name = 'events' ORDER BY ordinal_position",
    )
    got = {c["column_name"]: (c["domain_name"] or c["data_type"], c["is_nullable"]) for c in columns}
    assert got == {
        "event": ("character varying", "YES"),
        "event_time": ("timestamp without time zone", "NO"),
        "insert_time": ("timestamp without time zone", "NO"),
        "token": ("character varying", "YES"),
        "device_id": ("character varying", "YES"),
        "insert_id": ("character varying", "NO"),
        "user_id": ("character varying", "YES"),
        "distinct_id": ("character varying", "YES"),
        "properties": ("super", "YES"),
        "utm_source": ("character varying", "YES"),
        "cart": ("double precision", "YES"),
        "qty": ("bigint", "YES"),
        "vip": ("boolean", "YES"),
        "seen": ("timestamp without time zone", "YES"),
        "meta": ("super", "YES"),
    }
    assert {c["character_maximum_length"] for c in columns if c["data_type"] == "character varying"} == {65535}
    tables = {t.name: t for t in build_schemas(settings_for({}, events_extra_columns=EXTRAS)).values()}
    ddl = sql.create_table(schema, tables["events"])
    assert ddl.startswith(f'CREATE TABLE IF NOT EXISTS "{schema}"."events"') and "REPLACE" not in ddl
    assert sink.write("events", event_rows(settings_for({}), 3)).written == 3
    sink.setup()
    sink_for(redshift_standin, "data_api", schema, events_extra_columns=EXTRAS).setup()  # the other path: a no-op too
    assert len(select(redshift_standin, f'SELECT * FROM "{schema}"."events"')) == 3
    assert {
        r["table_name"]
        for r in select(redshift_standin, f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'")
    } == {
        "events",
        "users",
        "groups",
    }


def test_the_schema_setting_is_honoured_and_validated(redshift_standin) -> None:
    assert sink_for(redshift_standin, "direct", "Analytics").config.schema == "analytics"
    assert (
        RedshiftSink(settings_for({**redshift_standin.data_api_env("x"), "redshift_schema_name": ""})).config.schema == "public"
    )
    with pytest.raises(ConfigError, match="redshift_schema_name"):
        sink_for(redshift_standin, "direct", 'bad"name')
    with pytest.raises(ConfigError, match="redshift_workgroup"):
        RedshiftSink(settings_for({"redshift_database": "dev"}))
    with pytest.raises(ConfigError, match="redshift_db_user or redshift_secret_arn"):
        RedshiftSink(settings_for({"redshift_database": "dev", "redshift_cluster_identifier": CLUSTER}))
    with pytest.raises(ConfigError, match="redshift_database"):
        RedshiftSink(settings_for({"redshift_workgroup": WORKGROUP}))


# --- through the proxy under gunicorn --------------------------------------------------------

PATHS = ["direct", "data_api", "data_api_env_endpoint_and_aws_chain"]


def proxy_env(standin: RedshiftStandin, path: str, schema: str) -> dict[str, str]:
    if path == "direct":
        return standin.direct_env(schema)
    env = standin.data_api_env(schema)
    if path == "data_api_env_endpoint_and_aws_chain":
        # boto3's own variables: the endpoint variable, and keys from the standard chain.
        for name in ("redshift_endpoint_url", "redshift_access_key_id", "redshift_secret_access_key", "redshift_region"):
            env.pop(name)
        env.update(AWS_ENDPOINT_URL_REDSHIFT_DATA=standin.endpoint_url, AWS_ACCESS_KEY_ID=KEY_ID)
        env.update(AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION=REGION)
    return env


@pytest.mark.parametrize("path", PATHS)
def test_rows_land_exactly_through_the_proxy(redshift_standin, schema, cleanup, run_proxy, path) -> None:  # noqa: F811
    env = proxy_env(redshift_standin, path, schema)
    proxy = run_proxy(destinations="redshift", events_extra_columns=EXTRAS, **env)
    extras = {"utm_source": "news'letter", "cart": 12.5, "qty": "3", "vip": True, "seen": "2026-01-02T03:04:05.123456Z"}
    events = [
        {
            "event": f"tricky {i} – ü",
            "properties": {
                "distinct_id": f"user\\{i}'",
                "$insert_id": f"{schema}-{i}",
                "time": 1767225600 + i,
                "$meta": {"k": [i]},
            }
            | TRICKY
            | extras,
        }
        for i in range(5)
    ]
    reply = requests.post(f"{proxy.url}/track", data={"data": json.dumps(events)}, timeout=30)
    assert reply.status_code == 200 and reply.text == "1", reply.text
    engage = {"$token": "tok", "$distinct_id": "u1", "$set": {"plan": "it's \\pro", "n": {"x": [1]}}, "$unset": ["a", "b"]}
    assert requests.post(f"{proxy.url}/engage", data={"data": json.dumps([engage])}, timeout=30).text == "1"
    group = {"$token": "tok", "$group_key": "company", "$group_id": "acme 🎉", "$set_once": {"since": 2020}}
    assert requests.post(f"{proxy.url}/groups", data={"data": json.dumps([group])}, timeout=30).text == "1"

    stored = {r["insert_id"]: r for r in select(redshift_standin, f'SELECT * FROM "{schema}"."events"')}
    assert len(stored) == 5
    for i, sent in enumerate(events):
        row = stored[f"{schema}-{i}"]
        assert row["event"] == sent["event"] and row["distinct_id"] == f"user\\{i}'"
        assert row["event_time"].isoformat() == f"2026-01-01T00:00:0{i}"
        for key, value in sent["properties"].items():
            assert row["properties"][key] == value and type(row["properties"][key]) is type(value), key
        assert (row["utm_source"], row["cart"], row["qty"], row["vip"]) == ("news'letter", 12.5, 3, True)
        assert row["seen"].isoformat() == "2026-01-02T03:04:05.123456" and row["meta"] == {"k": [i]}
    users = select(redshift_standin, f'SELECT operation, distinct_id, properties FROM "{schema}"."users" ORDER BY operation')
    assert [(u["operation"], u["distinct_id"], u["properties"]) for u in users] == [
        ("$set", "u1", {"plan": "it's \\pro", "n": {"x": [1]}}),
        ("$unset", "u1", ["a", "b"]),
    ]
    groups = select(redshift_standin, f'SELECT group_key, group_id, operation, properties FROM "{schema}"."groups"')
    assert groups == [{"group_key": "company", "group_id": "acme 🎉", "operation": "$set_once", "properties": {"since": 2020}}]
    assert "error" not in proxy.log().lower()


# --- the 100 KB limit ------------------------------------------------------------------------


def test_the_test_server_enforces_the_100kb_limit(redshift_standin) -> None:
    client = redshift_standin.client()
    big = "SELECT '" + "x" * 100_000 + "'"
    with pytest.raises(client.exceptions.ValidationException, match="larger than 100kB"):
        client.execute_statement(Sql=big, WorkgroupName=WORKGROUP, Database=DATABASE)


def test_a_write_over_100kb_is_split_and_every_row_lands(redshift_standin, schema, cleanup) -> None:
    sink = sink_for(redshift_standin, "data_api", schema)
    sink.setup()
    rows = event_rows(settings_for({}), 400, blob=1000)  # about 480 KB of parameters
    builder = sql.InsertBuilder(schema, sink.tables["events"], sql.data_api_placeholder, STATEMENT_BYTES)
    statements, refused = builder.statements(sql.encode_rows(sink.tables["events"], rows)[0])
    assert not refused and len(statements) >= 5
    assert all(s.nbytes <= STATEMENT_BYTES < 100_000 for s in statements)
    assert sorted(i for s in statements for i in s.rows) == list(range(400))
    result = sink.write("events", rows)
    assert (result.written, result.rejected) == (400, ())
    stored = select(redshift_standin, f'SELECT insert_id, properties FROM "{schema}"."events"')
    assert sorted(r["insert_id"] for r in stored) == sorted(f"id-{i}" for i in range(400))
    assert all(r["properties"]["blob"] == "x" * 1000 for r in stored)


def test_a_request_over_100kb_through_the_proxy_lands_whole(redshift_standin, schema, cleanup, run_proxy) -> None:  # noqa: F811
    proxy = run_proxy(destinations="redshift", **redshift_standin.data_api_env(schema))
    events = [
        {"event": "big", "properties": {"distinct_id": f"u{i}", "$insert_id": f"big-{i}", "time": 1767225600, "pad": "é" * 700}}
        for i in range(300)
    ]
    body = json.dumps(events)
    assert len(body.encode()) > 3 * 100_000
    assert requests.post(f"{proxy.url}/track", data={"data": body}, timeout=60).text == "1"
    stored = select(redshift_standin, f'SELECT insert_id FROM "{schema}"."events"')
    assert sorted(r["insert_id"] for r in stored) == sorted(f"big-{i}" for i in range(300))


def test_a_row_too_large_for_any_statement_is_rejected_alone(redshift_standin, schema, cleanup) -> None:
    sink = sink_for(redshift_standin, "data_api", schema)
    rows = event_rows(settings_for({}), 3)
    rows[1]["properties"]["blob"] = "y" * 120_000
    result = sink.write("events", rows)
    assert result.written == 2 and [r.index for r in result.rejected] == [1]
    assert "too large for one statement" in result.rejected[0].reason


# --- refused values, missing tables, retries ---------------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "data_api"])
def test_a_refused_value_rejects_only_its_row(redshift_standin, schema, cleanup, mode) -> None:
    sink = sink_for(redshift_standin, mode, schema)
    sink.setup()
    rows = event_rows(settings_for({}), 40)
    rows[3]["distinct_id"] = "nul\x00inside"
    rows[17]["event_time"] = "not a time"
    rows[29]["properties"] = {"zero": "\u0000"}  # jsonb refuses \u0000; the server decides
    rows[33]["distinct_id"] = "z" * 70_000  # over Redshift's VARCHAR(65535)
    result = sink.write("events", rows)
    assert [r.index for r in result.rejected] == [3, 17, 29, 33] and result.written == 36
    reasons = [r.reason for r in result.rejected]
    assert "NUL" in reasons[0] and "timestamp" in reasons[1] and "VARCHAR" in reasons[3]
    assert "not a time" not in " ".join(reasons)  # reasons never carry the values
    stored = sorted(r["insert_id"] for r in select(redshift_standin, f'SELECT insert_id FROM "{schema}"."events"'))
    assert stored == sorted(f"id-{i}" for i in range(40) if i not in (3, 17, 29, 33))


@pytest.mark.parametrize("mode", ["direct", "data_api"])
def test_a_table_dropped_behind_the_sinks_back_is_created_again(redshift_standin, schema, cleanup, mode) -> None:
    sink = sink_for(redshift_standin, mode, schema)
    sink.setup()
    assert sink.drop(["events", "users", "groups"]) == [f"{schema}.events", f"{schema}.groups", f"{schema}.users"]
    assert sink.write("events", event_rows(settings_for({}), 2)).written == 2
    assert len(select(redshift_standin, f'SELECT * FROM "{schema}"."events"')) == 2


def test_a_data_api_write_retried_after_a_poll_timeout_inserts_once(redshift_standin, schema, cleanup) -> None:
    """The statement outlives the poll timeout (a lock holds it); the retry polls the same
    statement instead of submitting the rows again."""
    sink = sink_for(redshift_standin, "data_api", schema, redshift_poll_timeout_seconds="1")
    sink.setup()
    rows = event_rows(settings_for({}), 10)
    with redshift_standin.connect() as locker:
        with locker.transaction():
            locker.execute(f'LOCK TABLE "{schema}"."events" IN ACCESS EXCLUSIVE MODE')
            with pytest.raises(TransientError, match="still running"):
                sink.write("events", rows)
        result = sink.write("events", rows)  # the lock is gone: the same statement finishes
    assert result.written == 10
    stored = [r["insert_id"] for r in select(redshift_standin, f'SELECT insert_id FROM "{schema}"."events"')]
    assert sorted(stored) == sorted(f"id-{i}" for i in range(10))


# --- error classification ------------------------------------------------------------------------


def test_failures_are_classified_against_real_servers(redshift_standin, schema, cleanup) -> None:
    rows = event_rows(settings_for({}), 1)
    closed = free_port()
    direct = redshift_standin.direct_env(schema)
    with pytest.raises(PermanentError, match="login refused"):
        RedshiftSink(settings_for(direct, redshift_password="wrong")).setup()
    with pytest.raises(TransientError, match="connection failed"):
        RedshiftSink(settings_for(direct, redshift_port=str(closed))).setup()
    api = redshift_standin.data_api_env(schema)
    with pytest.raises(PermanentError, match="InvalidSignatureException"):
        RedshiftSink(settings_for(api, redshift_secret_access_key="wrong")).setup()
    with pytest.raises(PermanentError, match="endpoint doesn't exist"):
        RedshiftSink(settings_for(api, redshift_workgroup="no-such-workgroup")).setup()
    with pytest.raises(TransientError):
        RedshiftSink(settings_for(api, redshift_endpoint_url=f"http://127.0.0.1:{closed}")).write("events", rows)
    # A schema the proxy's user may not write to: permission denied (42501) is permanent.
    with redshift_standin.connect() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}"."events" (event varchar(10))')
    with pytest.raises(PermanentError, match="42501|permission denied"):
        RedshiftSink(settings_for(direct)).write("events", rows)
    # A statement that waits too long on a lock is cancelled by statement_timeout: transient.
    with redshift_standin.connect() as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    sink = RedshiftSink(settings_for(direct, redshift_statement_timeout_seconds="1"))
    sink.setup()
    with redshift_standin.connect() as locker, locker.transaction():
        locker.execute(f'LOCK TABLE "{schema}"."events" IN ACCESS EXCLUSIVE MODE')
        with pytest.raises(TransientError, match="57014"):
            sink.write("events", rows)


@pytest.mark.parametrize(
    ("sqlstate", "message", "kind"),
    [
        # Redshift reports its serialisation conflicts as XX000 with this text (error 1023).
        (
            None,
            "ERROR: 1023 DETAIL: Serializable isolation violation on table - 100, transactions forming the cycle are: 1, 2",
            "transient",
        ),
        ("XX000", "1023 Serializable isolation violation on table - 100", "transient"),
        ("40001", "could not serialize access due to concurrent update", "transient"),
        ("40P01", "deadlock detected", "transient"),
        ("08006", "server closed the connection unexpectedly", "transient"),
        ("57014", "canceling statement due to statement timeout", "transient"),
        ("55P03", "could not obtain lock on relation", "transient"),
        ("22P02", 'invalid input syntax for type bigint: "x"', "data"),
        (None, 'ERROR: invalid input syntax for type timestamp: "x"', "data"),
        (None, "ERROR: value too long for type character varying(10)", "data"),
        ("42P01", 'relation "public.events" does not exist', "missing"),
        (None, 'ERROR: relation "public.events" does not exist', "missing"),
        ("42501", "permission denied for schema public", "permanent"),
        (None, "ERROR: permission denied for relation events", "permanent"),
        ("28P01", "password authentication failed", "permanent"),
    ],
)
def test_the_classifier_reads_sqlstates_and_redshift_error_text(sqlstate, message, kind) -> None:
    assert classify(sqlstate, message) == kind


def test_error_messages_lose_values_and_detail() -> None:
    message = 'ERROR: invalid input syntax for type timestamp: "secret value"\nDETAIL: more "secret"'
    assert safe_message(message) == 'invalid input syntax for type timestamp: "…"'


# --- the Data API test server's shapes --------------------------------------------------------------


def wait_done(client: Any, statement_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        described = client.describe_statement(Id=statement_id)
        if described["Status"] in ("FINISHED", "FAILED", "ABORTED"):
            return described
        time.sleep(0.05)
    raise AssertionError("statement did not finish")


def test_data_api_server_shapes(redshift_standin, schema, cleanup) -> None:
    client = redshift_standin.client()
    target = {"WorkgroupName": WORKGROUP, "Database": DATABASE}
    failed = client.execute_statement(Sql="SELECT * FROM no_such_table", **target)
    described = wait_done(client, failed["Id"])
    assert described["Status"] == "FAILED" and described["Error"] == 'ERROR: relation "no_such_table" does not exist'
    assert described["ResultRows"] == -1 and described["QueryString"] == "SELECT * FROM no_such_table"
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_statement_result(Id=failed["Id"])
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_statement(Id=str(uuid.uuid4()))

    # A batch is one transaction: the failing third statement rolls back the first two.
    batch = client.batch_execute_statement(
        Sqls=[f'CREATE SCHEMA "{schema}"', f'CREATE TABLE "{schema}".t (a int)', f"INSERT INTO \"{schema}\".t VALUES ('x')"],
        **target,
    )
    described = wait_done(client, batch["Id"])
    assert described["Status"] == "FAILED" and [s["Status"] for s in described["SubStatements"]] == [
        "FINISHED",
        "FINISHED",
        "FAILED",
    ]
    assert described["SubStatements"][2]["Id"] == f"{batch['Id']}:3" and "invalid input syntax" in described["Error"]
    assert select(redshift_standin, f"SELECT 1 FROM information_schema.schemata WHERE schema_name = '{schema}'") == []

    # Shared named parameters; results per sub-statement, paged with NextToken.
    batch = client.batch_execute_statement(
        Sqls=[f'CREATE SCHEMA "{schema}"', "SELECT generate_series(1, :n::int) AS i, :s AS s, JSON_PARSE(:j) AS j"],
        Parameters=[{"name": "n", "value": "1200"}, {"name": "s", "value": "it's :s"}, {"name": "j", "value": '{"a": [1, "ü"]}'}],
        **target,
    )
    assert wait_done(client, batch["Id"])["Status"] == "FINISHED"
    with pytest.raises(client.exceptions.ValidationException, match="sub-statement id"):
        client.get_statement_result(Id=batch["Id"])
    records, token, pages = [], None, 0
    while True:
        page = client.get_statement_result(Id=f"{batch['Id']}:2", **({"NextToken": token} if token else {}))
        records += page["Records"]
        pages += 1
        token = page.get("NextToken")
        if not token:
            break
    assert (
        pages == 3
        and page["TotalNumRows"] == 1200
        and [c["typeName"] for c in page["ColumnMetadata"]] == ["int4", "varchar", "super"]
    )
    assert records[0] == [{"longValue": 1}, {"stringValue": "it's :s"}, {"stringValue": '{"a":[1,"ü"]}'}]

    # ClientToken: the same request twice runs once.
    insert = {"Sql": f'CREATE TABLE "{schema}".once (a int)', "ClientToken": "token-" + schema, **target}
    first, second = client.execute_statement(**insert), client.execute_statement(**insert)
    assert first["Id"] == second["Id"] and wait_done(client, first["Id"])["Status"] == "FINISHED"

    with pytest.raises(client.exceptions.ValidationException, match="not provided"):
        client.execute_statement(Sql="SELECT :missing", **target)
    with pytest.raises(client.exceptions.ValidationException, match="endpoint"):
        client.execute_statement(Sql="SELECT 1", WorkgroupName="other", Database=DATABASE)
    with pytest.raises(client.exceptions.ValidationException, match="DbUser or SecretArn"):
        client.execute_statement(Sql="SELECT 1", ClusterIdentifier=CLUSTER, Database=DATABASE)
    cluster = client.execute_statement(Sql="SELECT 1", ClusterIdentifier=CLUSTER, DbUser="awsuser", Database=DATABASE)
    assert wait_done(client, cluster["Id"])["ClusterIdentifier"] == CLUSTER


def test_a_provisioned_cluster_through_the_data_api(redshift_standin, schema, cleanup) -> None:
    env = {k: v for k, v in redshift_standin.data_api_env(schema).items() if k != "redshift_workgroup"}
    sink = RedshiftSink(settings_for(env, redshift_cluster_identifier=CLUSTER, redshift_db_user="awsuser"))
    assert sink.health() == {"mode": "data_api", "target": f"cluster {CLUSTER}/{DATABASE}", "schema": schema}
    assert sink.write("events", event_rows(settings_for({}), 4)).written == 4
    assert len(select(redshift_standin, f'SELECT * FROM "{schema}"."events"')) == 4


# --- gevent ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "data_api"])
def test_a_query_waiting_on_redshift_does_not_block_the_gevent_worker(redshift_standin, schema, cleanup, run_proxy, mode) -> None:  # noqa: F811
    """One gevent worker; its insert waits on a lock the test holds. /ping must still be
    answered meanwhile: a blocking libpq wait (or poll loop) would freeze the whole worker."""
    sink = sink_for(redshift_standin, mode, schema)
    sink.setup()
    env = redshift_standin.direct_env(schema) if mode == "direct" else redshift_standin.data_api_env(schema)
    proxy = run_proxy(destinations="redshift", workers=1, destination_timeout_seconds="60", **env)
    event = {"event": "waits", "properties": {"distinct_id": "u", "$insert_id": "waits-1", "time": 1767225600}}
    answers: list[str] = []
    with redshift_standin.connect() as locker:
        with locker.transaction():
            locker.execute(f'LOCK TABLE "{schema}"."events" IN ACCESS EXCLUSIVE MODE')
            poster = threading.Thread(
                target=lambda: answers.append(
                    requests.post(f"{proxy.url}/track", data={"data": json.dumps([event])}, timeout=60).text
                )
            )
            poster.start()

            def insert_waits() -> bool:
                waiting = select(
                    redshift_standin,
                    f"SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO \"{schema}\"%'",
                )
                return bool(waiting)

            wait_until(insert_waits, 30, 0.1, what="the proxy's INSERT waiting on the lock")
            assert requests.get(f"{proxy.url}/ping", timeout=10).status_code == 200
            assert insert_waits() and not answers  # the insert was still parked while /ping was served
        poster.join(60)
    assert answers == ["1"]
    assert [r["insert_id"] for r in select(redshift_standin, f'SELECT insert_id FROM "{schema}"."events"')] == ["waits-1"]
