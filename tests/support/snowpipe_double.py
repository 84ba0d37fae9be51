"""A test double of Snowpipe's REST API (no local stand-in implements it).

Faithful to the documented endpoints:
  POST /v1/data/pipes/<db.schema.pipe>/insertFiles?requestId=   body {"files": [{"path": ...}]}
       -> 200 {"requestId": ..., "responseCode": "SUCCESS"}; the load then runs asynchronously
  GET  /v1/data/pipes/<db.schema.pipe>/insertReport?requestId=[&beginMark=]
       -> 200 {"pipe", "completeResult", "nextBeginMark", "files": [{"path", "stageLocation",
          "fileSize", "timeReceived", "lastInsertTime", "rowsInserted", "rowsParsed",
          "errorsSeen", "errorLimit", "firstError", "complete", "status"}], "statistics"}
Every request needs `Authorization: Bearer <JWT>` signed RS256 by the user's key, with
iss `ACCOUNT.USER.SHA256:<public key fingerprint>`, sub `ACCOUNT.USER`, and an expiry at
most an hour after issue; else 401 (code 390144). An unknown pipe is 404. A path the pipe
already loaded is skipped, as Snowpipe's load history does.

What Snowflake does with the file (the pipe's COPY) is the test's `load(pipe, path)`
callback: it returns the rows loaded or raises to report LOAD_FAILED with its message.
`hold` keeps new loads LOAD_IN_PROGRESS until released.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from destinations.snowpipe import jwt_subject


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class SnowpipeDouble:
    account: str
    user: str
    public_key: RSAPublicKey
    fingerprint: str
    load: Callable[[str, str], int]
    pipes: set[str] = field(default_factory=set)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.hold.set()  # released: loads run at once
        self._lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                double._handle(self, "POST")

            def do_GET(self) -> None:
                double._handle(self, "GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> SnowpipeDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()

    # -- the API
    def _authorised(self, header: str) -> bool:
        if not header.startswith("Bearer "):
            return False
        subject = jwt_subject(self.account, self.user)
        try:
            claims = jwt.decode(
                header[7:], self.public_key, algorithms=["RS256"], options={"require": ["iss", "sub", "iat", "exp"]}
            )
        except jwt.PyJWTError:
            return False
        return (
            claims["sub"] == subject
            and claims["iss"] == f"{subject}.{self.fingerprint}"
            and claims["exp"] - claims["iat"] <= 3600
        )

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        segments = parts.path.strip("/").split("/")
        query = dict(parse_qsl(parts.query))
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        if len(segments) != 5 or segments[:3] != ["v1", "data", "pipes"] or "requestId" not in query:
            return self._reply(handler, 400, {"code": "390400", "message": "bad request"})
        pipe, endpoint = unquote(segments[3]), segments[4]
        if not self._authorised(handler.headers.get("Authorization", "")):
            return self._reply(handler, 401, {"code": "390144", "message": "JWT token is invalid."})
        if pipe not in self.pipes:
            return self._reply(handler, 404, {"code": "390404", "message": f"Specified object does not exist: {pipe}"})
        with self._lock:
            self.calls.append((endpoint, pipe))
        if method == "POST" and endpoint == "insertFiles":
            files = json.loads(body or b"{}").get("files")
            if not isinstance(files, list) or not files or not all(isinstance(f, dict) and f.get("path") for f in files):
                return self._reply(handler, 400, {"code": "390400", "message": "files is required"})
            for item in files:
                self._accept(pipe, item["path"])
            return self._reply(handler, 200, {"requestId": query["requestId"], "responseCode": "SUCCESS"})
        if method == "GET" and endpoint == "insertReport":
            with self._lock:
                entries = [dict(e) for e in self.history.get(pipe, [])]
            return self._reply(
                handler,
                200,
                {
                    "pipe": pipe,
                    "completeResult": True,
                    "nextBeginMark": str(len(entries)),
                    "files": entries,
                    "statistics": {"activeFilesCount": sum(1 for e in entries if not e["complete"])},
                },
            )
        return self._reply(handler, 405, {"code": "390405", "message": "method not allowed"})

    def _accept(self, pipe: str, path: str) -> None:
        with self._lock:
            entries = self.history.setdefault(pipe, [])
            if any(e["path"] == path and e["status"] == "LOADED" for e in entries):
                return  # load history: never the same file twice
            entry = {
                "path": path,
                "stageLocation": "internal",
                "fileSize": 0,
                "timeReceived": _now(),
                "lastInsertTime": None,
                "rowsInserted": 0,
                "rowsParsed": 0,
                "errorsSeen": 0,
                "errorLimit": 1,
                "firstError": None,
                "complete": False,
                "status": "LOAD_IN_PROGRESS",
            }
            entries.append(entry)
        threading.Thread(target=self._run_load, args=(pipe, path, entry), daemon=True).start()

    def _run_load(self, pipe: str, path: str, entry: dict[str, Any]) -> None:
        self.hold.wait()
        try:
            rows = self.load(pipe, path)
            update = {"status": "LOADED", "rowsInserted": rows, "rowsParsed": rows}
        except Exception as exc:  # noqa: BLE001 - reported as Snowpipe reports a failed file
            update = {"status": "LOAD_FAILED", "errorsSeen": 1, "firstError": str(exc).splitlines()[0][:200]}
        with self._lock:
            entry.update(update, complete=True, lastInsertTime=_now())

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)
