"""A Redshift Data API test server that runs the statements on a real PostgreSQL.

moto accepts ExecuteStatement but executes nothing and lacks BatchExecuteStatement, so it
cannot show that rows land. This server speaks the service's real wire protocol (AWS JSON
1.1, `X-Amz-Target: RedshiftData.<Operation>`, SigV4-signed requests checked against the
keys it was given) and implements what the proxy uses, with AWS's documented request and
response shapes:

  ExecuteStatement        Sql (<= 100 kB, else ValidationException "Cannot process query
                          string larger than 100kB"), named `:name` Parameters whose values
                          are strings the database converts, ClientToken idempotency,
                          WorkgroupName or ClusterIdentifier (+ DbUser or SecretArn), Database
  BatchExecuteStatement   up to 40 Sqls, shared Parameters, ExecutionMode TRANSACTION (the
                          default: all or nothing) or AUTO_COMMIT; sub-statement ids `<id>:<n>`
  DescribeStatement       SUBMITTED -> STARTED -> FINISHED | FAILED (with the database's
                          `ERROR: ...` text) | ABORTED; Duration, ResultRows, ResultSize are -1
                          until finished; SubStatements for batches
  GetStatementResult      Records of Field unions, ColumnMetadata, TotalNumRows, NextToken
                          paging; ResourceNotFoundException when there is no result

Statements run asynchronously on a thread pool, one database connection (and transaction)
per statement or batch, as the service runs them on the cluster. Unknown workgroups or
clusters are refused like AWS refuses them. Run it as
`python -m tests.support.redshift_data_api --port P --dsn DSN --workgroup W --cluster C
--key ID:SECRET`.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from psycopg.adapt import Loader

MAX_SQL_BYTES = 100_000
MAX_BATCH = 40
PAGE_ROWS = 500
TYPE_NAMES = {"jsonb": "super", "json": "super", "text": "varchar", "character varying": "varchar", "double precision": "float8"}
AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, SignedHeaders=([^,]+), Signature=(\w+)"
)


class SuperLoader(Loader):
    """SUPER (jsonb here) as compact JSON text, the way the service returns it."""

    def load(self, data: Any) -> str:
        value = json.loads(bytes(data).decode("utf-8"))
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.extra = code, message, status, extra


def validation(message: str) -> ApiError:
    return ApiError("ValidationException", message)


# --- `:name` placeholders to PostgreSQL's `$n` ------------------------------------------------

NAME = re.compile(r"[A-Za-z_][0-9A-Za-z_]*")


def positional(sql: str) -> tuple[str, list[str]]:
    """Replace `:name` placeholders outside quotes, comments and `::` casts with `$n`;
    return the new text and the names in `$n` order."""
    out: list[str] = []
    names: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == c:
                    if end + 1 < n and sql[end + 1] == c:  # doubled quote inside the literal
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end])
            i = end
        elif sql.startswith("::", i):
            out.append("::")
            i += 2
        elif c == ":" and (match := NAME.match(sql, i + 1)):
            name = match.group(0)
            if name not in names:
                names.append(name)
            out.append(f"${names.index(name) + 1}")
            i = match.end()
        else:
            out.append(c)
            i += 1
    return "".join(out), names


# --- statements ---------------------------------------------------------------------------


@dataclass
class Statement:
    id: str
    sql: str
    names: list[str]
    converted: str
    status: str = "SUBMITTED"
    error: str | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    started: float | None = None
    duration_ns: int = -1
    result_rows: int = -1
    result_size: int = -1
    columns: list[dict[str, Any]] | None = None
    records: list[list[dict[str, Any]]] | None = None
    query_id: int = 0
    pid: int = 0

    def set(self, status: str, error: str | None = None) -> None:
        self.status, self.updated = status, time.time()
        if error is not None:
            self.error = error
        if status == "STARTED":
            self.started = self.updated
        if status in ("FINISHED", "FAILED", "ABORTED") and self.started is not None:
            self.duration_ns = int((self.updated - self.started) * 1e9)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Id": self.id,
            "Status": self.status,
            "QueryString": self.sql,
            "CreatedAt": self.created,
            "UpdatedAt": self.updated,
            "Duration": self.duration_ns,
            "ResultRows": self.result_rows,
            "ResultSize": self.result_size,
            "HasResultSet": self.records is not None,
            "RedshiftQueryId": self.query_id,
        }
        if self.error:
            out["Error"] = self.error
        return out


@dataclass
class Request:
    """One ExecuteStatement or BatchExecuteStatement call and its statements."""

    id: str
    target: dict[str, Any]
    statements: list[Statement]
    values: dict[str, str]
    batch: bool
    transaction: bool
    done: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.time)

    @property
    def status(self) -> str:
        states = [s.status for s in self.statements]
        for state in ("FAILED", "ABORTED", "STARTED", "SUBMITTED"):
            if state in states:
                return "STARTED" if state == "SUBMITTED" and "FINISHED" in states else state
        return "FINISHED"

    def describe(self) -> dict[str, Any]:
        if not self.batch:
            out = self.statements[0].describe()
        else:
            out = {
                "Id": self.id,
                "Status": self.status,
                "CreatedAt": self.created,
                "UpdatedAt": max(s.updated for s in self.statements),
                "Duration": sum(max(s.duration_ns, 0) for s in self.statements) if self.done.is_set() else -1,
                "HasResultSet": any(s.records is not None for s in self.statements),
                "ResultRows": -1,
                "ResultSize": -1,
                "QueryString": "",
                "RedshiftQueryId": 0,
                "SubStatements": [s.describe() for s in self.statements],
                "ExecutionMode": "TRANSACTION" if self.transaction else "AUTO_COMMIT",
            }
            failed = [s.error for s in self.statements if s.error]
            if failed:
                out["Error"] = failed[0]
        out.update({k: v for k, v in self.target.items() if v is not None})
        if self.values:
            out["QueryParameters"] = [{"name": k, "value": v} for k, v in self.values.items()]
        out["ResultFormat"] = "JSON"
        return out


def field_of(value: Any) -> dict[str, Any]:
    if value is None:
        return {"isNull": True}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"longValue": value}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return {"stringValue": value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()}
    if isinstance(value, Decimal):
        return {"stringValue": str(value)}
    if isinstance(value, bytes):
        return {"blobValue": base64.b64encode(value).decode()}
    return {"stringValue": str(value)}


class Backend:
    def __init__(self, dsn: str, workgroups: set[str], clusters: set[str]) -> None:
        self.dsn = dsn
        self.workgroups = workgroups
        self.clusters = clusters
        self.requests: dict[str, Request] = {}
        self.tokens: dict[str, tuple[str, str]] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="statement")
        self.query_ids = iter(range(1000, 1 << 62))

    # -- validation shared by both execute calls -------------------------------------------
    def _target(self, body: dict[str, Any]) -> dict[str, Any]:
        workgroup, cluster = body.get("WorkgroupName"), body.get("ClusterIdentifier")
        if bool(workgroup) == bool(cluster):
            raise validation("Either WorkgroupName or ClusterIdentifier must be specified, but not both.")
        if workgroup and workgroup not in self.workgroups:
            raise validation("Redshift endpoint doesn't exist in this region.")
        if cluster and cluster not in self.clusters:
            raise validation("Redshift endpoint doesn't exist in this region.")
        if cluster and not (body.get("DbUser") or body.get("SecretArn")):
            raise validation("Either DbUser or SecretArn must be specified for a provisioned cluster.")
        if not body.get("Database") and not body.get("SecretArn"):
            raise validation("Database must be specified.")
        return {
            "WorkgroupName": workgroup,
            "ClusterIdentifier": cluster,
            "Database": body.get("Database"),
            "DbUser": body.get("DbUser"),
            "SecretArn": body.get("SecretArn"),
        }

    def _values(self, body: dict[str, Any]) -> dict[str, str]:
        values: dict[str, str] = {}
        for item in body.get("Parameters") or []:
            name, value = item.get("name"), item.get("value")
            if not isinstance(name, str) or not NAME.fullmatch(name) or not isinstance(value, str) or not value:
                raise validation("Parameter name and value must be non-empty strings.")
            values[name] = value
        return values

    def _statement(self, sql: Any, request_id: str) -> Statement:
        if not isinstance(sql, str) or not sql.strip():
            raise validation("SQL statement must not be empty.")
        if len(sql.encode("utf-8")) > MAX_SQL_BYTES:
            raise validation("Cannot process query string larger than 100kB")
        converted, names = positional(sql)
        return Statement(request_id, sql, names, converted)

    def _idempotent(self, body: dict[str, Any], operation: str) -> str | None:
        token = body.get("ClientToken")
        if not token:
            return None
        fingerprint = json.dumps([operation, {k: v for k, v in body.items() if k != "ClientToken"}], sort_keys=True)
        with self.lock:
            known = self.tokens.get(token)
        if known is None:
            return None
        if known[1] != fingerprint:
            raise validation("ClientToken was already used with different request parameters.")
        return known[0]

    def _remember(self, body: dict[str, Any], operation: str, request_id: str) -> None:
        token = body.get("ClientToken")
        if token:
            fingerprint = json.dumps([operation, {k: v for k, v in body.items() if k != "ClientToken"}], sort_keys=True)
            with self.lock:
                self.tokens[token] = (request_id, fingerprint)

    def _reply(self, request: Request) -> dict[str, Any]:
        out: dict[str, Any] = {"Id": request.id, "CreatedAt": request.created}
        out.update({k: v for k, v in request.target.items() if v is not None})
        return out

    # -- operations --------------------------------------------------------------------------
    def execute_statement(self, body: dict[str, Any]) -> dict[str, Any]:
        if (known := self._idempotent(body, "execute")) is not None:
            return self._reply(self.requests[known])
        if body.get("SessionId") or body.get("SessionKeepAliveSeconds"):
            raise validation("Sessions are not supported by this test server.")
        target = self._target(body)
        request_id = str(uuid.uuid4())
        statement = self._statement(body.get("Sql"), request_id)
        values = self._values(body)
        self._check_names([statement], values)
        request = Request(request_id, target, [statement], values, batch=False, transaction=True)
        return self._start(request, body, "execute")

    def batch_execute_statement(self, body: dict[str, Any]) -> dict[str, Any]:
        if (known := self._idempotent(body, "batch")) is not None:
            return self._reply(self.requests[known])
        target = self._target(body)
        sqls = body.get("Sqls")
        if not isinstance(sqls, list) or not 1 <= len(sqls) <= MAX_BATCH:
            raise validation(f"Sqls must hold 1 to {MAX_BATCH} statements.")
        request_id = str(uuid.uuid4())
        statements = [self._statement(sql, f"{request_id}:{n}") for n, sql in enumerate(sqls, 1)]
        values = self._values(body)
        self._check_names(statements, values)
        mode = body.get("ExecutionMode") or "TRANSACTION"
        if mode not in ("TRANSACTION", "AUTO_COMMIT"):
            raise validation("ExecutionMode must be TRANSACTION or AUTO_COMMIT.")
        request = Request(request_id, target, statements, values, batch=True, transaction=mode == "TRANSACTION")
        return self._start(request, body, "batch")

    def _check_names(self, statements: list[Statement], values: dict[str, str]) -> None:
        used = {name for s in statements for name in s.names}
        missing = sorted(used - set(values))
        if missing:
            raise validation(f"Parameter '{missing[0]}' is referenced in the SQL but not provided.")
        unused = sorted(set(values) - used)
        if unused:
            raise validation(f"Parameter '{unused[0]}' is provided but not referenced in the SQL.")

    def _start(self, request: Request, body: dict[str, Any], operation: str) -> dict[str, Any]:
        with self.lock:
            self.requests[request.id] = request
            for statement in request.statements:
                statement.query_id = next(self.query_ids)
        self._remember(body, operation, request.id)
        self.pool.submit(self._run, request)
        wait = body.get("WaitTimeSeconds")
        reply = self._reply(request)
        if wait:
            request.done.wait(min(float(wait), 30.0))
            reply["Status"] = request.status
        return reply

    def _run(self, request: Request) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None) as conn:
                conn.adapters.register_loader("jsonb", SuperLoader)
                conn.adapters.register_loader("json", SuperLoader)
                pid = conn.info.backend_pid
                if request.transaction:
                    conn.execute("BEGIN")
                failed = False
                for statement in request.statements:
                    statement.pid = pid
                    if failed and request.transaction:
                        statement.set("ABORTED")
                        continue
                    failed = not self._execute(conn, statement, request.values) or failed
                    if failed and request.transaction:
                        conn.execute("ROLLBACK")
                if request.transaction and not failed:
                    conn.execute("COMMIT")
        except psycopg.Error as exc:  # the connection itself failed
            for statement in request.statements:
                if statement.status not in ("FINISHED", "FAILED"):
                    statement.set("FAILED", f"ERROR: {exc}")
        finally:
            request.done.set()

    def _execute(self, conn: psycopg.Connection, statement: Statement, values: dict[str, str]) -> bool:
        statement.set("STARTED")
        params = [values[name] for name in statement.names]
        try:
            cursor = psycopg.RawCursor(conn)
            cursor.execute(statement.converted, params)  # type: ignore[arg-type]
            if cursor.description is not None:
                rows = cursor.fetchall()
                statement.columns = [self._column(conn, c) for c in cursor.description]
                statement.records = [[field_of(v) for v in row] for row in rows]
                statement.result_rows = len(rows)
                statement.result_size = len(json.dumps(statement.records))
            else:
                statement.result_rows = max(cursor.rowcount, 0)
                statement.result_size = 0
        except psycopg.Error as exc:
            message = exc.diag.message_primary if exc.sqlstate else str(exc)
            statement.set("FAILED", f"ERROR: {message}")
            return False
        statement.set("FINISHED")
        return True

    @staticmethod
    def _column(conn: psycopg.Connection, column: Any) -> dict[str, Any]:
        info = conn.adapters.types.get(column.type_code)
        type_name = TYPE_NAMES.get(info.name if info else "", info.name if info else "unknown")
        return {
            "name": column.name,
            "label": column.name,
            "typeName": type_name,
            "nullable": 1,
            "isCaseSensitive": type_name == "varchar",
            "isCurrency": False,
            "isSigned": type_name in ("int2", "int4", "int8", "float4", "float8", "numeric"),
            "precision": column.precision or 0,
            "scale": column.scale or 0,
            "length": 0,
            "schemaName": "",
            "tableName": "",
        }

    def _request(self, statement_id: str) -> tuple[Request, Statement | None]:
        base, _, sub = str(statement_id or "").partition(":")
        with self.lock:
            request = self.requests.get(base)
        if request is None or (sub and not (sub.isdigit() and 1 <= int(sub) <= len(request.statements))):
            raise ApiError("ResourceNotFoundException", "Query does not exist.", ResourceId=statement_id)
        if sub:
            return request, request.statements[int(sub) - 1]
        return request, None

    def describe_statement(self, body: dict[str, Any]) -> dict[str, Any]:
        request, sub = self._request(body.get("Id", ""))
        if sub is not None:
            out = sub.describe()
            out.update({k: v for k, v in request.target.items() if v is not None})
            return out
        return request.describe()

    def get_statement_result(self, body: dict[str, Any]) -> dict[str, Any]:
        request, sub = self._request(body.get("Id", ""))
        if request.batch and sub is None:
            raise validation("BatchExecuteStatement result can only be retrieved with sub-statement id.")
        statement = sub or request.statements[0]
        if statement.status != "FINISHED" or statement.records is None:
            raise ApiError(
                "ResourceNotFoundException",
                "Query does not have result. Please check query status with DescribeStatement.",
                ResourceId=body.get("Id"),
            )
        start = int(base64.b64decode(body["NextToken"]).decode()) if body.get("NextToken") else 0
        page = statement.records[start : start + PAGE_ROWS]
        out: dict[str, Any] = {"Records": page, "ColumnMetadata": statement.columns, "TotalNumRows": len(statement.records)}
        if start + PAGE_ROWS < len(statement.records):
            out["NextToken"] = base64.b64encode(str(start + PAGE_ROWS).encode()).decode()
        return out


OPERATIONS = {
    "ExecuteStatement": "execute_statement",
    "BatchExecuteStatement": "batch_execute_statement",
    "DescribeStatement": "describe_statement",
    "GetStatementResult": "get_statement_result",
}


class Handler(BaseHTTPRequestHandler):
    server: DataApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self._authenticate(body)
            target = self.headers.get("X-Amz-Target", "")
            prefix, _, operation = target.partition(".")
            if prefix != "RedshiftData" or operation not in OPERATIONS:
                raise ApiError("UnknownOperationException", f"Unknown operation {target!r}")
            payload = json.loads(body or b"{}")
            result = getattr(self.server.backend, OPERATIONS[operation])(payload)
            self._send(200, result)
        except ApiError as exc:
            self._send(exc.status, {"__type": exc.code, "Message": exc.message, **exc.extra})
        except Exception as exc:  # noqa: BLE001 - a test server answers 500 like the service would
            self._send(500, {"__type": "InternalServerException", "Message": f"{type(exc).__name__}: {exc}"})

    def _authenticate(self, body: bytes) -> None:
        """Check the SigV4 signature with the secret of the key it names, as AWS does."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        match = AUTH.match(self.headers.get("Authorization", ""))
        if not match:
            raise ApiError("MissingAuthenticationTokenException", "Missing Authentication Token", 400)
        key, _date, region, service, signed, signature = match.groups()
        secret = self.server.keys.get(key)
        if secret is None:
            raise ApiError("UnrecognizedClientException", "The security token included in the request is invalid.")
        headers = {name: self.headers.get(name, "") for name in signed.split(";")}
        request = AWSRequest(method="POST", url=f"http://{self.headers.get('Host')}{self.path}", data=body, headers=headers)
        request.context["timestamp"] = self.headers.get("X-Amz-Date", "")
        signer = SigV4Auth(Credentials(key, secret, self.headers.get("X-Amz-Security-Token")), service, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if expected != signature:
            raise ApiError(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)


class DataApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, backend: Backend, keys: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.backend = backend
        self.keys = keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--workgroup", action="append", default=[])
    parser.add_argument("--cluster", action="append", default=[])
    parser.add_argument("--key", action="append", default=[], help="ACCESS_KEY_ID:SECRET")
    args = parser.parse_args()
    keys = dict(k.split(":", 1) for k in args.key)
    server = DataApiServer(args.port, Backend(args.dsn, set(args.workgroup), set(args.cluster)), keys)
    server.serve_forever()


if __name__ == "__main__":
    main()
