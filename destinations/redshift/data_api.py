"""The Redshift Data API path (boto3 `redshift-data`): serverless workgroups and provisioned
clusters, over HTTPS with IAM, no network path to the cluster needed.

Inserts go one `ExecuteStatement` per statement (each under the 100 KB limit), all
submitted before any is awaited, then polled with `DescribeStatement` (backoff, overall
timeout). Each statement carries a `ClientToken` derived from its text and parameters,
and this process remembers each statement's id: a write retried after a timeout polls the
statement it already submitted instead of inserting the rows twice. DDL goes in one
`BatchExecuteStatement`, which runs as a single transaction.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore import exceptions as bx

from core import green
from destinations import aws
from destinations.base import LazyClient, PermanentError, TransientError
from destinations.redshift.errors import MissingTable, classify, safe_message
from destinations.redshift.sql import Statement, data_api_placeholder

if TYPE_CHECKING:
    from destinations.redshift.config import RedshiftConfig

#: The Data API refuses SQL over 100 KB. Text and parameters together stay under this, so
#: the limit holds however AWS counts the parameters.
STATEMENT_BYTES = 96_000
TRANSIENT_CODES = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "ActiveStatementsExceededException",
    "ActiveSessionsExceededException",
    "ActiveWaitingRequestsExceededException",
    "InternalServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "DatabaseConnectionException",
    "ExecuteStatementException",
    "BatchExecuteStatementException",
    "QueryTimeoutException",
    "RequestTimeout",
    "RequestTimeoutException",
}
CREDENTIAL_CODES = {
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "AccessDeniedException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
}
DONE = {"FINISHED", "FAILED", "ABORTED"}
LEDGER_SIZE = 20_000
LEDGER_SECONDS = 3600.0


@dataclass
class Submitted:
    """One statement this process sent: its id, and what became of it."""

    id: str | None = None
    state: str = "new"  # new | pending | finished
    failures: int = 0
    at: float = 0.0


class Ledger:
    """Statements by content digest, so a retried write finds what it already sent."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Submitted] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> Submitted:
        now = time.monotonic()
        with self._lock:
            entry = self._items.get(digest)
            if entry is None or now - entry.at > LEDGER_SECONDS:
                entry = self._items[digest] = Submitted(at=now)
            self._items.move_to_end(digest)
            while len(self._items) > LEDGER_SIZE:
                self._items.popitem(last=False)
            return entry


