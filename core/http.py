"""Keep-alive HTTP/1.1 connections to one origin, on the standard library's http.client.

Mixpanel forwarding makes one upstream call per SDK request, so the client's own CPU is
on every request's path. http.client is the HTTP/1.1 implementation urllib3 itself is
built on; used directly, with connections kept here, a call costs well under half of
urllib3's (`python -m bench.micro`: 173-175 against 375-463 µs of CPU per call). urllib3 stays
for what this pool does not do: outbound proxies (destinations/mixpanel.py).

Cooperative under gevent once the worker is monkey-patched (sockets, ssl and select are
gevent's then), thread-safe without it (serverless handlers). A connection goes back to
the pool only after a whole response was read from it; one interrupted by anything (an
error, a gevent Timeout from the caller's deadline, a killed greenlet) is closed, never
reused with half a response in it.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi

from core import green

# The real select, even after monkey-patching: the liveness probe must not yield to the hub.
_select = green.unpatched("select", "select")

# Errors that mean "this exchange failed, the server may be fine": the caller retries.
ERRORS = (http.client.HTTPException, OSError)


@dataclass(frozen=True)
class Response:
    """An answer read whole: status, headers (case-insensitive lookups) and body."""

    status: int
    headers: Mapping[str, str]
    content: bytes


class ConnectionPool:
    """Idle connections to `base_url`'s origin, most recently used first. There is no cap on
    connections in use (a request never waits for a connection); at most `max_idle` are kept
    between requests, and one idle longer than `idle_seconds` is closed rather than reused."""

    def __init__(
        self,
        base_url: str,
        *,
        max_idle: int = 128,
        idle_seconds: float = 60.0,
        headers: Mapping[str, str] | None = None,
        ca_file: str | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self.headers = dict(headers or {})
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()
        self.ca_file = ca_file or certifi.where()  # the CA bundle requests and urllib3 use, not the image's
        self._context: ssl.SSLContext | None = None
        self._closed = False

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Response:
        """One exchange; raises one of ERRORS when it fails (nothing is retried here)."""
        conn = self._checkout(connect_timeout)
        try:
            if conn.sock is None:
                conn.connect()  # a fresh connection, under the connect timeout it was made with
            conn.sock.settimeout(read_timeout)
            conn.request(method, target, body=body, headers={**self.headers, **(headers or {})})
            response = conn.getresponse()
            content = response.read()
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            self._checkin(conn)
        return Response(response.status, response.msg, content)

    def _checkout(self, connect_timeout: float) -> http.client.HTTPConnection:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    break
                since, conn = self._idle.pop()
            if now - since <= self.idle_seconds and _alive(conn):
                return conn
            conn.close()
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=connect_timeout, context=self._ssl())
        return http.client.HTTPConnection(self.host, self.port, timeout=connect_timeout)

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append((time.monotonic(), conn))
                return
        conn.close()

    def _ssl(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl.create_default_context(cafile=self.ca_file)
        return self._context

    def close(self) -> None:
        """Close the idle connections; ones in use are closed when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()


def _alive(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle keep-alive connection is still usable: readable means the server
    closed it (or sent something unasked), either way it must not carry a request."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = _select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
