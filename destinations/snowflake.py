"""`snowflake`: rows into Snowflake tables, by INSERT (default), stage + COPY INTO, or Snowpipe.

Reads: SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, SNOWFLAKE_DATABASE (required);
SNOWFLAKE_PASSWORD, or SNOWFLAKE_PRIVATE_KEY (PEM text or a file path) with an optional
SNOWFLAKE_PRIVATE_KEY_PASSPHRASE; SNOWFLAKE_SCHEMA (default PUBLIC), SNOWFLAKE_WAREHOUSE,
SNOWFLAKE_ROLE, SNOWFLAKE_ACCESS_URL (`https://<account>.snowflakecomputing.com`, or any
`http(s)://host:port`); SNOWFLAKE_STAGE selects stage loads; SNOWFLAKE_PIPE (with
SNOWFLAKE_STAGE and a private key) selects Snowpipe, which also reads SNOWFLAKE_REGION,
SNOWFLAKE_PROVIDER, SNOWFLAKE_PIPE_URL, SNOWFLAKE_PIPE_CREATE, SNOWFLAKE_PIPE_WAIT_SECONDS
(see destinations/snowpipe.py); SNOWFLAKE_LOGIN_TIMEOUT_SECONDS,
SNOWFLAKE_NETWORK_TIMEOUT_SECONDS.

Every value travels as a bound parameter with server-side binding (`paramstyle="qmark"`):
the connector's default client-side interpolation breaks on values such as `$browser`.
A write binds the rows as one JSON array and inserts `SELECT ... FROM FLATTEN(PARSE_JSON(?))`;
the stage path PUTs gzip NDJSON, COPYs it into a session-temporary single-VARIANT landing
table and inserts from there, in one transaction. Names from settings resolve as Snowflake
resolves identifiers: `events` is EVENTS, `"Events"` keeps its case; all SQL quotes them.

A refused row (a value the table's column cannot hold) is found by probing halves of the
write against a temporary copy of the table, so only that row is rejected and nothing is
stored twice if the attempt is cut off; then the rest is inserted in one statement.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from core.settings import ConfigError, Settings
from destinations.base import Capabilities, PermanentError, Rejection, RowSink, SinkResult, TransientError
from destinations.rows import Line
from destinations.schema import TableSchema, build_schemas

log = logging.getLogger(__name__)
T = TypeVar("T")

# Snowflake's type for each schema type (destinations/schema.py spells them BigQuery's way).
TYPES = {
    "STRING": "VARCHAR",
    "INT64": "NUMBER(38,0)",
    "FLOAT64": "FLOAT",
    "BOOL": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMP_NTZ",
    "JSON": "VARIANT",
}
# One INSERT binds one JSON array, parsed into one VARIANT, whose limit is 16 MB: stay well under.
INSERT_MAX_BYTES = 8 * 1024 * 1024
INSERT_MAX_ROWS = 20_000
# A stage load is one file; the delivery buffer's own limits decide its size.
STAGE_MAX_BYTES = 128 * 1024 * 1024
STAGE_MAX_ROWS = 1_000_000
# Statements spent finding refused rows in one write before the rest of a failing part is rejected whole.
PROBE_BUDGET = 64
UNQUOTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
NAME_PART = re.compile(r'"(?:[^"]|"")+"|[^."]+')
ROW_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Error numbers: the session is gone (log in again, then the statement can run as it never ran):
# Snowflake's session and master token codes, and HTTP 401 on a request of an open session.
SESSION_GONE = {390104, 390111, 390112, 390113, 390114, 390115, 290401}
# No warehouse: configuration, however transient its SQL state class looks.
PERMANENT_ERRNOS = {606}


# --- names ------------------------------------------------------------------------------------


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def resolve(name: str, variable: str) -> str:
    """The exact object name a setting means: `"Exact"` keeps its case, a plain name is
    upper-cased as Snowflake does for unquoted identifiers."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        inner = name[1:-1]
        if not inner or '"' in inner.replace('""', ""):
            raise ConfigError(f"{variable}: {name!r} is not a valid quoted identifier")
        return inner.replace('""', '"')
    if not UNQUOTED.match(name):
        raise ConfigError(f'{variable}: {name!r} is not a valid Snowflake identifier (write "{name}" for an exact name)')
    return name.upper()


