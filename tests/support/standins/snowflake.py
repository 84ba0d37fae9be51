"""Snowflake's stand-in: fakesnow in server mode, started once per test run.

fakesnow (in its own venv, installed by scripts/test.d/snowflake.sh) answers the real
connector's HTTP protocol: login, query requests with server-side bindings, PUT uploads.
It keeps every database in memory, shared by all sessions. Ready when the real connector
has logged in and run a query. Tests reach it with SNOWFLAKE_ACCESS_URL=http://127.0.0.1:<port>.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.processes import ROOT, Server, free_port, wait_until

FAKESNOW = ROOT / ".standins" / "snowflake" / "bin" / "fakesnow"
ACCOUNT, USER, PASSWORD = "standin", "proxy", "standin-password"


@dataclass
class SnowflakeStandin:
    server: Server
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, database: str, **extra: str) -> dict[str, str]:
        """Proxy variables pointing the snowflake destination at this stand-in."""
        return {
            "snowflake_account": ACCOUNT,
            "snowflake_user": USER,
            "snowflake_password": PASSWORD,
            "snowflake_database": database,
            "snowflake_schema": "MIXPANEL",
            "snowflake_warehouse": "COMPUTE_WH",
            "snowflake_access_url": self.url,
            **extra,
        }

    def connect(self, **kwargs: Any) -> Any:
        """A connection of the real connector (qmark binding), for tests to read back with."""
        import snowflake.connector

        args = {"account": ACCOUNT, "user": USER, "password": PASSWORD, "host": "127.0.0.1", "port": self.port}
        args.update(protocol="http", paramstyle="qmark", login_timeout=10, network_timeout=30, socket_timeout=30)
        return snowflake.connector.connect(**{**args, **kwargs})

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(sql, params or None)
            return cursor.fetchall()


def _ready(standin: SnowflakeStandin) -> bool:
    return standin.query("SELECT 1") == [(1,)]


@pytest.fixture(scope="session")
def snowflake_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnowflakeStandin]:
    if not FAKESNOW.exists():
        pytest.fail(f"{FAKESNOW} is missing: run scripts/test.d/snowflake.sh")
    port = free_port()
    log = tmp_path_factory.mktemp("snowflake-standin") / "fakesnow.log"
    server = Server([str(FAKESNOW), "-s", "--host", "127.0.0.1", "-p", str(port)], log=log).start()
    standin = SnowflakeStandin(server, port)
    try:
        wait_until(lambda: _ready(standin), 60, 0.2, what="fakesnow")
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"fakesnow did not start:\n{server.log()[-3000:]}") from None
    yield standin
    server.stop()
