"""`bigquery` against bqemulator, through the running proxy under gunicorn.

What goes over the wire is recorded by a small HTTP proxy in front of the emulator
(tests/support/recorder.py): the emulator does not de-duplicate insertIds, so the
retry checks assert on what was sent; it also lets a test lose a reply or report a
finished load job as still running.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from core.settings import ConfigError, Settings
from destinations.base import PermanentError, TransientError
from destinations.bigquery import BigQueryConfig, BigQuerySink, bad_rows, classify, row_ids
from tests.fixtures_core import RunningProxy
from tests.fixtures_core import run_proxy as run_proxy  # noqa: F401 - the fixture
from tests.support.processes import wait_until
from tests.support.recorder import Exchange, Recorder, lose_reply, still_running
from tests.support.standins.bigquery import BigQueryStandin

pytestmark = pytest.mark.emulator
DAY = 1767225600  # 2026-01-01T00:00:00Z
BROWSERS = ("Chrome", "Firefox", "Safari")


@pytest.fixture
def dataset() -> str:
    return f"bq_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def recorder(bigquery_standin: BigQueryStandin) -> Iterator[Recorder]:
    started = Recorder(bigquery_standin.url).start()
    yield started
    started.stop()


def events(tag: str, n: int, **extra: Any) -> list[dict[str, Any]]:
    """n events over three days, three browsers."""
    return [
        {
            "event": "page view" if i % 2 else "signup",
            "properties": {
                "distinct_id": f"u{i % 4}",
                "$insert_id": f"{tag}-{i}",
                "time": DAY + (i % 3) * 86400 + i,
                "$browser": BROWSERS[i % 3],
                "n": i,
                **extra,
            },
        }
        for i in range(n)
    ]


def profiles(n: int) -> list[dict[str, Any]]:
    return [{"$token": "t", "$distinct_id": f"u{i}", "$set": {"plan": "pro", "n": i}} for i in range(n)]


def groups(n: int) -> list[dict[str, Any]]:
    return [{"$token": "t", "$group_key": "company", "$group_id": f"g{i}", "$set": {"n": i}} for i in range(n)]


def post(proxy: RunningProxy, path: str, items: list[dict[str, Any]]) -> None:
    reply = requests.post(f"{proxy.url}{path}", data={"data": json.dumps(items)}, timeout=60)
    assert reply.status_code == 200 and reply.text == "1", (reply.status_code, reply.text[:300], proxy.log()[-2000:])


def proxy_env(standin: BigQueryStandin, dataset: str, write: str = "stream", endpoint: str | None = None, **extra: str) -> dict:
    env = {k.upper(): v for k, v in standin.env(dataset, endpoint).items()}
    env.update(DESTINATIONS="bigquery", BIGQUERY_WRITE=write, RETRY_BASE_SECONDS="0.05", LOG_LEVEL="INFO")
    if write == "load":
        env.update(DELIVERY="batch", BATCH_MAX_SECONDS="0.2", BIGQUERY_LOAD_INTERVAL_SECONDS="0.5")
    env.update(extra)
    return env


def count(standin: BigQueryStandin, dataset: str, table: str, where: str = "TRUE") -> int:
    [row] = standin.query(f"SELECT COUNT(*) AS n FROM `{standin.project}.{dataset}.{table}` WHERE {where}")
    return row["n"]


def spooled(proxy: RunningProxy) -> list[dict[str, Any]]:
    spool = proxy.data_dir.parent / proxy.data_dir.name.replace("data", "spool")
    return [json.loads(path.read_text()) for path in sorted(spool.rglob("*.ndjson"))]


def uploads(recorder: Recorder, table: str | None = None) -> list[Exchange]:
    """Load jobs started: the resumable upload's first request carries the job's configuration."""

    def started(ex: Exchange) -> bool:
        if not (ex.method == "POST" and "/upload/" in ex.path and "uploadType=resumable" in ex.path):
            return False
        return table is None or ex.json()["configuration"]["load"]["destinationTable"]["tableId"] == table

    return recorder.matching(started)


# -- SQL over what the proxy wrote ---------------------------------------------------------------


def test_records_sent_through_the_proxy_are_queryable_with_sql(run_proxy, bigquery_standin, dataset):
    proxy = run_proxy(**proxy_env(bigquery_standin, dataset))
    post(proxy, "/track", events("sql", 30))
    post(proxy, "/engage", profiles(4))
    post(proxy, "/groups", groups(3))
    project = bigquery_standin.project

    assert [count(bigquery_standin, dataset, t) for t in ("events", "users", "groups")] == [30, 4, 3]
    browsers = bigquery_standin.query(
        f"SELECT JSON_VALUE(properties, '$.\"$browser\"') AS browser, COUNT(*) AS n "
        f"FROM `{project}.{dataset}.events` GROUP BY browser ORDER BY browser"
    )
    assert browsers == [{"browser": b, "n": 10} for b in sorted(BROWSERS)]
    # A partition filter: the second day only.
    assert count(bigquery_standin, dataset, "events", "DATE(event_time) = '2026-01-02'") == 10
    [plan] = bigquery_standin.query(f"SELECT JSON_VALUE(properties, '$.plan') AS plan FROM `{project}.{dataset}.users` LIMIT 1")
    assert plan == {"plan": "pro"}

    client = bigquery_standin.client()
    layout = {}
    for name in ("events", "users", "groups"):
        table = client.get_table(f"{project}.{dataset}.{name}")
        types = {f.name: f.field_type for f in table.schema}
        partitioning = table.time_partitioning
        layout[name] = (partitioning.type_, partitioning.field, table.clustering_fields, types["properties"])
    assert layout == {
        "events": ("DAY", "event_time", ["event"], "JSON"),
        "users": ("DAY", "insert_time", ["distinct_id"], "JSON"),
        "groups": ("DAY", "insert_time", ["group_id"], "JSON"),
    }


def test_each_write_mode_lands_the_same_rows(run_proxy, bigquery_standin):
    landed = {}
    for write in ("stream", "load"):
        dataset = f"bq_same_{write}_{uuid.uuid4().hex[:6]}"
        proxy = run_proxy(**proxy_env(bigquery_standin, dataset, write))
        post(proxy, "/track", events("same", 12, nested={"a": [1, {"b": None}], "q": 'say "hi"\n'}, big=9007199254740993))
        post(proxy, "/engage", profiles(3))
        post(proxy, "/groups", groups(2))
        assert proxy.stop() == 0
        landed[write] = {}
        for table in ("events", "users", "groups"):
            rows = bigquery_standin.query(f"SELECT * FROM `{bigquery_standin.project}.{dataset}.{table}`")
            # insert_time is when the proxy received the rows: the two runs differ there only.
            landed[write][table] = sorted(json.dumps({**r, "insert_time": None}, default=str, sort_keys=True) for r in rows)
    assert [len(landed["stream"][t]) for t in ("events", "users", "groups")] == [12, 3, 2]
    assert landed["stream"] == landed["load"]
    sample = json.loads(landed["load"]["events"][0])["properties"]
    assert sample["big"] == 9007199254740993 and sample["nested"] == {"a": [1, {"b": None}], "q": 'say "hi"\n'}


@pytest.mark.parametrize("write", ["stream", "load"])
def test_a_row_with_a_bad_value_is_dead_lettered_and_the_others_land(run_proxy, bigquery_standin, dataset, write):
    """`plan` is INT64 in the user's table but a STRING extra column here: BigQuery refuses
    the one row whose plan is not a number, with its own message, and stores the rest."""
    settings = Settings.from_mapping({k.lower(): v for k, v in proxy_env(bigquery_standin, dataset).items()})
    BigQuerySink(settings).setup()
    client = bigquery_standin.client()
    from google.cloud import bigquery

    table = client.get_table(f"{bigquery_standin.project}.{dataset}.events")
    table.schema = [*table.schema, bigquery.SchemaField("plan", "INTEGER")]
    client.update_table(table, ["schema"])
    bigquery_standin.align_storage(dataset, "events")

    proxy = run_proxy(**proxy_env(bigquery_standin, dataset, write, EVENTS_EXTRA_COLUMNS="plan:STRING"))
    sent = events(f"bad-{write}", 6)
    for i, event in enumerate(sent):
        event["properties"]["plan"] = "gold" if i == 4 else str(i)
    post(proxy, "/track", sent)
    assert proxy.stop() == 0

    landed = bigquery_standin.query(f"SELECT plan, insert_id FROM `{bigquery_standin.project}.{dataset}.events` ORDER BY plan")
    assert landed == [{"plan": i, "insert_id": f"bad-{write}-{i}"} for i in (0, 1, 2, 3, 5)]
    [batch] = spooled(proxy)
    assert batch["reason"].startswith("rejected: ")
    # BigQuery's own words (the emulator's, here): insertAll's, the load job's, AppendRows'.
    assert any(w in batch["reason"] for w in ("Cannot convert value", "cast value", "invalid literal")), batch["reason"]
    assert [r["insert_id"] for r in batch["rows"]] == [f"bad-{write}-4"]
    assert batch["rows"][0]["plan"] == "gold"


# -- retries ------------------------------------------------------------------------------------------


def test_retries_reuse_insert_id_as_insert_id(run_proxy, bigquery_standin, dataset, recorder):
    """The first insertAll into each table is stored but its reply is lost: the delivery layer
    sends the same rows again with the same insertIds (BigQuery would drop the repeats)."""
    for table in ("events", "users"):
        recorder.tamper(lambda ex, t=table: f"/tables/{t}/insertAll" in ex.path, lose_reply)
    proxy = run_proxy(**proxy_env(bigquery_standin, dataset, endpoint=recorder.url))
    sent = events("retry", 8)
    post(proxy, "/track", sent)
    post(proxy, "/engage", profiles(3) + profiles(1))  # the last one repeats the first: a second, separate update

    for table in ("events", "users"):
        attempts = recorder.matching(lambda ex, t=table: f"/tables/{t}/insertAll" in ex.path)
        assert len(attempts) == 2 and attempts[0].tampered and not attempts[1].tampered
        first, second = ([row["insertId"] for row in ex.json()["rows"]] for ex in attempts)
        assert first == second
        assert attempts[0].json()["rows"] == attempts[1].json()["rows"]
        if table == "events":
            assert first == [e["properties"]["$insert_id"] for e in sent]
        else:
            assert len(set(first)) == 4  # identical updates in one write still get ids of their own
    # The emulator does not de-duplicate: both copies are there (BigQuery keeps one, best effort).
    assert count(bigquery_standin, dataset, "events") == 16


def test_a_running_load_job_is_polled_and_never_submitted_again(run_proxy, bigquery_standin, dataset, recorder):
    """The load job is reported as running for longer than one attempt may take: the attempt is
    cut off, and the retry polls the same job instead of loading the rows a second time."""
    recorder.tamper(lambda ex: ex.method == "PUT" and "/upload/" in ex.path, still_running)
    recorder.tamper(lambda ex: ex.method == "GET" and "/jobs/" in ex.path, still_running, times=6)
    env = proxy_env(bigquery_standin, dataset, "load", endpoint=recorder.url, BIGQUERY_ATTEMPT_TIMEOUT_SECONDS="2")
    proxy = run_proxy(**env)
    post(proxy, "/track", events("poll", 5))
    # The emulator has stored the rows at once; the proxy counts them written only when its poll says DONE.
    wait_until(lambda: sink_health(proxy).get("written_rows") == 5, 60, 0.5, what="the polled load job to finish")
    health = sink_health(proxy)
    assert proxy.stop() == 0

    [upload] = uploads(recorder, "events")
    polls = recorder.matching(lambda ex: ex.method == "GET" and "/jobs/" in ex.path)
    assert len(polls) > 6 and len({p.path.split("?")[0] for p in polls}) == 1
    assert health["retries"] >= 1 and "no answer within" in health.get("last_error", "")
    assert count(bigquery_standin, dataset, "events") == 5


def sink_health(proxy: RunningProxy) -> dict[str, Any]:
    """The bigquery destination's part of /health (one worker)."""
    found: list[dict[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("write") in ("stream", "load") and "written_rows" in value:
                found.append(value)
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(requests.get(f"{proxy.url}/health", timeout=5).json())
    assert len(found) == 1, found
    return found[0]


def test_load_jobs_are_spaced_by_the_daily_budget(run_proxy, bigquery_standin, dataset, recorder):
    """With a budget interval longer than the test, rows wait in the buffer however many
    flush ticks pass; the drain at shutdown then loads each table once."""
    env = proxy_env(bigquery_standin, dataset, "load", endpoint=recorder.url, BIGQUERY_LOAD_INTERVAL_SECONDS="3600")
    proxy = run_proxy(**env)
    for start in range(0, 40, 10):
        post(proxy, "/track", events("budget", 40)[start : start + 10])
        post(proxy, "/engage", profiles(2))
        time.sleep(0.3)  # several 0.2 s flush ticks pass between requests
    assert uploads(recorder) == []
    assert sink_health(proxy)["buffered_rows"] == 48
    assert proxy.stop() == 0
    assert sorted(ex.json()["configuration"]["load"]["destinationTable"]["tableId"] for ex in uploads(recorder)) == [
        "events",
        "users",
    ]
    assert count(bigquery_standin, dataset, "events") == 40 and count(bigquery_standin, dataset, "users") == 8


# -- set-up ---------------------------------------------------------------------------------------------


def test_setup_on_an_existing_dataset_keeps_data_and_adds_new_extra_columns(run_proxy, bigquery_standin, dataset):
    proxy = run_proxy(**proxy_env(bigquery_standin, dataset))
    post(proxy, "/track", events("keep", 10))
    post(proxy, "/engage", profiles(2))
    assert proxy.stop() == 0
    client = bigquery_standin.client()
    before = {t: client.get_table(f"{bigquery_standin.project}.{dataset}.{t}") for t in ("events", "users")}

    extra = {"EVENTS_EXTRA_COLUMNS": "$browser:browser:STRING,n:INT64", "USERS_EXTRA_COLUMNS": "plan:STRING"}
    settings = Settings.from_mapping({k.lower(): v for k, v in proxy_env(bigquery_standin, dataset, **extra).items()})
    for _ in range(2):
        BigQuerySink(settings).setup()
    for table in ("events", "users"):
        bigquery_standin.align_storage(dataset, table)

    after = {t: client.get_table(f"{bigquery_standin.project}.{dataset}.{t}") for t in ("events", "users")}
    assert [f.name for f in after["events"].schema] == [f.name for f in before["events"].schema] + ["browser", "n"]
    assert [f.name for f in after["users"].schema] == [f.name for f in before["users"].schema] + ["plan"]
    assert after["events"].time_partitioning.field == "event_time" and after["events"].clustering_fields == ["event"]
    assert count(bigquery_standin, dataset, "events") == 10 and count(bigquery_standin, dataset, "users") == 2

    proxy = run_proxy(**proxy_env(bigquery_standin, dataset, **extra))
    post(proxy, "/track", events("added", 3))
    rows = bigquery_standin.query(
        f"SELECT browser, n FROM `{bigquery_standin.project}.{dataset}.events` WHERE insert_id LIKE 'added-%' ORDER BY n"
    )
    assert rows == [{"browser": "Chrome", "n": 0}, {"browser": "Firefox", "n": 1}, {"browser": "Safari", "n": 2}]
    assert count(bigquery_standin, dataset, "events", "browser IS NULL") == 10


@pytest.mark.parametrize("write", ["stream", "load"])
def test_a_table_dropped_by_hand_is_created_again_and_the_write_retried(bigquery_standin, dataset, write):
    from core.records import Record
    from destinations.rows import to_rows
    from destinations.schema import build_schemas

    settings = Settings.from_mapping(
        {**bigquery_standin.env(dataset), "bigquery_write": write, "delivery": "batch", "bigquery_load_interval_seconds": "0"}
    )
    sink = BigQuerySink(settings)
    sink.setup()
    bigquery_standin.client().delete_table(f"{bigquery_standin.project}.{dataset}.events")
    records = [Record("event", e, time.time()) for e in events("again", 3)]
    rows = to_rows(records, build_schemas(settings)).tables["events"]
    with pytest.raises(TransientError, match="created again"):
        sink.write("events", rows)
    assert sink.write("events", rows).written == 3
    assert count(bigquery_standin, dataset, "events") == 3
    sink.close()


# -- configuration and classification (no service needed) ----------------------------------------------


def make(**values: str) -> Settings:
    return Settings.from_mapping({"bigquery_project": "p", "bigquery_dataset": "d", **values})


def test_load_interval_follows_the_daily_budget_and_refuses_per_request_loads():
    assert BigQueryConfig.from_settings(make(bigquery_write="load", web_concurrency="2")).load_interval == 172.8
    config = BigQueryConfig.from_settings(make(bigquery_write="load", bigquery_load_jobs_per_day="1440", web_concurrency="1"))
    assert (config.load_interval, config.load_jobs_per_process) == (60.0, 1440)
    with pytest.raises(ConfigError, match="1500"):
        BigQueryConfig.from_settings(make(bigquery_write="load", bigquery_load_jobs_per_day="2000"))
    with pytest.raises(ConfigError, match="batched delivery"):
        BigQueryConfig.from_settings(make(bigquery_write="load", delivery="sync"))
    with pytest.raises(ConfigError, match="BIGQUERY_WRITE"):
        BigQueryConfig.from_settings(make(bigquery_write="storage"))
    with pytest.raises(ConfigError, match="(?i)bigquery_dataset"):
        BigQueryConfig.from_settings(Settings.from_mapping({"bigquery_project": "p"}))


def test_credentials_keyfile_or_key_pair_else_anonymous_only_with_an_endpoint(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.auth.credentials import AnonymousCredentials
    from google.oauth2 import service_account

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    email = "proxy@p.iam.gserviceaccount.com"
    keyfile = tmp_path / "key.json"
    info = {
        "type": "service_account",
        "client_email": email,
        "private_key": pem,
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    keyfile.write_text(json.dumps({**info, "project_id": "from-keyfile"}))
    endpoint = "http://127.0.0.1:9"

    by_file = BigQuerySink(Settings.from_mapping({"bigquery_dataset": "d", "bigquery_keyfile": str(keyfile)})).client()
    assert isinstance(by_file._credentials, service_account.Credentials) and by_file.project == "from-keyfile"
    pair = {"bigquery_service_account_email": email, "bigquery_service_account_private_key": pem.replace("\n", "\\n")}
    by_pair = BigQuerySink(make(bigquery_api_endpoint=endpoint, **pair)).client()
    assert isinstance(by_pair._credentials, service_account.Credentials)  # an endpoint never drops configured credentials
    assert by_pair._connection.API_BASE_URL == endpoint
    anonymous = BigQuerySink(make(bigquery_api_endpoint=endpoint)).client()
    assert isinstance(anonymous._credentials, AnonymousCredentials)
    with pytest.raises(ConfigError, match="SERVICE_ACCOUNT_PRIVATE_KEY"):
        BigQueryConfig.from_settings(make(bigquery_service_account_email=email))


def test_quota_and_rate_errors_are_transient_others_permanent():
    from google.api_core import exceptions as gx

    def error(cls: Callable, reason: str) -> Exception:
        return classify(cls("x", errors=[{"reason": reason, "message": "m"}]), "where")

    assert isinstance(error(gx.Forbidden, "rateLimitExceeded"), TransientError)
    assert isinstance(error(gx.Forbidden, "quotaExceeded"), TransientError)
    assert isinstance(error(gx.TooManyRequests, "x"), TransientError)
    assert isinstance(error(gx.ServiceUnavailable, "backendError"), TransientError)
    assert isinstance(classify(requests.ConnectionError("refused"), "where"), TransientError)
    assert isinstance(error(gx.Forbidden, "accessDenied"), PermanentError)
    assert isinstance(error(gx.BadRequest, "invalid"), PermanentError)
    assert isinstance(error(gx.Unauthorized, "authError"), PermanentError)


def test_load_errors_are_mapped_to_rows_by_offset_or_line():
    offsets = [0, 120, 260, 300]
    errors = [
        {"reason": "invalid", "message": "JSON parsing error in row starting at position 260: Could not convert value."},
        {"reason": "invalid", "message": "JSON table encountered too many errors, giving up. Rows: 3; errors: 1."},
        {"reason": "invalid", "message": 'JSON transform error in file "/tmp/x.bin", in line 2: Failed to cast value'},
    ]
    assert sorted(bad_rows(errors, offsets)) == [1, 2]


def test_profile_rows_get_stable_ids_of_their_own():
    rows = [{"distinct_id": "a", "operation": "$add", "properties": {"n": 1}}] * 2 + [{"distinct_id": "b", "properties": {}}]
    ids = row_ids(rows, "user")
    assert ids == row_ids([dict(r) for r in rows], "user") and len(set(ids)) == 3
    assert row_ids([{"insert_id": "abc"}], "event") == ["abc"]


# -- the Storage Write API inside gunicorn's gevent workers -------------------------------------------