def qualified(value: str, variable: str, database: str, schema: str) -> tuple[str, str, str]:
    """`name`, `schema.name` or `db.schema.name` (an optional leading `@`) -> exact parts."""
    text = value.strip().removeprefix("@")
    parts = NAME_PART.findall(text)
    if not parts or ".".join(parts) != text or len(parts) > 3:
        raise ConfigError(f"{variable}: {value!r} must be name, schema.name or database.schema.name")
    exact = [resolve(p, variable) for p in parts]
    return tuple(([database, schema][: 3 - len(exact)] + exact)[-3:])  # type: ignore[return-value]


def fq(*parts: str) -> str:
    return ".".join(quote(p) for p in parts)


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SnowflakeConfig:
    account: str
    user: str
    database: str  # exact names
    schema: str
    warehouse: str | None = None
    role: str | None = None
    host: str | None = None
    port: int | None = None
    protocol: str = "https"
    stage: tuple[str, str, str] | None = None
    pipe: tuple[str, str, str] | None = None
    login_timeout: int = 30
    network_timeout: int = 60
    password: str | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)  # DER, PKCS#8, unencrypted

    @property
    def load(self) -> str:
        return "pipe" if self.pipe else "stage" if self.stage else "insert"

    @classmethod
    def from_settings(cls, settings: Settings) -> SnowflakeConfig:
        database = resolve(settings.require("snowflake_database", "snowflake"), "snowflake_database")
        schema = resolve(settings.get("snowflake_schema") or "PUBLIC", "snowflake_schema")
        password = settings.get("snowflake_password")
        key_text = settings.get("snowflake_private_key")
        if not password and not key_text:
            raise ConfigError("snowflake_password or snowflake_private_key is required by the snowflake destination")
        private_key = load_private_key(key_text, settings.get("snowflake_private_key_passphrase")) if key_text else None
        host = port = None
        protocol = "https"
        url = settings.get("snowflake_access_url")
        if url:
            parts = urlsplit(url if "://" in url else f"https://{url}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"snowflake_access_url={url!r} must be a URL such as https://<account>.snowflakecomputing.com")
            host, port, protocol = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), parts.scheme
        stage_name, pipe_name = settings.get("snowflake_stage"), settings.get("snowflake_pipe")
        stage = qualified(stage_name, "snowflake_stage", database, schema) if stage_name else None
        pipe = qualified(pipe_name, "snowflake_pipe", database, schema) if pipe_name else None
        if pipe and not stage:
            raise ConfigError("snowflake_pipe needs snowflake_stage: Snowpipe loads the files the proxy puts there")
        if pipe and not private_key:
            raise ConfigError("snowflake_pipe needs snowflake_private_key: Snowpipe's REST API takes key-pair JWTs only")
        warehouse, role = settings.get("snowflake_warehouse"), settings.get("snowflake_role")
        return cls(
            account=settings.require("snowflake_account", "snowflake"),
            user=settings.require("snowflake_user", "snowflake"),
            database=database,
            schema=schema,
            warehouse=resolve(warehouse, "snowflake_warehouse") if warehouse else None,
            role=resolve(role, "snowflake_role") if role else None,
            host=host,
            port=port,
            protocol=protocol,
            stage=stage,
            pipe=pipe,
            login_timeout=settings.get_int("snowflake_login_timeout_seconds", 30, 1),
            network_timeout=settings.get_int("snowflake_network_timeout_seconds", 60, 1),
            password=password,
            private_key=private_key,
        )

    def connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            "paramstyle": "qmark",  # server-side binding: no value is ever spliced into SQL text
            "login_timeout": self.login_timeout,
            "network_timeout": self.network_timeout,
            "socket_timeout": self.network_timeout,
            "application": "mixpanel_dwh_proxy",
            "session_parameters": {"TIMEZONE": "UTC", "QUERY_TAG": "mixpanel-dwh-proxy"},
        }
        if self.warehouse:
            args["warehouse"] = quote(self.warehouse)
        if self.role:
            args["role"] = quote(self.role)
        if self.host:
            args.update(host=self.host, port=self.port, protocol=self.protocol)
        if self.private_key:
            args.update(authenticator="SNOWFLAKE_JWT", private_key=self.private_key)
        else:
            args["password"] = self.password
        return args


