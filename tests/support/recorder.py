"""A recording HTTP proxy for tests: it sits between a client and a stand-in, keeps every
exchange (so a test asserts on what was really sent), and can be told to tamper with
chosen replies (a lost reply, a job that is still running).

    recorder = Recorder("http://127.0.0.1:9050").start()
    recorder.tamper(lambda ex: "insertAll" in ex.path, lose_reply, times=1)
    ... point the client at recorder.url ...
    recorder.stop()

Locations in replies (a resumable upload's session URL) are rewritten to point back at
the recorder, so follow-up requests are recorded too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


@dataclass
class Exchange:
    method: str
    path: str
    body: bytes
    status: int = 0
    reply: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    tampered: bool = False

    def json(self) -> Any:
        return json.loads(self.body)

    def reply_json(self) -> Any:
        return json.loads(self.reply)


# A tamper function gets the exchange after the upstream answered and returns the
# (status, body) to send instead.
Tamper = Callable[[Exchange], tuple[int, bytes]]


def lose_reply(exchange: Exchange) -> tuple[int, bytes]:
    """The request reached the service, its reply was lost: the client sees a 503."""
    return 503, b'{"error": {"code": 503, "message": "reply lost by the test recorder", "errors": [{"reason": "backendError"}]}}'


def still_running(exchange: Exchange) -> tuple[int, bytes]:
    """A job the service finished, reported as still running."""
    job = exchange.reply_json()
    job["status"] = {"state": "RUNNING"}
    job.get("statistics", {}).pop("endTime", None)
    return exchange.status, json.dumps(job).encode()


class Recorder:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._rules: list[list[Any]] = []  # [match, tamper, times left]
        self._lock = threading.Lock()
        self._session = requests.Session()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder._relay(self, body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def tamper(self, match: Callable[[Exchange], bool], tamper: Tamper, times: int = 1) -> None:
        with self._lock:
            self._rules.append([match, tamper, times])

    def matching(self, predicate: Callable[[Exchange], bool]) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if predicate(e)]

    def _relay(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        exchange = Exchange(handler.command, handler.path, body)
        try:
            reply = self._session.request(
                handler.command, self.upstream + handler.path, data=body, headers=headers, timeout=120, allow_redirects=False
            )
            exchange.status, exchange.reply = reply.status_code, reply.content
            exchange.headers = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
        except requests.RequestException as exc:
            exchange.status, exchange.reply = 502, json.dumps({"error": {"code": 502, "message": str(exc)}}).encode()
        for key, value in exchange.headers.items():
            if key.lower() == "location":
                exchange.headers[key] = value.replace(self.upstream, self.url)
        status, reply_body = exchange.status, exchange.reply
        with self._lock:
            for rule in self._rules:
                if rule[2] > 0 and rule[0](exchange):
                    rule[2] -= 1
                    status, reply_body = rule[1](exchange)
                    exchange.tampered = True
                    break
            self.exchanges.append(exchange)
        handler.send_response(status)
        for key, value in exchange.headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(reply_body)))
        handler.end_headers()
        handler.wfile.write(reply_body)
