"""Snowpipe loads for the snowflake destination: PUT the rows to the stage, call the
Snowpipe REST API's `insertFiles`, and count them written only once `insertReport` says
Snowflake LOADED them.

Reads: SNOWFLAKE_PIPE (pipes are `<pipe>_<TABLE>`, one per table), SNOWFLAKE_STAGE,
SNOWFLAKE_PRIVATE_KEY (+ SNOWFLAKE_PRIVATE_KEY_PASSPHRASE), SNOWFLAKE_ACCOUNT,
SNOWFLAKE_USER, SNOWFLAKE_REGION and SNOWFLAKE_PROVIDER (the account URL when no access
URL is set), SNOWFLAKE_PIPE_URL (the REST API's base URL, default the account URL),
SNOWFLAKE_PIPE_CREATE (default true: setup() creates missing pipes; false when they are
managed elsewhere), SNOWFLAKE_PIPE_WAIT_SECONDS (default 120: how long a write waits for
the load to be confirmed).

A file's name is the hash of its content, so a retried write sends the same file again:
Snowpipe's load history skips it, and the write finds the earlier load in insertReport.
A file Snowflake fails to load (a value a column refuses; pipes skip the whole file)
goes the insert path's way, which rejects only the refused rows.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote as url_quote

import jwt
import requests
from cryptography.hazmat.primitives import serialization

from core import green
from core.retry import http_status_error
from core.settings import Settings
from destinations.base import PermanentError, SinkResult, TransientError
from destinations.schema import TableSchema

# The sink (destinations/snowflake.py) owns the SQL: this module calls back into it for
# PUT, REMOVE and the insert path, and never imports it (no import cycle).
SnowflakeSink = Any
SnowflakeConfig = Any

log = logging.getLogger(__name__)
TOKEN_SECONDS = 3540  # Snowflake accepts key-pair JWTs that expire within an hour
FINAL = {"LOADED", "LOAD_FAILED", "PARTIALLY_LOADED"}


def key_fingerprint(private_key_der: bytes) -> str:
    """`SHA256:<base64 of the public key's DER>`, as Snowflake shows in DESC USER (RSA_PUBLIC_KEY_FP)."""
    key = serialization.load_der_private_key(private_key_der, None)
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + base64.b64encode(hashlib.sha256(public).digest()).decode()


def jwt_subject(account: str, user: str) -> str:
    """`ACCOUNT.USER`: the account identifier without region or cloud, upper-cased."""
    return f"{account.split('.')[0].upper()}.{user.upper()}"


@dataclass
class Snowpipe:
    base_url: str
    account: str
    user: str
    pipe: tuple[str, str, str]
    wait_seconds: float = 120.0
    create: bool = True
    private_key: bytes = field(default=b"", repr=False)
    _token: tuple[str, float] | None = field(default=None, repr=False)
    _http: requests.Session = field(default_factory=requests.Session, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, config: SnowflakeConfig) -> Snowpipe:
        assert config.pipe is not None and config.private_key is not None
        base = settings.get("snowflake_pipe_url")
        if not base and config.host:
            port = "" if config.port in (None, 443 if config.protocol == "https" else 80) else f":{config.port}"
            base = f"{config.protocol}://{config.host}{port}"
        if not base:
            region, provider = settings.get("snowflake_region"), settings.get("snowflake_provider")
            host = ".".join(p for p in (config.account, region, provider) if p)
            base = f"https://{host}.snowflakecomputing.com"
        return cls(
            base_url=base.rstrip("/"),
            account=config.account,
            user=config.user,
            pipe=config.pipe,
            wait_seconds=settings.get_float("snowflake_pipe_wait_seconds", 120.0, 1),
            create=settings.get_bool("snowflake_pipe_create", True),
            private_key=config.private_key,
        )

    # -- names and DDL
    def pipe_for(self, table: TableSchema) -> tuple[str, str, str]:
        database, schema, name = self.pipe
        return database, schema, f"{name}_{table.name.upper()}"

    # -- the REST API
    def token(self) -> str:
        now = time.time()
        if self._token is None or self._token[1] - now < 300:
            key = serialization.load_der_private_key(self.private_key, None)
            subject = jwt_subject(self.account, self.user)
            claims = {"iss": f"{subject}.{key_fingerprint(self.private_key)}", "sub": subject}
            claims.update(iat=int(now), exp=int(now) + TOKEN_SECONDS)
            self._token = (jwt.encode(claims, key, algorithm="RS256"), now + TOKEN_SECONDS)  # type: ignore[arg-type]
        return self._token[0]

    def _call(self, method: str, pipe: tuple[str, str, str], endpoint: str, **kwargs: Any) -> dict[str, Any]:
        url = f"{self.base_url}/v1/data/pipes/{url_quote('.'.join(pipe), safe='.')}/{endpoint}"
        headers = {
            "Authorization": f"Bearer {self.token()}",
            "X-Snowflake-Authorization-Token-Type": "KEYPAIR_JWT",
            "Accept": "application/json",
        }
        params = {"requestId": str(uuid.uuid4()), **kwargs.pop("params", {})}
        try:
            reply = self._http.request(method, url, headers=headers, params=params, timeout=(5, 30), **kwargs)
        except requests.RequestException as exc:
            raise TransientError(f"snowpipe {endpoint}: {type(exc).__name__}") from None
        if reply.status_code != 200:
            retry_after = reply.headers.get("Retry-After")
            code = _json(reply).get("code") or ""
            raise http_status_error(
                reply.status_code,
                f"snowpipe {endpoint} on {'.'.join(pipe)}: HTTP {reply.status_code} {code}".strip(),
                float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        return _json(reply)

    def insert_files(self, pipe: tuple[str, str, str], paths: list[str]) -> None:
        body = self._call("POST", pipe, "insertFiles", json={"files": [{"path": p} for p in paths]})
        if body.get("responseCode") != "SUCCESS":
            raise TransientError(f"snowpipe insertFiles on {'.'.join(pipe)}: {body.get('responseCode')}")

    def report(self, pipe: tuple[str, str, str], path: str) -> dict[str, Any] | None:
        """The latest insertReport entry for `path` (the report covers the last 10 minutes)."""
        body = self._call("GET", pipe, "insertReport")
        entries = [f for f in body.get("files") or [] if f.get("path") == path]
        return entries[-1] if entries else None

    def wait(self, pipe: tuple[str, str, str], path: str) -> dict[str, Any] | None:
        """Poll insertReport until the file's load is final, or `wait_seconds` pass."""
        deadline = time.monotonic() + self.wait_seconds
        pause = 0.5
        while True:
            entry = self.report(pipe, path)
            if entry and entry.get("complete", True) and entry.get("status") in FINAL:
                return entry
            if time.monotonic() + pause > deadline:
                return entry
            green.sleep(pause)
            pause = min(pause * 1.5, 5.0)

    # -- a write
    def write(self, sink: SnowflakeSink, table: TableSchema, lines: list[bytes]) -> SinkResult:
        pipe = self.pipe_for(table)
        body = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=6, mtime=0)
        path = hashlib.sha256(body).hexdigest()[:40] + ".json.gz"
        entry = self.report(pipe, path)  # a retry: Snowflake may have loaded it already
        if not (entry and entry.get("status") in FINAL):
            sink.put(table.name, path, body)
            self.insert_files(pipe, [path])
            entry = self.wait(pipe, path)
        status = (entry or {}).get("status")
        if status is None or status not in FINAL:
            raise TransientError(f"snowpipe: load of {path} not confirmed within {self.wait_seconds:g}s ({status or 'not seen'})")
        if status == "LOADED" and int(entry.get("rowsInserted", -1)) == len(lines):  # type: ignore[union-attr]
            self._remove(sink, table, path)
            return SinkResult(len(lines))
        inserted = int(entry.get("rowsInserted") or 0)  # type: ignore[union-attr]
        if inserted:
            raise PermanentError(
                f"snowpipe: {path} {status} with {inserted} of {len(lines)} rows: the pipe must use ON_ERROR = SKIP_FILE"
            )
        log.info("snowpipe: %s %s (%s); loading its rows by INSERT", path, status, entry.get("firstError"))  # type: ignore[union-attr]
        self._remove(sink, table, path)
        return sink.insert(table, lines)

    def _remove(self, sink: SnowflakeSink, table: TableSchema, path: str) -> None:
        # Best effort: a leftover file costs storage only (Snowpipe never loads a file twice).
        sink.remove_staged(table.name, path)

    def close(self) -> None:
        self._http.close()


def _json(reply: requests.Response) -> dict[str, Any]:
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
