"""Redshift's stand-ins, started once per test run: a throw-away PostgreSQL 15 cluster
(initdb + postgres, as user `postgres` when we are root, since initdb refuses root) with a
`super` domain over jsonb and a `json_parse(text)` function so Redshift-style SQL runs
unchanged, and the Data API test server (tests/support/redshift_data_api.py) in front of
the same database.

PostgreSQL comes from Debian (scripts/test.d/redshift.sh installs it where missing);
the binaries are found on PATH or under /usr/lib/postgresql/*/bin.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT, Server, free_port, wait_until

DATABASE = "dev"  # Redshift's default database name
ADMIN, ADMIN_PASSWORD = "postgres", "standin-admin-secret"
PROXY_USER, PROXY_PASSWORD = "proxy", "proxy-Secret-1"
WORKGROUP, CLUSTER = "test-workgroup", "test-cluster"
KEY_ID, SECRET = "AKIDREDSHIFTTEST", "redshift-test-secret"
REGION = "us-east-1"
BOOTSTRAP = [
    "CREATE DOMAIN super AS jsonb",
    "CREATE FUNCTION json_parse(text) RETURNS jsonb AS 'SELECT $1::jsonb' LANGUAGE sql IMMUTABLE",
    f"CREATE ROLE {PROXY_USER} LOGIN PASSWORD '{PROXY_PASSWORD}'",
    f"GRANT CREATE ON DATABASE {DATABASE} TO {PROXY_USER}",
]


def pg_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError(f"{name} not found: install PostgreSQL (scripts/test.d/redshift.sh)")
    return candidates[-1]


@dataclass
class RedshiftStandin:
    postgres: Server
    data_api: Server
    port: int
    api_port: int
    root: Path

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def dsn(self, user: str = ADMIN, password: str = ADMIN_PASSWORD) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={DATABASE} user={user} password={password} sslmode=disable"

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn(), autocommit=True)

    def direct_env(self, schema: str) -> dict[str, str]:
        return {
            "redshift_host": "127.0.0.1",
            "redshift_port": str(self.port),
            "redshift_database": DATABASE,
            "redshift_user": PROXY_USER,
            "redshift_password": PROXY_PASSWORD,
            "redshift_sslmode": "disable",
            "redshift_schema_name": schema,
        }

    def data_api_env(self, schema: str) -> dict[str, str]:
        return {
            "redshift_workgroup": WORKGROUP,
            "redshift_database": DATABASE,
            "redshift_region": REGION,
            "redshift_access_key_id": KEY_ID,
            "redshift_secret_access_key": SECRET,
            "redshift_endpoint_url": self.endpoint_url,
            "redshift_schema_name": schema,
        }

    def client(self, key_id: str = KEY_ID, secret: str = SECRET) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "redshift-data",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=Config(retries={"total_max_attempts": 1}),
        )

    def stop(self) -> None:
        self.data_api.stop(timeout=10)
        self.postgres.signal(signal.SIGINT)  # fast shutdown: do not wait for clients to leave
        self.postgres.stop(timeout=20)
        shutil.rmtree(self.root, ignore_errors=True)


def start_redshift_standin() -> RedshiftStandin:
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="redshift-standin-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_postgres = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
    password_file = root / "pw"
    password_file.write_text(ADMIN_PASSWORD + "\n")
    if as_postgres:
        shutil.chown(password_file, "postgres", "postgres")
    data = root / "data"
    initdb = [pg_binary("initdb"), "-D", str(data), "-U", ADMIN, "-E", "UTF8", "--no-locale", "--no-sync"]
    initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}"]
    init = Server([*as_postgres, *initdb], log=None)
    init.start()
    assert init.proc is not None
    if init.proc.wait(120) != 0:
        raise RuntimeError("initdb failed")
    port = free_port()
    args = [pg_binary("postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1"]
    args += ["-c", f"unix_socket_directories={root}", "-c", "fsync=off", "-c", "synchronous_commit=off"]
    args += ["-c", "full_page_writes=off", "-c", "max_connections=300"]
    postgres = Server([*as_postgres, *args], log=Path(tempfile.gettempdir()) / f"redshift-standin-{port}.log").start()
    api_port = free_port()
    standin = RedshiftStandin(postgres, Server([]), port, api_port, root)
    try:
        admin = f"host=127.0.0.1 port={port} dbname=postgres user={ADMIN} password={ADMIN_PASSWORD} sslmode=disable"
        wait_until(lambda: psycopg.connect(admin, connect_timeout=2).close() is None, 60, 0.2, what="PostgreSQL")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")  # type: ignore[arg-type]
        with standin.connect() as conn:
            for statement in BOOTSTRAP:
                conn.execute(statement)  # type: ignore[arg-type]
        api = [sys.executable, "-m", "tests.support.redshift_data_api", "--port", str(api_port), "--dsn", standin.dsn()]
        api += ["--workgroup", WORKGROUP, "--cluster", CLUSTER, "--key", f"{KEY_ID}:{SECRET}"]
        standin.data_api = Server(api, cwd=ROOT, log=Path(tempfile.gettempdir()) / f"redshift-data-api-{api_port}.log").start()
        wait_until(lambda: _data_api_ready(standin), 30, 0.2, what="Redshift Data API test server")
    except BaseException:
        standin.stop()
        raise
    return standin


def _data_api_ready(standin: RedshiftStandin) -> bool:
    client = standin.client()
    reply = client.execute_statement(Sql="SELECT 1", WorkgroupName=WORKGROUP, Database=DATABASE)
    wait_until(lambda: client.describe_statement(Id=reply["Id"])["Status"] == "FINISHED", 10, 0.05, what="SELECT 1")
    return client.get_statement_result(Id=reply["Id"])["Records"] == [[{"longValue": 1}]]


@pytest.fixture(scope="session")
def redshift_standin() -> Iterator[RedshiftStandin]:
    standin = start_redshift_standin()
    yield standin
    standin.stop()