def digest(statement: Statement) -> str:
    body = json.dumps([statement.sql, statement.params], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class DataApi:
    placeholder = staticmethod(data_api_placeholder)
    statement_bytes = STATEMENT_BYTES

    def __init__(self, config: RedshiftConfig) -> None:
        self.config = config
        self._client = LazyClient(self._make_client)
        self.ledger = Ledger()

    # -- plumbing -----------------------------------------------------------------------------
    def _make_client(self) -> Any:
        c = self.config
        return aws.client(
            "redshift-data",
            region=c.region,
            endpoint_url=c.endpoint_url,
            access_key_id=c.access_key_id,
            secret_access_key=c.secret_access_key,
            session_token=c.session_token,
        )

    def target(self) -> dict[str, str]:
        c = self.config
        out = {"Database": c.database}
        if c.workgroup:
            out["WorkgroupName"] = c.workgroup
        else:
            out["ClusterIdentifier"] = c.cluster_identifier  # type: ignore[assignment]
            if c.db_user and not c.secret_arn:
                out["DbUser"] = c.db_user
        if c.secret_arn:
            out["SecretArn"] = c.secret_arn
        return out

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        where = f"redshift {operation} ({self.config.where})"
        try:
            yield
        except bx.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            message = safe_message(str(error.get("Message", "")))
            if code in TRANSIENT_CODES or status == 429 or status >= 500:
                raise TransientError(f"{where}: {code}: {message}") from None
            if code in CREDENTIAL_CODES or status == 403:
                raise PermanentError(f"{where}: credentials or permissions refused: {code}") from None
            raise PermanentError(f"{where}: {code}: {message}") from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError, bx.NoRegionError, bx.ParamValidationError) as exc:
            raise PermanentError(f"{where}: {type(exc).__name__}: {safe_message(str(exc))}") from None
        except (bx.BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise TransientError(f"{where}: {type(exc).__name__}") from None

    def _client_call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        client = self._client.get()
        with self._errors(operation):
            return getattr(client, operation)(**kwargs)

    def _wait(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Poll DescribeStatement with backoff until every id is done or the poll timeout
        passes (a TransientError: the statements keep running, and a retry polls them again)."""
        results: dict[str, dict[str, Any]] = {}
        pending = list(dict.fromkeys(ids))
        delay = self.config.poll_initial_seconds
        until = time.monotonic() + self.config.poll_timeout_seconds
        while True:
            for statement_id in list(pending):
                described = self._client_call("describe_statement", Id=statement_id)
                if described.get("Status") in DONE:
                    results[statement_id] = described
                    pending.remove(statement_id)
            if not pending:
                return results
            if time.monotonic() + delay > until:
                raise TransientError(
                    f"redshift ({self.config.where}): {len(pending)} statements still running after "
                    f"{self.config.poll_timeout_seconds:g}s"
                )
            green.sleep(delay)
            delay = min(delay * 1.6, self.config.poll_max_seconds)

    def _raise_failed(self, described: dict[str, Any]) -> None:
        """A FAILED or ABORTED statement that is not a row's fault."""
        error = str(described.get("Error") or described.get("Status"))
        kind = classify(None, error)
        if kind == "missing":
            raise MissingTable(safe_message(error))
        message = f"redshift ({self.config.where}): statement {described.get('Status', '').lower()}: {safe_message(error)}"
        if kind == "transient" or described.get("Status") == "ABORTED":
            raise TransientError(message)
        raise PermanentError(message)

    # -- what the sink calls ------------------------------------------------------------------
    def run(self, statements: list[Statement]) -> list[str | None]:
        """Run INSERTs (each its own transaction). Returns, per statement, None when its rows
        are stored or the reason a value in it was refused; raises for anything else."""
        entries: list[tuple[Submitted, str]] = []
        for statement in statements:
            key = digest(statement)
            entry = self.ledger.get(key)
            if entry.state == "new":
                params = [{"name": f"v{i}", "value": value} for i, value in enumerate(statement.params)]
                reply = self._client_call(
                    "execute_statement",
                    Sql=statement.sql,
                    ClientToken=f"{key[:56]}-{entry.failures}",
                    **({"Parameters": params} if params else {}),
                    **self.target(),
                )
                entry.id, entry.state = reply["Id"], "pending"
            entries.append((entry, key))
        done = self._wait([e.id for e, _ in entries if e.state == "pending" and e.id])
        outcomes: list[str | None] = []
        failure: Exception | None = None
        for entry, _key in entries:
            if entry.state == "finished":
                outcomes.append(None)
                continue
            described = done[entry.id]  # type: ignore[index]
            if described["Status"] == "FINISHED":
                entry.state = "finished"
                outcomes.append(None)
                continue
            entry.state, entry.failures = "new", entry.failures + 1  # a retry submits it afresh
            error = str(described.get("Error") or "")
            if described["Status"] == "FAILED" and classify(None, error) == "data":
                outcomes.append(safe_message(error))
                continue
            outcomes.append("")
            try:
                self._raise_failed(described)
            except Exception as exc:  # noqa: BLE001 - settle every statement first, then raise the first failure
                failure = failure or exc
        if failure is not None:
            raise failure
        return outcomes

    def batch(self, sqls: list[str]) -> None:
        """Statements without values (DDL) in one BatchExecuteStatement: one transaction."""
        for start in range(0, len(sqls), 40):  # the API's limit per batch
            reply = self._client_call("batch_execute_statement", Sqls=sqls[start : start + 40], **self.target())
            described = self._wait([reply["Id"]])[reply["Id"]]
            if described["Status"] != "FINISHED":
                failed = [s for s in described.get("SubStatements", []) if s.get("Status") == "FAILED"]
                self._raise_failed(failed[0] if failed else described)

    def query(self, sql: str, params: list[str]) -> list[list[Any]]:
        """A SELECT's rows, read with GetStatementResult page by page."""
        parameters = [{"name": f"v{i}", "value": value} for i, value in enumerate(params)]
        extra = {"Parameters": parameters} if parameters else {}
        reply = self._client_call("execute_statement", Sql=sql, **extra, **self.target())
        described = self._wait([reply["Id"]])[reply["Id"]]
        if described["Status"] != "FINISHED":
            self._raise_failed(described)
        rows: list[list[Any]] = []
        token: str | None = None
        while True:
            page = self._client_call("get_statement_result", Id=reply["Id"], **({"NextToken": token} if token else {}))
            rows.extend([field_value(f) for f in record] for record in page.get("Records", []))
            token = page.get("NextToken")
            if not token:
                return rows

    def close(self) -> None:
        self._client.close()


def field_value(field: dict[str, Any]) -> Any:
    """One Data API `Field` (a union) as a Python value."""
    if field.get("isNull"):
        return None
    for key in ("stringValue", "longValue", "doubleValue", "booleanValue", "blobValue"):
        if key in field:
            return field[key]
    return None
