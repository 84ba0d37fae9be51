"""The direct path: the PostgreSQL protocol to a cluster or workgroup endpoint, with psycopg 3.

Why psycopg: it speaks to Redshift and to plain PostgreSQL alike (redshift_connector cannot
log in to PostgreSQL, so it could not be tested here), it binds parameters on the server
(values never enter the SQL text), and its waits are written in Python over `select`, so
under gunicorn's gevent workers a query parks its greenlet instead of blocking the worker.

A write is one transaction: all its statements commit together or not at all. Connections
are pooled per process (REDSHIFT_MAX_CONNECTIONS at once); one that broke, or whose
operation was cut off mid-way, is closed rather than reused.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql as pgsql
from psycopg import waiting
from psycopg.pq import TransactionStatus

from core import green
from destinations.base import PermanentError, TransientError
from destinations.redshift.errors import MissingTable, classify, safe_message
from destinations.redshift.sql import Statement, postgres_placeholder

if TYPE_CHECKING:
    from destinations.redshift.config import RedshiftConfig

#: Redshift takes statements up to 16 MB; smaller ones keep memory and lock times modest.
STATEMENT_BYTES = 1024 * 1024
IDLE_CONNECTIONS = 4


def cooperative_waits() -> None:
    """psycopg picks its wait function when first imported: the C one, unless gevent has
    already patched `select`. Gunicorn patches before our import, but if anything imported
    psycopg earlier (a preloaded app), switch to the Python poll() wait gevent patches."""
    if green.patched() and getattr(waiting, "wait_c", None) is not None and waiting.wait is waiting.wait_c:
        waiting.wait = waiting.wait_poll


class Direct:
    placeholder = staticmethod(postgres_placeholder)
    statement_bytes = STATEMENT_BYTES

    def __init__(self, config: RedshiftConfig) -> None:
        self.config = config
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.max_connections)

    def _connect(self) -> psycopg.Connection:
        cooperative_waits()
        c = self.config
        conn = psycopg.connect(
            host=c.host,
            port=c.port,
            dbname=c.database,
            user=c.user,
            password=c.password,
            sslmode=c.sslmode,
            connect_timeout=10,
            application_name="mixpanel-dwh-proxy",
            # Redshift reports its encoding as UNICODE, a name psycopg does not know: ask for UTF8.
            client_encoding="utf8",
            keepalives=1,
            keepalives_idle=60,
            autocommit=True,
            # No server-side prepared statements: every batch has its own shape, and Redshift
            # does not support psycopg's DEALLOCATE ALL.
            prepare_threshold=None,
        )
        ms = int(self.config.statement_timeout_seconds * 1000)
        conn.execute(pgsql.SQL("SET statement_timeout TO {}").format(pgsql.Literal(ms)))
        return conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        where = f"redshift ({self.config.where})"
        self._slots.acquire()
        conn: psycopg.Connection | None = None
        healthy = False
        try:
            with self._lock:
                while self._idle and conn is None:
                    candidate = self._idle.pop()
                    if candidate.closed or candidate.broken:
                        candidate.close()
                    else:
                        conn = candidate
            try:
                if conn is None:
                    conn = self._connect()
            except psycopg.Error as exc:
                raise connection_error(where, exc) from None
            try:
                yield conn
            except psycopg.Error:
                # A server error leaves the connection usable once the transaction is over.
                healthy = not conn.closed and not conn.broken
                raise
            else:
                healthy = True
        finally:
            # Anything else (a deadline cut us off mid-query) leaves it in an unknown state.
            if conn is not None:
                if healthy and conn.info.transaction_status == TransactionStatus.IDLE and len(self._idle) < IDLE_CONNECTIONS:
                    with self._lock:
                        self._idle.append(conn)
                else:
                    conn.close()
            self._slots.release()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        where = f"redshift ({self.config.where})"
        try:
            yield
        except psycopg.Error as exc:
            raise sql_error(where, exc) from None

    # -- what the sink calls ------------------------------------------------------------------
    def run(self, statements: list[Statement]) -> list[str | None]:
        """All statements in one transaction. A value the server refuses rolls everything
        back: that statement gets the reason, the others "" (not stored, run them again)."""
        with self._errors(), self.connection() as conn:
            done = 0
            try:
                with conn.transaction():
                    cursor = psycopg.RawCursor(conn)
                    for statement in statements:
                        cursor.execute(statement.sql, statement.params)  # type: ignore[arg-type]
                        done += 1
            except psycopg.Error as exc:
                if data_refusal(exc):
                    return ["" if i != done else safe_message(str(exc)) for i in range(len(statements))]
                raise
        return [None] * len(statements)

    def batch(self, sqls: list[str]) -> None:
        with self._errors(), self.connection() as conn, conn.transaction():
            for statement in sqls:
                conn.execute(statement)  # type: ignore[arg-type]

    def query(self, sql: str, params: list[str]) -> list[list[Any]]:
        with self._errors(), self.connection() as conn:
            cursor = psycopg.RawCursor(conn)
            cursor.execute(sql, params)  # type: ignore[arg-type]
            return [list(row) for row in cursor.fetchall()]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def data_refusal(exc: psycopg.Error) -> bool:
    """A value refused: by the server (SQLSTATE class 22/23), or by psycopg before sending
    (a NUL in a JSON string, say), which it reports as a DataError without a SQLSTATE."""
    if exc.sqlstate is None:
        return isinstance(exc, psycopg.DataError)
    return classify(exc.sqlstate, str(exc)) == "data"


def sql_error(where: str, exc: psycopg.Error) -> Exception:
    if exc.sqlstate is None:
        return connection_error(where, exc)
    kind = classify(exc.sqlstate, str(exc))
    message = f"{where}: {exc.sqlstate} {safe_message(exc.diag.message_primary or str(exc))}"
    if kind == "missing":
        return MissingTable(message)
    return TransientError(message) if kind == "transient" else PermanentError(message)


def connection_error(where: str, exc: psycopg.Error) -> Exception:
    """No SQLSTATE: the connection failed or broke. Refused passwords are permanent."""
    text = str(exc)
    if exc.sqlstate and exc.sqlstate[:2] == "28" or "password authentication failed" in text or "no pg_hba.conf entry" in text:
        return PermanentError(f"{where}: login refused: {safe_message(text)}")
    if exc.sqlstate:
        return sql_error(where, exc)
    return TransientError(f"{where}: connection failed: {type(exc).__name__}: {safe_message(text)}")
