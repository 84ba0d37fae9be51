"""The framework ceiling: a measuring stick, not a product.

The least any Flask proxy on the mandated stack must do, run exactly like the proxy
(`gunicorn -c gunicorn.conf.py -w 2 -b 127.0.0.1:PORT bench.ceiling:app`, gevent workers):
route the request, read the whole body, answer what Mixpanel answers. No decoding, no
forwarding, no storage. Whatever the proxy does on top of this costs throughput, so the
proxy cannot beat these numbers on this stack; the benchmark reports them as the `ceiling` set.
Each request yields to the gevent hub once, as any proxy does at least once when it waits on
its upstream: without it a worker keeps serving one keep-alive connection while the others
starve, and the ceiling's p99 (300-560 ms in a trial) would say nothing about the stack.

The reply bodies are the Mixpanel double's (bench/procs.py NGINX_CONF), byte for byte.
gunicorn.conf.py's drain looks for `app.extensions["mpproxy"]`; this app has none, so it does nothing.
Its workers get the proxy's garbage-collector tuning all the same (post_worker_init,
proxy/memory.py), so the ceiling stays the stack's best.

`forwarder` (`bench.ceiling:forwarder`, the `forward` set) is the second stick: the same app,
except that each /track, /engage, /groups or /import request's body is sent on to the Mixpanel
double (`MIXPANEL_API_HOST`) verbatim, with the query string, Content-Type and Authorization it came with,
through the proxy's own HTTP client (core/http.py), and the double's answer is the reply.
No decoding, no gzip, no storage: the least a proxy that forwards each request must do. The
proxy's Mixpanel-only runs do this plus reading, checking, normalising and re-encoding the
records; `events/s ÷ forwarding ceiling` is the share of this bound they reach.

`decoder` (`bench.ceiling:decoder`, the `decode` set) is the forwarder plus decoding each body
with the proxy's own decoder (proxy/payloads.py: pybase64 and orjson, as fast as this project
knows how), and nothing else: no checks, no normalising. A Mixpanel-only proxy must at least
decode what it forwards (to count and check it), so none on this stack with these libraries beats it.

`essentials` (`bench.ceiling:essentials`, the `essential` set) is the decoder plus the least
that keeping the records as rows takes: it encodes each record as one NDJSON line with orjson
and feeds the lines to a streaming ISA-L gzip at the lake's default level, as a lake buffer
does. No checks, no normalising, no row columns, no buffering, no files: each of those only
adds work. So no Mixpanel + files proxy on this stack with these libraries can beat it, and
`Mixpanel + files ÷ essential-work ceiling` is the share of that bound the proxy reaches.

`durable` (`bench.ceiling:durable`, the `durable` set) is the essential-work ceiling made as
durable as the proxy's default (`BUFFER=disk`, `BUFFER_FSYNC=10`): before it answers, each
request's records must be on disk. It feeds the request's NDJSON lines to the lake's gzip
stream, as `essentials` does, but flushes the stream to a byte boundary (`Z_SYNC_FLUSH`) and
appends what it gave to one file per worker in `BUFFER_DIR`: compressed once, those bytes are
both the durable copy and what a lake object could later be assembled from. It then forwards
the body, and answers once an fsync round has covered its bytes. Rounds are group commits,
at most one per 10 ms, made by one OS thread per worker, woken and waking requests as the
proxy's write-ahead buffer does (core/green.py). No segments, no frames, no recovery, no
acknowledgements: each of those only adds work. So no Mixpanel + files proxy with the durable
default, on this stack with these libraries, beats it.

`rowmodel` (`bench.ceiling:rowmodel`, the `rowmodel` set) is the durable ceiling doing what this
proxy's documented contracts ask of a Mixpanel + files request, and nothing else:
* the stored lines are the row model's (README, "Destinations"; destinations/rows.py): each
  event completed with the client IP as normalising completes it, and one row per event with
  its columns (`event`, `event_time` in RFC 3339 from the event's `time`, `insert_time`,
  `token`, `device_id`, `insert_id`, `user_id`, `distinct_id`) and its `properties`, one
  orjson line each, built by a plain dict literal: no type checks, no fallbacks, no extra
  columns;
* Mixpanel gets what docs/wire-formats.md says it gets: the SDK's JSON array, gzipped
  (`Content-Encoding: gzip`, ISA-L at the proxy's upstream level), the client IP in
  `X-Forwarded-For`, with `ip=1&verbose=1`.
It is durable as `durable` is (one sync-flushed gzip stream appended to one file, group fsync).
It assumes the bench's bodies (a `data=` form of base64 JSON with `time` in seconds) and checks
nothing: no validation, no write-ahead frames or acknowledgements, no delivery buffer, no hour
partitions, no metrics. tests/test_bench_bounds.py checks that its lines are the proxy's rows,
byte for byte. So it bounds this proxy (not any proxy) on this stack with these libraries:
`Mixpanel + files ÷ row-model ceiling` is the share of it the proxy's request path reaches.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

import gevent
import orjson
from flask import Flask, Response, request
from isal import isal_zlib

from core import codec, green
from core.http import ConnectionPool
from destinations.mixpanel import GZIP_LEVEL
from destinations.rows import format_timestamp
from proxy.payloads import decode

app = Flask(__name__)
forwarder = Flask(f"{__name__}.forwarder")
decoder = Flask(f"{__name__}.decoder")
essentials = Flask(f"{__name__}.essentials")
durable = Flask(f"{__name__}.durable")
rowmodel = Flask(f"{__name__}.rowmodel")

METHODS = ["GET", "POST"]


@app.before_request
def _yield() -> None:
    gevent.sleep(0)  # one switch per request, like one upstream round trip


def _verbose() -> bool:
    return request.args.get("verbose") in ("1", "true")  # the double's `^(1|true)$`


@app.route("/track", methods=METHODS)
@app.route("/track/", methods=METHODS)
@app.route("/engage", methods=METHODS)
@app.route("/engage/", methods=METHODS)
@app.route("/groups", methods=METHODS)
@app.route("/groups/", methods=METHODS)
def ingest() -> Response:
    request.get_data()  # the body must be read whole, as any proxy has to
    if _verbose():
        return Response('{"status":1,"error":null}', mimetype="application/json")
    return Response("1", mimetype="text/plain")


@app.route("/import", methods=METHODS)
@app.route("/import/", methods=METHODS)
def import_() -> Response:
    request.get_data()
    # A constant like the double's: counting the records would mean decoding the body.
    return Response('{"code":200,"num_records_imported":2000,"status":"OK"}', mimetype="application/json")


@app.route("/ping")
@forwarder.route("/ping")
@decoder.route("/ping")
@essentials.route("/ping")
@durable.route("/ping")
@rowmodel.route("/ping")
def ping() -> Response:
    return Response("1", mimetype="text/plain")  # the harness's readiness check


_upstream: list[ConnectionPool] = []  # made on first use, in the worker (after gevent's patching)


@forwarder.route("/<any(track, engage, groups, import):endpoint>", methods=METHODS)
@forwarder.route("/<any(track, engage, groups, import):endpoint>/", methods=METHODS)
def forward(endpoint: str) -> Response:
    return _forward()


@decoder.route("/<any(track, engage, groups, import):endpoint>", methods=METHODS)
@decoder.route("/<any(track, engage, groups, import):endpoint>/", methods=METHODS)
def decode_only(endpoint: str) -> Response:
    decode(request.get_data(), request.args, request.headers.get("Content-Encoding"))
    return _forward()


_lake: list = []  # one streaming gzip per worker, as a lake buffer keeps; its output is not stored


@essentials.route("/<any(track, engage, groups, import):endpoint>", methods=METHODS)
@essentials.route("/<any(track, engage, groups, import):endpoint>/", methods=METHODS)
def essential(endpoint: str) -> Response:
    records = decode(request.get_data(), request.args, request.headers.get("Content-Encoding")).items
    if not _lake:
        _lake.append(codec.compressor(6))  # LAKE_GZIP_LEVEL's default (destinations/lake.py)
    _lake[0].compress(b"".join([orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE) for record in records]))
    return _forward()


class _GroupCommitLog:
    """One append-only file whose appends are fsynced in rounds, at most one per `interval`
    seconds, by one OS thread (fsync blocks the thread that makes it); a request waits in the
    event loop for the round that covers its bytes. Positions count bytes ever appended; the
    file is emptied when it passes `keep` bytes, as the proxy deletes delivered segments."""

    def __init__(self, directory: str, interval: float = 0.010, keep: int = 64 << 20) -> None:
        os.makedirs(directory, exist_ok=True)  # as the proxy makes BUFFER_DIR
        path = os.path.join(directory, f"durable-{os.getpid()}.log")
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.interval, self.keep = interval, keep
        self.written = self.synced = self.size = 0
        self.error: OSError | None = None  # an fsync failed: nothing is durable any more
        self.lock = green.native_lock()  # shared with the syncer thread
        self.wake = green.native_lock()  # held while the syncer may sleep on it
        self.wake.acquire()
        self.sleeping = False
        self.round_done = threading.Event()  # the event loop's (gevent's, once patched)
        self.wakeup = green.Wakeup(self._round_finished)
        self.syncer = green.NativeThread(self._loop, "durable-fsync")

    def append(self, data: bytes) -> int:
        os.write(self.fd, data)
        with self.lock:
            self.written += len(data)
            self.size += len(data)
            if self.size > self.keep:
                os.ftruncate(self.fd, 0)
                self.size = 0
            if self.sleeping and self.wake.locked():
                self.sleeping = False
                self.wake.release()
            return self.written

    def wait(self, position: int) -> None:
        while True:
            with self.lock:
                if self.error is not None:
                    raise RuntimeError(f"fsync failed: {self.error}")
                if self.synced >= position:
                    return
                done = self.round_done
            done.wait()

    def _loop(self) -> None:
        started = float("-inf")
        while True:
            with self.lock:
                idle = self.synced >= self.written
                self.sleeping = idle
            if idle:
                self.wake.acquire(timeout=1.0)
                continue
            pause = started + self.interval - time.monotonic()
            if pause > 0:
                green.native_sleep(pause)  # let more requests join this round
            started = time.monotonic()
            with self.lock:
                target = self.written
            try:
                os.fsync(self.fd)
            except OSError as exc:  # the waiters fail (HTTP 500, counted as errors), not hang
                self.error = exc
            with self.lock:
                self.synced = target
            self.wakeup.send()

    def _round_finished(self) -> None:
        with self.lock:
            done, self.round_done = self.round_done, threading.Event()
        done.set()


_log: list[_GroupCommitLog] = []  # one per worker, made on first use (after gevent's patching)
_stream: list = []  # its lake gzip stream


@durable.route("/<any(track, engage, groups, import):endpoint>", methods=METHODS)
@durable.route("/<any(track, engage, groups, import):endpoint>/", methods=METHODS)
def durable_essential(endpoint: str) -> Response:
    body = request.get_data(cache=False)
    records = decode(body, request.args, request.headers.get("Content-Encoding")).items
    lines = b"".join([orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE) for record in records])
    position = _append_durably(lines)
    reply = _forward(body)  # the fsync round overlaps the upstream round trip, as in the proxy
    # Freed before the wait, while still in the CPU's caches, as the proxy does (proxy/ingest.py).
    del body, records, lines
    _log[0].wait(position)
    return reply


def _append_durably(lines: bytes) -> int:
    """Feed `lines` to the worker's lake gzip stream and append what it gives to the worker's
    log; returns the log position to wait for (`_log[0].wait`). Made on first use."""
    if not _log:
        directory = os.environ.get("BUFFER_DIR") or tempfile.mkdtemp(prefix="durable-")
        _log.append(_GroupCommitLog(directory))
        # The lake's streaming gzip, flushed to a byte boundary per request so that its bytes
        # are whole on disk: compressed once, they are both the durable copy and the object's.
        _stream.append(codec.compressor(6))
    return _log[0].append(_stream[0].compress(lines) + _stream[0].flush(isal_zlib.Z_SYNC_FLUSH))


def row_lines(items: list, client_ip: str, received_at: float) -> bytes:
    """The NDJSON lines the proxy stores for these decoded events (its rows: destinations/rows.py),
    the events completed with the client IP first, as normalising does."""
    insert_time = format_timestamp(received_at)
    lines = []
    for item in items:
        props = item["properties"]
        if "ip" not in props:
            props["ip"] = client_ip
        get = props.get
        row = {
            "event": item["event"],
            "event_time": format_timestamp(props["time"]),
            "insert_time": insert_time,
            "token": get("token"),
            "device_id": get("$device_id"),
            "insert_id": get("$insert_id"),
            "user_id": get("$user_id"),
            "distinct_id": get("distinct_id"),
            "properties": props,
        }
        lines.append(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
    return b"".join(lines)


@rowmodel.route("/<any(track, engage, groups, import):endpoint>", methods=METHODS)
@rowmodel.route("/<any(track, engage, groups, import):endpoint>/", methods=METHODS)
def row_model(endpoint: str) -> Response:
    received_at = time.time()
    decoded = decode(request.get_data(cache=False), request.args, request.headers.get("Content-Encoding"))
    ip = request.remote_addr or ""
    lines = row_lines(decoded.items, ip, received_at)
    position = _append_durably(lines)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip", "X-Forwarded-For": ip}
    # The SDK's JSON as the decoder read it, gzipped at the proxy's upstream level (destinations/mixpanel.py).
    body = codec.gzip(decoded.raw, GZIP_LEVEL)
    answer = _pool().request("POST", f"/{endpoint}?ip=1&verbose=1", body, headers, connect_timeout=5, read_timeout=10)
    reply = Response(answer.content, status=answer.status, content_type=answer.headers.get("Content-Type"))
    del decoded, lines, body
    _log[0].wait(position)
    return reply


def _pool() -> ConnectionPool:
    """The worker's connections to the Mixpanel double."""
    if not _upstream:
        _upstream.append(ConnectionPool(os.environ["MIXPANEL_API_HOST"]))
    return _upstream[0]


def _forward(body: bytes | None = None) -> Response:
    target = request.full_path if request.query_string else request.path
    headers = {"Content-Type": request.content_type or "application/x-www-form-urlencoded"}
    if request.remote_addr:
        headers["X-Forwarded-For"] = request.remote_addr
    if request.authorization is not None:
        headers["Authorization"] = request.headers["Authorization"]
    data = request.get_data() if body is None else body
    answer = _pool().request("POST", target, data, headers, connect_timeout=5, read_timeout=10)
    return Response(answer.content, status=answer.status, content_type=answer.headers.get("Content-Type"))