def load_private_key(text: str, passphrase: str | None) -> bytes:
    """PEM (literal `\\n` escapes allowed) or a path to a PEM file -> unencrypted PKCS#8 DER."""
    from cryptography.hazmat.primitives import serialization

    if not text.lstrip().startswith("-----BEGIN") and Path(text).is_file():
        text = Path(text).read_text()
    pem = text.replace("\\n", "\n").encode()
    try:
        key = serialization.load_pem_private_key(pem, passphrase.encode() if passphrase else None)
    except (ValueError, TypeError) as exc:
        reason = f"{type(exc).__name__}: wrong passphrase or not a PEM key"
        raise ConfigError(f"snowflake_private_key cannot be read ({reason})") from None
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


# --- errors -----------------------------------------------------------------------------------


class RowError(Exception):
    """Snowflake refused a value in the rows of this statement (a data exception)."""


class Mismatch(TransientError):
    """Snowflake answered, but stored another number of rows than it was given."""


class SessionGone(Exception):
    """The session expired or was closed server-side: log in again."""


def describe(exc: BaseException, redact: bool = False) -> str:
    """`<errno> (<sqlstate>): <first line>`, without values Snowflake quoted back when asked."""
    message = (getattr(exc, "raw_msg", None) or getattr(exc, "msg", None) or str(exc) or type(exc).__name__).strip()
    line = message.splitlines()[0] if message else type(exc).__name__
    if redact:
        line = re.sub(r"'[^']*'", "'…'", line)
        line = re.sub(r'"[^"]*"', '"…"', line)
    errno, sqlstate = getattr(exc, "errno", None), getattr(exc, "sqlstate", None)
    code = f"{errno:06d}" if isinstance(errno, int) and errno > 0 else type(exc).__name__
    code += f" ({sqlstate})" if sqlstate and sqlstate != "n/a" else ""
    text = f"{code}: {line}"
    return text if len(text) <= 240 else text[:239] + "…"


def classify(exc: BaseException, operation: str) -> Exception:
    """A connector error -> RowError, SessionGone, TransientError or PermanentError."""
    from snowflake.connector import errors as sf

    errno = getattr(exc, "errno", None)
    errno = errno if isinstance(errno, int) else -1
    sqlstate = str(getattr(exc, "sqlstate", None) or "")
    if errno in SESSION_GONE:
        return SessionGone(describe(exc))
    if sqlstate[:2] in ("22", "23") or 100_000 <= errno < 101_000:
        return RowError(describe(exc, redact=True))
    message = f"snowflake {operation}: {describe(exc)}"
    retryable_http = (
        sf.TooManyRequests,
        sf.ServiceUnavailableError,
        sf.GatewayTimeoutError,
        sf.InternalServerError,
        sf.BadGatewayError,
        sf.RequestTimeoutError,
        sf.OtherHTTPRetryableError,
    )
    if isinstance(exc, retryable_http):
        return TransientError(message)
    if isinstance(exc, (sf.ForbiddenError, sf.BadRequest)) or errno in PERMANENT_ERRNOS:
        return PermanentError(message)
    if 390_000 <= errno < 391_000 or sqlstate[:2] == "28":  # login refused: credentials, user, role, network policy
        return PermanentError(message)
    if sqlstate[:2] in ("08", "40", "57", "XX", "53") or isinstance(exc, (sf.OperationalError, sf.InterfaceError)):
        return TransientError(message)
    if isinstance(exc, sf.ProgrammingError) or sqlstate[:2] in ("42", "0A"):
        return PermanentError(message)
    return TransientError(message)


# --- the worker's one session -------------------------------------------------------------------


