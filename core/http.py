"""Keep-alive HTTP/1.1 connections to one origin: requests written by hand, responses read
by httptools (llhttp, the C parser Node.js and uvicorn use).

Mixpanel forwarding makes one upstream call per SDK request, so the client's own CPU is
on every request's path. The standard library's http.client, which urllib3 is built on,
parses every response's headers with the `email` package and reads through a buffered
file object: measured on the nginx Mixpanel double (`python -m bench.micro`), 225-240 µs of
CPU per call against 29-47 µs for the same exchange written here, and urllib3 costs more
still. urllib3 stays for what this pool does not do: outbound proxies (destinations/mixpanel.py).

What the request says is what http.client says for the same call: `Host`,
`Accept-Encoding: identity` and `Content-Length` (0 for a POST, PUT or PATCH without a
body) unless the caller gave them, header names and values checked the same way (a
ValueError for one that would split the request), the target refused when it holds
spaces or control characters. The body goes in the same send as the head (no Nagle
delay). Responses may use Content-Length, chunked framing or end with the connection;
1xx answers are skipped; a HEAD answer ends with its headers. Anything malformed, and a
connection that ends early, raise `ProtocolError` (an `http.client.HTTPException`).

Cooperative under gevent once the worker is monkey-patched (sockets, ssl and select are
gevent's then), thread-safe without it (serverless handlers). A connection goes back to
the pool only after a whole response was read from it and the server did not ask to
close it; one interrupted by anything (an error, a gevent Timeout from the caller's
deadline, a killed greenlet) is closed, never reused with half a response in it.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import httptools

from core import green

# The real select, even after monkey-patching: the liveness probe must not yield to the hub.
_select = green.unpatched("select", "select")

MAX_HEAD_BYTES = 64 * 1024  # a response's status line and headers (http.client: 100 lines of 64 KiB)
RECV_BYTES = 64 * 1024
BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))  # http.client sends Content-Length: 0 for these without a body
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch  # a header name (RFC 9110 token)
_BAD_VALUE = re.compile(r"[\r\n\x00]").search
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]").search


class ProtocolError(http.client.HTTPException):
    """The server's answer was not well-formed HTTP/1.1, or ended before it was whole."""


# Errors that mean "this exchange failed, the server may be fine": the caller retries.
ERRORS = (http.client.HTTPException, OSError)


class Headers(Mapping[str, str]):
    """A response's headers: lookups ignore case, a repeated header answers its first value."""

    __slots__ = ("_first", "_names")

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._first: dict[str, str] = {}
        self._names: dict[str, str] = {}  # lower-case -> the name as the server spelt it first
        for name, value in pairs:
            key = name.lower()
            if key not in self._first:
                self._first[key] = value
                self._names[key] = name

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._first)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


@dataclass(frozen=True)
class Response:
    """An answer read whole: status, headers (case-insensitive lookups) and body."""

    status: int
    headers: Mapping[str, str]
    content: bytes


class _Reading:
    """httptools' callbacks for one response (the parser calls these by name)."""

    __slots__ = ("parser", "head", "status", "pairs", "body", "head_bytes", "headers_done", "done", "keep_alive")

    def __init__(self, head: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head = head  # a HEAD request: the answer ends with its headers
        self.status = 0
        self.pairs: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.head_bytes = 0
        self.headers_done = False
        self.done = False
        self.keep_alive = False  # read while the parser knows (it forgets once the message is over)

    def on_message_begin(self) -> None:  # again after a 1xx answer
        self.pairs, self.body, self.headers_done = [], [], False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.pairs.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        if self.head and self.status >= 200:
            self.done = True
            self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.done = True
            self.keep_alive = self.parser.should_keep_alive()

    def feed(self, data: bytes) -> None:
        if not self.headers_done:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                raise ProtocolError(f"response headers exceed {MAX_HEAD_BYTES} bytes")
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise ProtocolError("the server switched protocols") from None
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"malformed response: {exc}") from None

    def ended(self) -> None:
        """At the end of the connection: that ends an answer framed by neither Content-Length
        nor chunked encoding; any other answer it cut short raises."""
        names = {name.lower() for name, _ in self.pairs}
        if self.headers_done and self.status >= 200 and "content-length" not in names and "transfer-encoding" not in names:
            self.done = True
            return
        raise ProtocolError("the server closed the connection before the response was complete")


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
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        self.host_header = host if self.port == (443 if self.scheme == "https" else 80) else f"{host}:{self.port}"
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self.headers = dict(headers or {})
        self._idle: list[tuple[float, socket.socket]] = []
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
        """One exchange; raises one of ERRORS when it fails (nothing is retried here), and
        ValueError for a header or target http.client would refuse too."""
        message = self._message(method, target, body, {**self.headers, **(headers or {})})
        sock = self._checkout(connect_timeout)
        try:
            sock.settimeout(read_timeout)
            sock.sendall(message)
            reading = _Reading(head=method == "HEAD")
            while not reading.done:
                data = sock.recv(RECV_BYTES)
                if not data:
                    reading.ended()
                    break
                reading.feed(data)
            keep = reading.keep_alive
        except BaseException:
            sock.close()
            raise
        if keep:
            self._checkin(sock)
        else:
            sock.close()
        return Response(reading.status, Headers(reading.pairs), b"".join(reading.body))

    def _message(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        if not _TOKEN(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        if not target or _BAD_TARGET(target):
            raise http.client.InvalidURL(f"URL can't contain control characters: {target!r}")
        given = {name.lower() for name in headers}
        lines = [f"{method} {target} HTTP/1.1"]
        if "host" not in given:
            lines.append(f"Host: {self.host_header}")
        if "accept-encoding" not in given:
            lines.append("Accept-Encoding: identity")
        for name, value in headers.items():
            text = value if isinstance(value, str) else value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if not _TOKEN(name):
                raise ValueError(f"Invalid header name {name!r}")
            if _BAD_VALUE(text):
                raise ValueError(f"Invalid header value {text!r}")
            lines.append(f"{name}: {text}")
        if "content-length" not in given and "transfer-encoding" not in given:
            if body is not None:
                lines.append(f"Content-Length: {len(body)}")
            elif method in BODY_METHODS:
                lines.append("Content-Length: 0")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + body if body else head

    def _checkout(self, connect_timeout: float) -> socket.socket:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    break
                since, sock = self._idle.pop()
            if now - since <= self.idle_seconds and _alive(sock):
                return sock
            sock.close()
        sock = socket.create_connection((self.host, self.port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.scheme == "https":
                sock = self._ssl().wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _checkin(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append((time.monotonic(), sock))
                return
        sock.close()

    def _ssl(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl.create_default_context(cafile=self.ca_file)
        return self._context

    def close(self) -> None:
        """Close the idle connections; ones in use are closed when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _, sock in idle:
            sock.close()


def _alive(sock: socket.socket) -> bool:
    """Whether an idle keep-alive connection is still usable: readable means the server
    closed it (or sent something unasked), either way it must not carry a request."""
    try:
        readable, _, _ = _select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
