"""core/http.py: the keep-alive pool Mixpanel calls go through, against real local servers."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
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
