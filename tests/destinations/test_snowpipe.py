"""The snowflake destination's Snowpipe path: PUT to fakesnow's stage (the real connector),
insertFiles and insertReport against the Snowpipe double (tests/support/snowpipe_double.py),
which checks the key-pair JWT. The double plays the pipe's COPY on fakesnow in the two
steps fakesnow supports (COPY into a VARIANT landing table, then INSERT ... SELECT);
fakesnow cannot run CREATE PIPE, so these tests set SNOWFLAKE_PIPE_CREATE=false."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.records import Record
from core.settings import Settings
from destinations.base import PermanentError, TransientError
from destinations.rows import to_rows
from destinations.snowflake import SnowflakeSink, column_list, projection, quote
from destinations.snowpipe import key_fingerprint
from tests.destinations.adapters.snowflake import SCHEMA, read_table
from tests.destinations.test_snowflake import events, lines_for
from tests.support.snowpipe_double import SnowpipeDouble, wait_for
from tests.support.standins.snowflake import ACCOUNT, USER, SnowflakeStandin

pytestmark = pytest.mark.emulator


def pem_key() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return key, pem.decode()


def der(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class Pipeline:
    """A pipe-path sink and the double that plays Snowpipe for it."""

    def __init__(self, standin: SnowflakeStandin, double_key: Any = None) -> None:
        self.standin = standin
        self.database = f"P_{uuid.uuid4().hex[:10].upper()}"
        key, pem = pem_key()
        signer = double_key or key
        self.double = SnowpipeDouble(ACCOUNT, USER, signer.public_key(), key_fingerprint(der(signer)), self.load).start()
        env = standin.env(
            self.database,
            snowflake_private_key=pem,
            snowflake_stage="PIPE_STAGE",
            snowflake_pipe="MP_PIPE",
            snowflake_pipe_url=self.double.url,
            snowflake_pipe_create="false",
            snowflake_pipe_wait_seconds="10",
            events_extra_columns="plan_code:STRING",
        )
        env.pop("snowflake_password")
        self.sink = SnowflakeSink(Settings.from_mapping(env))
        self.double.pipes = {f"{self.database}.{SCHEMA}.MP_PIPE_{t}" for t in ("EVENTS", "USERS", "GROUPS")}

    def load(self, pipe: str, path: str) -> int:
        """The pipe's COPY INTO <table> FROM (SELECT $1:... FROM @stage/<table>/), file by file."""
        table = next(t for t in self.sink.tables.values() if pipe.endswith(f"_{t.name.upper()}"))
        with self.standin.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(f'USE SCHEMA "{self.database}"."{SCHEMA}"')
            cursor.execute('CREATE TEMPORARY TABLE "PIPE_LANDING" ("V" VARIANT)')
            cursor.execute(
                f'COPY INTO "PIPE_LANDING" FROM {self.sink.stage_ref(table.name, path)} '
                "FILE_FORMAT = (TYPE = JSON COMPRESSION = GZIP)"
            )
            cursor.execute(
                f"INSERT INTO {self.sink.target(table)} ({column_list(table)}) "
                f'SELECT {projection(table, quote("V"))} FROM "PIPE_LANDING"'
            )
            return int(cursor.rowcount)

    def inserted_files(self) -> int:
        return sum(1 for endpoint, _ in self.double.calls if endpoint == "insertFiles")

    def close(self) -> None:
        self.sink.close()
        self.double.stop()


@pytest.fixture
def pipeline(snowflake_standin: SnowflakeStandin) -> Iterator[Pipeline]:
    built = Pipeline(snowflake_standin)
    built.sink.setup()
    yield built
    built.close()


def test_rows_count_as_written_only_once_snowflake_reports_them_loaded(pipeline: Pipeline):
    lines = lines_for(pipeline.sink, "pipe", 4)
    pipeline.double.hold.clear()  # Snowpipe has the file but has not loaded it yet
    pipeline.sink.pipe.wait_seconds = 1.0
    with pytest.raises(TransientError, match="not confirmed"):
        pipeline.sink.write("events", lines)
    assert read_table(pipeline.standin, pipeline.database, "events") == []

    pipeline.double.hold.set()
    wait_for(lambda: all(e["complete"] for entries in pipeline.double.history.values() for e in entries))
    # The delivery layer retries the same rows: the load is found in insertReport, not sent again.
    assert pipeline.sink.write("events", lines).written == 4
    assert pipeline.inserted_files() == 1
    landed = read_table(pipeline.standin, pipeline.database, "events")
    assert sorted(r["insert_id"] for r in landed) == [f"pipe-{i}" for i in range(4)]


def test_a_file_snowflake_fails_to_load_goes_the_insert_way_and_rejects_only_the_bad_row(
    pipeline: Pipeline, snowflake_standin: SnowflakeStandin
):
    snowflake_standin.query(f'ALTER TABLE "{pipeline.database}"."{SCHEMA}"."EVENTS" DROP COLUMN "PLAN_CODE"')
    snowflake_standin.query(f'ALTER TABLE "{pipeline.database}"."{SCHEMA}"."EVENTS" ADD COLUMN "PLAN_CODE" NUMBER(38,0)')
    sent = events("bad", 5, plan_code="7")
    sent[2]["properties"]["plan_code"] = "x7"  # the NUMBER column refuses it
    records = [Record("event", e, 1767225600.0, "127.0.0.1") for e in sent]  # type: ignore[arg-type]
    lines = to_rows(records, {t.kind: t for t in pipeline.sink.tables.values()}).lines("events")
    result = pipeline.sink.write("events", lines)
    assert result.written == 4 and [r.index for r in result.rejected] == [2]
    [entry] = [e for entries in pipeline.double.history.values() for e in entries]
    assert entry["status"] == "LOAD_FAILED"
    landed = read_table(pipeline.standin, pipeline.database, "events")
    assert sorted(r["insert_id"] for r in landed) == ["bad-0", "bad-1", "bad-3", "bad-4"]


def test_a_jwt_signed_with_another_key_is_refused_for_good(snowflake_standin: SnowflakeStandin):
    other, _ = pem_key()
    pipeline = Pipeline(snowflake_standin, double_key=other)
    try:
        pipeline.sink.setup()
        with pytest.raises(PermanentError, match="HTTP 401"):
            pipeline.sink.write("events", lines_for(pipeline.sink, "denied", 1))
        assert pipeline.double.calls == []
    finally:
        pipeline.close()
