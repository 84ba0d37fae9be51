"""HTTP/1.1 over a bare socket, for what no HTTP client will send: broken chunked framing,
bodies shorter than their Content-Length, half-closed connections, trickled uploads."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass


@dataclass
class RawReply:
    status: int | None  # None: the server closed without answering (or did not answer in time)
    head: bytes
    body: bytes
    closed: bool  # the server closed the connection after this reply


def request_head(method: str, target: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy.test", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_reply(sock: socket.socket, deadline: float, close_wait: float = 0.5) -> RawReply:
    data = b""
    closed = False
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return RawReply(None, data, b"", closed=False)
        if not chunk:
            return RawReply(None, data, b"", closed=True)
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else None
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while length is None or len(rest) < length:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            closed = True
            break
        rest += chunk
    body = rest[:length] if length is not None else rest
    if not closed:
        # Closed right after the reply? (a short wait: a kept-alive connection stays silent)
        sock.settimeout(close_wait)
        try:
            closed = sock.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            closed = False
    return RawReply(status, head, body, closed)


def exchange(port: int, data: bytes, *, half_close: bool = False, timeout: float = 15.0, close_wait: float = 0.5) -> RawReply:
    """Send `data` as is (optionally shutting down our sending side), read one reply;
    `close_wait` is how long to wait after it to see whether the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all: read what it said
        return _read_reply(sock, time.monotonic() + timeout, close_wait)


def trickle(port: int, head: bytes, body: bytes, *, every: float, timeout: float) -> RawReply:
    """Send `head`, then `body` one byte every `every` seconds until the server answers
    (or closes, or `timeout` passes); return what it answered."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for byte in body:
            sock.settimeout(every)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server has answered
            except TimeoutError:
                pass
            except ConnectionResetError:
                return RawReply(None, b"", b"", closed=True)
            if time.monotonic() > deadline:
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
        return _read_reply(sock, max(deadline, time.monotonic() + 1))
