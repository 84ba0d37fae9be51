"""core/http.py: the keep-alive pool Mixpanel calls go through, against real local servers."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.client import InvalidURL
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core import http
from tests.fixtures_core import self_signed_cert


class Origin:
    """An HTTP/1.1 server that echoes the path and records which connection served it.
    `/slow` answers after 1 s; `/drop` answers, then closes the connection without saying
    so (no `Connection: close`), as a server's idle timeout does between requests."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.connections: list[tuple[str, int]] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET()

            def do_GET(self) -> None:
                origin.connections.append(self.client_address)
                if self.path == "/slow":
                    time.sleep(1.0)
                body = self.path.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Echo", self.headers.get("X-Echo", ""))
                self.end_headers()
                self.wfile.write(body)
                if self.path == "/drop":
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def distinct_connections(self) -> int:
        return len(set(self.connections))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.stop()


def get(pool: http.ConnectionPool, path: str, read_timeout: float = 5.0) -> http.Response:
    return pool.request("GET", path, connect_timeout=5.0, read_timeout=read_timeout)


def test_calls_one_after_another_share_one_connection(origin: Origin) -> None:
    pool = http.ConnectionPool(origin.url)
    answers = [
        pool.request("POST", f"/n{i}", b"x" * 100, {"X-Echo": str(i)}, connect_timeout=5, read_timeout=5) for i in range(10)
    ]
    assert [(a.status, a.content, a.headers["x-echo"]) for a in answers] == [(200, f"/n{i}".encode(), str(i)) for i in range(10)]
    assert origin.distinct_connections() == 1


def test_a_connection_the_server_closed_while_idle_is_not_reused(origin: Origin) -> None:
    pool = http.ConnectionPool(origin.url)
    assert get(pool, "/drop").content == b"/drop"
    time.sleep(0.2)  # the server's FIN arrives while the connection sits idle in the pool
    assert get(pool, "/after").content == b"/after"  # no error: the closed connection was noticed, not used
    assert origin.distinct_connections() == 2


def test_an_interrupted_exchange_is_closed_so_no_later_call_reads_its_answer(origin: Origin) -> None:
    pool = http.ConnectionPool(origin.url)
    assert get(pool, "/first").content == b"/first"
    with pytest.raises(http.ERRORS):
        get(pool, "/slow", read_timeout=0.2)  # the answer to /slow is still on its way
    assert get(pool, "/next").content == b"/next"  # at once: not on the connection still owed an answer
    time.sleep(1.2)  # the answer to /slow has arrived now, on the interrupted connection
    assert get(pool, "/last").content == b"/last"  # not b"/slow": that connection was closed
    assert origin.distinct_connections() == 2


def test_idle_connections_beyond_the_cap_or_the_idle_time_are_closed(origin: Origin) -> None:
    pool = http.ConnectionPool(origin.url, max_idle=1, idle_seconds=0.1)
    assert get(pool, "/a").content == b"/a"
    time.sleep(0.3)  # idle longer than idle_seconds: closed rather than reused
    assert get(pool, "/b").content == b"/b"
    assert origin.distinct_connections() == 2
    pool.close()
    assert get(pool, "/c").content == b"/c"  # a closed pool still answers; it keeps nothing afterwards
    assert pool._idle == []


def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    server = Origin(tls=(cert, key))
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            get(http.ConnectionPool(server.url), "/")  # self-signed: not in certifi's bundle
        trusted = http.ConnectionPool(server.url, ca_file=str(cert))
        assert [get(trusted, f"/{i}").content for i in range(3)] == [b"/0", b"/1", b"/2"]
        assert server.distinct_connections() == 1
    finally:
        server.stop()


class Scripted:
    """A TCP server that answers each connection's requests with scripted raw bytes, one
    reply per request, and records what it received."""

    def __init__(self, replies: list[bytes], close_after: bool = False) -> None:
        self.replies = list(replies)
        self.close_after = close_after
        self.received: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while self.replies:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = re.search(rb"(?i)content-length: *(\d+)", head)
                    while length and len(rest) < int(length.group(1)):
                        rest += conn.recv(65536)
                    self.received.append(data)
                    conn.sendall(self.replies.pop(0))
                    if self.close_after:
                        break

    def stop(self) -> None:
        self.sock.close()


def test_chunked_answers_and_repeated_headers_are_read_whole_and_the_connection_reused() -> None:
    server = Scripted(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        ]
    )
    try:
        pool = http.ConnectionPool(server.url)
        first = pool.request("POST", "/a", b"{}", {"Content-Type": "application/json"}, connect_timeout=5, read_timeout=5)
        assert (first.status, first.content, first.headers["SET-COOKIE"]) == (200, b"abcde", "a=1")
        assert list(first.headers) == ["Transfer-Encoding", "Set-Cookie"] and "set-cookie" in first.headers
        second = get(pool, "/b")
        assert (second.status, second.content) == (201, b"ok")
        assert len(pool._idle) == 1  # both answers came over one connection, which is kept
        request = server.received[0].decode("latin-1")
        assert request.startswith("POST /a HTTP/1.1\r\n")
        for line in (f"Host: 127.0.0.1:{server.url.rsplit(':', 1)[1]}", "Accept-Encoding: identity", "Content-Length: 2"):
            assert f"\r\n{line}\r\n" in request
    finally:
        server.stop()


def test_an_answer_that_ends_with_the_connection_and_informational_answers() -> None:
    server = Scripted([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end"], close_after=True)
    try:
        pool = http.ConnectionPool(server.url)
        answer = pool.request("POST", "/", None, connect_timeout=5, read_timeout=5)
        assert (answer.status, answer.headers.get("x-a"), answer.content) == (200, "1", b"until the end")
        assert pool._idle == []  # the server ended it: not kept
        assert "\r\nContent-Length: 0\r\n" in server.received[0].decode()  # a POST without a body says so
    finally:
        server.stop()


def test_a_head_answer_ends_with_its_headers() -> None:
    server = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"])
    try:
        pool = http.ConnectionPool(server.url)
        head = pool.request("HEAD", "/", connect_timeout=5, read_timeout=5)
        assert (head.status, head.headers["content-length"], head.content) == (200, "1000", b"")
        assert get(pool, "/again").status == 204  # the same connection carried on
        assert len(pool._idle) == 1
    finally:
        server.stop()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # cut off before its length
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",  # cut off inside a chunk
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * (70 * 1024) + b"\r\n\r\n",
    ],
)
def test_a_malformed_or_truncated_answer_is_an_http_error_and_its_connection_is_dropped(reply: bytes) -> None:
    server = Scripted([reply], close_after=True)
    try:
        pool = http.ConnectionPool(server.url)
        with pytest.raises(http.ProtocolError):
            get(pool, "/")
        assert issubclass(http.ProtocolError, http.ERRORS) and pool._idle == []
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("target", "headers", "error"),
    [
        ("/ok", {"X-Bad": "a\r\nInjected: 1"}, ValueError),
        ("/ok", {"Bad Name": "1"}, ValueError),
        ("/a b", {}, InvalidURL),
        ("/a\r\nX: 1", {}, InvalidURL),
    ],
)
def test_a_header_or_target_that_would_split_the_request_is_refused_before_sending(target, headers, error) -> None:
    server = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    try:
        with pytest.raises(error):
            http.ConnectionPool(server.url).request("GET", target, None, headers, connect_timeout=5, read_timeout=5)
        assert server.received == []
    finally:
        server.stop()