class Session:
    """One Snowflake connection per worker process: made on first use, reused by every write
    (one at a time: a stage load is a transaction), replaced after the session expires or a
    network error leaves it in an unknown state."""

    def __init__(self, config: SnowflakeConfig) -> None:
        self.config = config
        self._conn: Any = None
        self._pid = 0
        self._lock = threading.RLock()
        self.temporary: set[str] = set()  # temporary tables made in this session
        self.connects = 0

    def _connect(self) -> Any:
        import snowflake.connector

        try:
            conn = snowflake.connector.connect(**self.config.connect_args())
        except Exception as exc:  # noqa: BLE001 - classified below
            error = classify(exc, "login")
            if isinstance(error, SessionGone):  # refused at login: the credentials, not the session
                raise PermanentError(f"snowflake login: {error}") from None
            raise (TransientError(str(error)) if isinstance(error, RowError) else error) from None
        self.connects += 1
        self.temporary = set()
        try:
            conn.cursor().execute(f"USE SCHEMA {fq(self.config.database, self.config.schema)}")
        except Exception as exc:  # noqa: BLE001 - before setup() made it, the schema may be missing
            if getattr(exc, "errno", None) != 2003:
                conn.close()
                raise classify(exc, "USE SCHEMA") from None
        return conn

    def reset(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close(retry=False)
            except Exception:  # noqa: BLE001 - the session is being abandoned anyway
                log.debug("snowflake: closing a broken session failed", exc_info=True)

    def run(self, operation: str, work: Callable[[Any], T]) -> T:
        """`work(cursor)` on the session; connector errors come out classified. A session that
        expired is replaced and `work` runs once more (the server ran none of it). Anything
        else that interrupts `work` (a network error, the attempt's deadline) leaves the
        session in an unknown state: it is dropped, and the next call logs in again."""
        with self._lock:
            for attempt in (1, 2):
                if self._pid != os.getpid():
                    self._conn = None  # inherited through a fork: the parent's session, not ours
                if self._conn is None:
                    self._conn, self._pid = self._connect(), os.getpid()
                try:
                    cursor = self._conn.cursor()
                    try:
                        return work(cursor)
                    finally:
                        cursor.close()
                except (RowError, PermanentError):
                    raise
                except TransientError:  # ours, or the attempt's deadline cutting a call short
                    self.reset()
                    raise
                except Exception as exc:  # noqa: BLE001 - connector errors are classified here
                    error = classify(exc, operation)
                    if isinstance(error, SessionGone):
                        self.reset()
                        if attempt == 1:
                            log.info("snowflake: session ended (%s); logging in again", error)
                            continue
                        raise TransientError(f"snowflake {operation}: session ended twice: {error}") from None
                    if isinstance(error, RowError):
                        raise error from None
                    if isinstance(error, TransientError):
                        self.reset()
                    raise error from None
                except BaseException:
                    self.reset()
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.reset()


# --- SQL ----------------------------------------------------------------------------------------


def column_ddl(column: Any) -> str:
    null = " NOT NULL" if column.mode == "REQUIRED" else ""
    return f"{quote(column.name.upper())} {TYPES[column.type]}{null}"


def create_table_sql(target: str, table: TableSchema) -> str:
    return f"CREATE TABLE IF NOT EXISTS {target} ({', '.join(column_ddl(c) for c in table.columns)})"


def projection(table: TableSchema, source: str) -> str:
    """Each column read from a row object `source` (`value` of FLATTEN, a landing VARIANT,
    or `$1` of a staged file), cast to the column's type."""
    out = []
    for column in table.columns:
        if not ROW_KEY.match(column.name):  # schema.py guarantees it; the path below relies on it
            raise ConfigError(f"column name {column.name!r} cannot be used in Snowflake")
        path = f'{source}:"{column.name}"'
        out.append(path if column.type == "JSON" else f"{path}::{TYPES[column.type]}")
    return ", ".join(out)


def column_list(table: TableSchema) -> str:
    return ", ".join(quote(c.name.upper()) for c in table.columns)


def json_array(lines: Sequence[bytes]) -> str:
    return (b"[" + b",".join(lines) + b"]").decode("utf-8")


# --- the sink -----------------------------------------------------------------------------------


class SnowflakeSink(RowSink):
    name = "snowflake"

    def __init__(self, settings: Settings) -> None:
        self.config = SnowflakeConfig.from_settings(settings)
        self.tables = {schema.name: schema for schema in build_schemas(settings).values()}
        self.session = Session(self.config)
        self.pipe: Any = None
        if self.config.load == "pipe":
            from destinations.snowpipe import Snowpipe

            self.pipe = Snowpipe.from_settings(settings, self.config)
        if self.config.load == "insert":
            self.capabilities = Capabilities("lines", INSERT_MAX_ROWS, INSERT_MAX_BYTES, 60.0, False)
        else:
            # A pipe write waits for Snowpipe to confirm the load; a retry re-sends the same file,
            # which Snowpipe's load history skips, so pipe writes are idempotent.
            timeout = self.pipe.wait_seconds + 60.0 if self.pipe else 120.0
            self.capabilities = Capabilities("lines", STAGE_MAX_ROWS, STAGE_MAX_BYTES, timeout, self.pipe is not None)

    # -- names
    def target(self, table: TableSchema) -> str:
        return fq(self.config.database, self.config.schema, table.name.upper())

    def stage_ref(self, *path: str) -> str:
        assert self.config.stage is not None
        return "@" + fq(*self.config.stage) + "".join(f"/{p}" for p in path)

    def schema_of(self, table: str) -> TableSchema:
        try:
            return self.tables[table]
        except KeyError:
            raise PermanentError(f"snowflake: no table {table!r} in this proxy's schema") from None

    # -- set-up
    def setup(self) -> None:
        c = self.config

        def work(cursor: Any) -> None:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS {quote(c.database)}")
            cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {fq(c.database, c.schema)}")
            cursor.execute(f"USE SCHEMA {fq(c.database, c.schema)}")
            for table in self.tables.values():
                cursor.execute(create_table_sql(self.target(table), table))
                self._add_missing_columns(cursor, table)
            if c.stage:
                cursor.execute(f"CREATE STAGE IF NOT EXISTS {fq(*c.stage)}")
            if self.pipe is not None and self.pipe.create:
                for table in self.tables.values():
                    cursor.execute(self.pipe_ddl(table))

        self.session.run("setup", work)

    def pipe_ddl(self, table: TableSchema) -> str:
        """The table's pipe: a transforming COPY from the table's folder of the stage. Snowpipe's
        default ON_ERROR = SKIP_FILE keeps a file all-or-nothing."""
        return (
            f"CREATE PIPE IF NOT EXISTS {fq(*self.pipe.pipe_for(table))} AS "
            f"COPY INTO {self.target(table)} ({column_list(table)}) "
            f"FROM (SELECT {projection(table, '$1')} FROM {self.stage_ref(table.name)}/) "
            "FILE_FORMAT = (TYPE = JSON COMPRESSION = GZIP)"
        )

    def _add_missing_columns(self, cursor: Any, table: TableSchema) -> None:
        """Columns added to the schema since the table was made (EVENTS_EXTRA_COLUMNS...)."""
        cursor.execute(
            f"SELECT column_name FROM {quote(self.config.database)}.information_schema.columns "
            "WHERE table_schema = ? AND table_name = ?",
            (self.config.schema, table.name.upper()),
        )
        present = {row[0] for row in cursor.fetchall()}
        for column in table.columns:
            if column.name.upper() not in present:
                ddl = column_ddl(column).replace(" NOT NULL", "")  # existing rows have no value for it
                cursor.execute(f"ALTER TABLE {self.target(table)} ADD COLUMN IF NOT EXISTS {ddl}")
                log.info("snowflake: added column %s to %s", column.name.upper(), table.name.upper())

    def drop(self, tables: list[str]) -> list[str]:
        wanted = {t.upper(): t for t in tables if t in self.tables}

        def work(cursor: Any) -> list[str]:
            cursor.execute(
                f"SELECT table_name FROM {quote(self.config.database)}.information_schema.tables WHERE table_schema = ?",
                (self.config.schema,),
            )
            existing = [row[0] for row in cursor.fetchall() if row[0] in wanted]
            dropped = []
            for name in existing:
                cursor.execute(f"DROP TABLE IF EXISTS {fq(self.config.database, self.config.schema, name)}")
                dropped.append(f"{self.config.database}.{self.config.schema}.{name}")
            if self.pipe is not None and self.pipe.create:
                for name in wanted.values():
                    pipe = self.pipe.pipe_for(self.tables[name])
                    cursor.execute(f"DROP PIPE IF EXISTS {fq(*pipe)}")
                    dropped.append(".".join(pipe))
            return dropped

        return self.session.run("drop", work)

    def health(self) -> dict[str, Any]:
        c = self.config
        info: dict[str, Any] = {"account": c.account, "database": c.database, "schema": c.schema, "load": c.load}
        if c.host:
            info["host"] = f"{c.protocol}://{c.host}:{c.port}"
        return info

    def close(self) -> None:
        self.session.close()
        if self.pipe is not None:
            self.pipe.close()

    # -- writes
    def write(self, table: str, items: Sequence[Line]) -> SinkResult:
        schema = self.schema_of(table)
        lines = [line for _, line in items]
        if not lines:
            return SinkResult(0)
        if self.config.load == "insert":
            return self.insert(schema, lines)
        if self.config.load == "stage":
            return self.stage_load(schema, lines)
        return self.pipe.write(self, schema, lines)

    # insert path
    def insert(self, table: TableSchema, lines: Sequence[bytes]) -> SinkResult:
        """INSERT ... SELECT over the bound JSON array, in parts under the bind limit. A part
        Snowflake refuses for a value is searched for the refused rows on a temporary copy
        of the table first; then its other rows are inserted in one statement."""
        written, rejected = 0, []
        for start, end in parts(lines, INSERT_MAX_ROWS, INSERT_MAX_BYTES):
            try:
                written += self._insert_statement(table, lines[start:end], self.target(table))
            except RowError as exc:
                bad = self._find_refused(table, lines, start, end, str(exc))
                keep = [lines[i] for i in range(start, end) if i not in bad]
                if keep:
                    try:
                        written += self._insert_statement(table, keep, self.target(table))
                    except RowError as again:
                        raise TransientError(f"snowflake INSERT refused rows its probe accepted: {again}") from None
                rejected += [Rejection(i, f"snowflake refused the row: {reason}") for i, reason in sorted(bad.items())]
        return SinkResult(written, tuple(rejected))

    def _insert_statement(self, table: TableSchema, lines: Sequence[bytes], target: str) -> int:
        sql = (
            f"INSERT INTO {target} ({column_list(table)}) SELECT {projection(table, 'value')} FROM TABLE(FLATTEN(PARSE_JSON(?)))"
        )

        def work(cursor: Any) -> int:
            cursor.execute(sql, (json_array(lines),))
            return int(cursor.rowcount if cursor.rowcount is not None else len(lines))

        inserted = self.session.run("INSERT", work)
        if inserted != len(lines):
            raise Mismatch(f"snowflake INSERT stored {inserted} of {len(lines)} rows")
        return inserted

    def _find_refused(self, table: TableSchema, lines: Sequence[bytes], start: int, end: int, reason: str) -> dict[int, str]:
        """Indices (into `lines`) of rows Snowflake refuses, with its reason, found by bisecting
        [start, end) on a session-temporary table LIKE the target: nothing is stored by the
        search, so an attempt cut off here leaves the table as it was."""
        probe = f"{table.name.upper()}_PROBE"
        self._temporary(probe, f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(probe)} LIKE {self.target(table)}")
        bad: dict[int, str] = {}
        budget = [PROBE_BUDGET]

        def search(lo: int, hi: int, why: str) -> None:
            if hi - lo == 1:
                bad[lo] = why
                return
            if budget[0] <= 0:  # give up isolating: reject what is left of this part, with the reason
                bad.update((i, f"{why} (in a part of {hi - lo} rows not searched further)") for i in range(lo, hi))
                return
            mid = (lo + hi) // 2
            for a, b in ((lo, mid), (mid, hi)):
                budget[0] -= 1
                try:
                    self._insert_statement(table, lines[a:b], quote(probe))
                except RowError as exc:
                    search(a, b, str(exc))
            self.session.run("DELETE", lambda cursor: cursor.execute(f"DELETE FROM {quote(probe)}"))

        search(start, end, reason)
        return bad

    def _temporary(self, name: str, ddl: str) -> None:
        """A session-temporary table, made once per session (it vanishes with the session)."""

        def work(cursor: Any) -> None:
            if name not in self.session.temporary:
                cursor.execute(ddl)
                self.session.temporary.add(name)

        self.session.run("CREATE TEMPORARY TABLE", work)

    # stage path
    def stage_load(self, table: TableSchema, lines: Sequence[bytes]) -> SinkResult:
        """PUT the rows as one gzip NDJSON file in a folder of its own, then in one transaction
        COPY it into the session's landing table (PURGE removes the file once loaded) and
        insert from there into the table. A refused value rolls it all back, and the rows go
        the insert path's way, which rejects only the refused ones."""
        landing = f"{table.name.upper()}_LANDING"
        self._temporary(landing, f'CREATE TEMPORARY TABLE IF NOT EXISTS {quote(landing)} ("V" VARIANT)')
        folder = batch_folder(table.name)
        body = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=6, mtime=0)
        put = put_sql(self.stage_ref(folder), "rows.json.gz")
        copy = (
            f"COPY INTO {quote(landing)} FROM {self.stage_ref(folder)}/ "
            "FILE_FORMAT = (TYPE = JSON COMPRESSION = GZIP) PURGE = TRUE"
        )
        insert = (
            f"INSERT INTO {self.target(table)} ({column_list(table)}) "
            f"SELECT {projection(table, quote('V'))} FROM {quote(landing)}"
        )

        from snowflake.connector.errors import ProgrammingError as answered

        def work(cursor: Any) -> int:
            cursor.execute(put, file_stream=io.BytesIO(body))
            status = [row[6] for row in cursor.fetchall()]
            if status and any(s not in ("UPLOADED", "SKIPPED") for s in status):
                raise TransientError(f"snowflake PUT: {status}")
            cursor.execute("BEGIN")
            try:
                cursor.execute(f"DELETE FROM {quote(landing)}")
                cursor.execute(copy)
                loaded = sum(int(row[3] or 0) for row in cursor.fetchall() if row[1] == "LOADED")
                if loaded != len(lines):
                    raise Mismatch(f"snowflake COPY INTO loaded {loaded} of {len(lines)} rows")
                cursor.execute(insert)
                inserted = int(cursor.rowcount or 0)
                if inserted != len(lines):
                    raise Mismatch(f"snowflake INSERT from the landing table stored {inserted} of {len(lines)} rows")
                cursor.execute(f"DELETE FROM {quote(landing)}")
                cursor.execute("COMMIT")
            except Exception as exc:
                # Roll back when Snowflake answered; after a network error or the deadline the
                # session is dropped instead, and its uncommitted transaction with it.
                if isinstance(exc, (Mismatch, answered)):
                    rollback(cursor)
                raise
            return inserted

        try:
            return SinkResult(self.session.run("stage load", work))
        except RowError as exc:
            self._remove_staged(folder)
            log.info("snowflake: stage load of %d rows refused a value (%s); loading them by INSERT", len(lines), exc)
            return self.insert(table, lines)
        except (TransientError, PermanentError):
            self._remove_staged(folder)
            raise

    def put(self, folder: str, name: str, body: bytes) -> None:
        """PUT gzip bytes to `<stage>/<folder>/<name>` from memory."""
        sql = put_sql(self.stage_ref(folder), name)
        self.session.run("PUT", lambda cursor: cursor.execute(sql, file_stream=io.BytesIO(body)))

    def remove_staged(self, *path: str) -> None:
        """REMOVE a staged file or folder, best effort: a leftover costs storage only, never a
        second load (folders are never reused; Snowpipe skips files it loaded)."""
        try:
            self.session.run("REMOVE", lambda cursor: cursor.execute(f"REMOVE {self.stage_ref(*path)}"))
        except (PermanentError, TransientError, RowError) as exc:
            log.debug("snowflake: REMOVE %s failed: %s", "/".join(path), exc)

    def _remove_staged(self, folder: str) -> None:
        """PURGE removed a loaded file; a failed load leaves it: remove the batch's folder."""
        self.remove_staged(folder, "")


def put_sql(stage_folder: str, file_name: str) -> str:
    """PUT of an in-memory stream (`file_stream=`): the local path only names the staged file."""
    return f"PUT 'file:///tmp/{file_name}' {stage_folder}/ AUTO_COMPRESS=FALSE SOURCE_COMPRESSION=GZIP OVERWRITE=TRUE"


def rollback(cursor: Any) -> None:
    try:
        cursor.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - the session is dropped by the caller if it is broken
        log.debug("snowflake: ROLLBACK failed", exc_info=True)


def parts(lines: Sequence[bytes], max_rows: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """[start, end) ranges of at most `max_rows` rows and `max_bytes` of JSON (one larger row
    goes alone)."""
    start, size = 0, 0
    for index, line in enumerate(lines):
        if index > start and (index - start >= max_rows or size + len(line) + 1 > max_bytes):
            yield start, index
            start, size = index, 0
        size += len(line) + 1
    if start < len(lines):
        yield start, len(lines)


def batch_folder(table: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{table}/{stamp}-{os.getpid()}-{secrets.token_hex(6)}"


__all__ = ["SnowflakeConfig", "SnowflakeSink", "classify", "projection", "resolve"]
