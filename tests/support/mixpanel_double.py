"""A recording test double of Mixpanel's ingestion API and CDN (no emulator exists).

It decodes requests the way Mixpanel documents them (form `data=` JSON or base64,
JSON bodies, NDJSON and gzip on /import), validates what Mixpanel validates at the
edge (token, event name, distinct id, /import auth) and answers in Mixpanel's
documented shapes: `1`/`0`, verbose `{"status":..,"error":..}`, /import
`{"code":200,"num_records_imported":N,"status":"OK"}`. Tests can make it fail
(status codes, delays, connection drops) and read back everything it received.

Run standalone: `python -m tests.support.mixpanel_double --port 8088`.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

LIB_BODY = b"/* mixpanel library served by the test double */ window.__mp_double = true;\n"


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    records: list[Any] = field(default_factory=list)


@dataclass
class Behaviour:
    status: int | None = None  # force this status for ingest calls
    times: int = 0  # how many calls the forced status applies to (0 = forever)
    delay: float = 0.0  # seconds before answering
    reject: bool = False  # answer status 0 (Mixpanel's "invalid data")


class MixpanelDouble:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.received: list[Received] = []
        self.behaviour = Behaviour()
        self._lock = threading.Lock()
        # Calls being answered right now, and the most at once since the last reset().
        self.in_flight = 0
        self.peak_in_flight = 0
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with double._answering():
                    double._handle(self)

            def do_POST(self) -> None:
                with double._answering():
                    double._handle(self)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> MixpanelDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @contextmanager
    def _answering(self) -> Iterator[None]:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self.behaviour = Behaviour()
            self.peak_in_flight = self.in_flight

    def records(self, endpoint: str) -> list[Any]:
        with self._lock:
            return [r for req in self.received if req.path.strip("/") == endpoint for r in req.records]

    def requests(self, endpoint: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if endpoint is None or r.path.strip("/").startswith(endpoint)]

    # -- decoding as Mixpanel documents it ----------------------------------------------
    @staticmethod
    def decode(headers: dict[str, str], body: bytes, query: dict[str, str]) -> list[Any]:
        if headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        text = body.decode("utf-8").strip()
        if text[:1] in "[{":
            try:
                value = json.loads(text)
            except ValueError:
                value = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            form = dict(parse_qsl(text, keep_blank_values=True))
            data = form.get("data", query.get("data", ""))
            value = json.loads(data) if data[:1] in "[{" else json.loads(base64.b64decode(data + "=" * (-len(data) % 4)))
        return value if isinstance(value, list) else [value]

    @staticmethod
    def judge(endpoint: str, record: Any) -> str | None:
        if not isinstance(record, dict):
            return "record is not an object"
        if endpoint in ("track", "import"):
            props = record.get("properties")
            if not record.get("event"):
                return "'event' must be a non-empty string"
            if not isinstance(props, dict):
                return "'properties' must be an object"
            if endpoint == "track" and not props.get("token"):
                return "token, missing or empty"
            return None
        if not record.get("$token"):
            return "$token, missing or empty"
        if endpoint == "engage" and "$distinct_id" not in record:
            return "$distinct_id, missing or empty"
        if endpoint == "groups" and not ("$group_key" in record and "$group_id" in record):
            return "$group_key and $group_id are required"
        return None

    @staticmethod
    def _insert_id(record: Any) -> Any:
        props = record.get("properties") if isinstance(record, dict) else None
        return props.get("$insert_id") if isinstance(props, dict) else None

    # -- HTTP ----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in h.headers.items()}
        body = h.rfile.read(int(headers.get("content-length") or 0))
        endpoint = path.strip("/").split("/")[0]
        entry = Received(h.command, path, query, headers, body)

        if path.endswith(".js"):
            with self._lock:
                self.received.append(entry)  # so tests can see how often the CDN is asked
            return self._send(h, 200, LIB_BODY, "application/javascript")
        with self._lock:
            behaviour = self.behaviour
            forced = behaviour.status
            if forced and behaviour.times:
                behaviour.times -= 1
                if behaviour.times == 0:
                    self.behaviour = Behaviour(delay=behaviour.delay, reject=behaviour.reject)
        if behaviour.delay:
            time.sleep(behaviour.delay)
        if forced:
            with self._lock:
                self.received.append(entry)
            return self._send(h, forced, b'{"error":"forced by test"}', "application/json")

        if endpoint in ("track", "engage", "groups", "import"):
            try:
                entry.records = self.decode(headers, body, query)
            except (ValueError, OSError):
                with self._lock:
                    self.received.append(entry)
                return self._json(h, 400, {"status": 0, "error": "unable to decode data"})
            with self._lock:
                self.received.append(entry)
            if endpoint == "import":
                if not headers.get("authorization", "").startswith("Basic "):
                    return self._json(h, 401, {"code": 401, "error": "Unauthorized", "status": 0})
                failed = [
                    {"index": i, "insert_id": self._insert_id(r), "field": "event", "message": err}
                    for i, r in enumerate(entry.records)
                    if (err := self.judge(endpoint, r))
                ]
                if failed:
                    return self._json(
                        h,
                        400,
                        {
                            "code": 400,
                            "error": "some data points in the request failed validation",
                            "failed_records": failed,
                            "num_records_imported": len(entry.records) - len(failed),
                            "status": "Bad Request",
                        },
                    )
                return self._json(h, 200, {"code": 200, "num_records_imported": len(entry.records), "status": "OK"})
            errors = [e for r in entry.records if (e := self.judge(endpoint, r))]
            ok = not errors and not behaviour.reject
            if query.get("verbose") == "1":
                error = None if ok else (errors[0] if errors else "rejected by test")
                return self._json(h, 200, {"status": 1 if ok else 0, "error": error})
            return self._send(h, 200, b"1" if ok else b"0", "text/plain")

        with self._lock:
            self.received.append(entry)
        if endpoint in ("flags", "decide", "settings"):
            return self._json(h, 200, {"flags": {}, "echo_auth": headers.get("authorization", "")})
        if endpoint == "record":
            return self._json(h, 200, {"code": 200, "status": "OK"})
        return self._json(h, 404, {"error": "not found"})

    def _json(self, h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        self._send(h, status, json.dumps(payload).encode(), "application/json")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    args = parser.parse_args()
    double = MixpanelDouble(args.host, args.port)
    print(f"Mixpanel double listening on {double.url}", flush=True)
    double.server.serve_forever()


if __name__ == "__main__":
    main()
