"""gunicorn settings: gevent workers, graceful drain, Prometheus multiprocess metrics.

`gunicorn -c gunicorn.conf.py app:app` (the Procfile and Dockerfile do exactly this).
Reads: BIND (else 0.0.0.0:PORT), WEB_CONCURRENCY, WORKER_CONNECTIONS, GRACEFUL_TIMEOUT,
WORKER_TIMEOUT, KEEPALIVE, MAX_REQUESTS, ACCESS_LOG, PROMETHEUS_MULTIPROC_DIR.

The whole configuration is checked once, here in the master, before gunicorn prints
anything or starts a worker: a bad value stops it with one line naming the variable,
the value and what is allowed, and exit status 4 (gunicorn's "app failed to load").
The check builds everything a worker will build (proxy.runtime.build_runtime:
settings, schemas, destinations, transforms) without connecting anywhere. It runs
in a short-lived forked child, so the master never imports the cloud SDKs before the
gevent workers monkey-patch. It runs while gunicorn reads this file rather than in
`on_starting`, which comes after gunicorn's start-up banner: the error is then the
only line printed, and `gunicorn --check-config` checks the whole configuration too.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import tempfile
import time

from core.settings import ConfigError, Settings, error_line
from core.storage import check_writable_dir

# gunicorn's APP_LOAD_ERROR: the same status whether the master or a worker finds the problem.
CONFIG_ERROR_STATUS = 4
CHECK_TIMEOUT_SECONDS = 60


def _stop(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(CONFIG_ERROR_STATUS)


def _bind(settings: Settings) -> str:
    """BIND: [tcp://]HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N, comma-separated; default 0.0.0.0:PORT."""
    raw = settings.get("bind")
    if raw is None:
        return f"0.0.0.0:{settings.port}"
    for address in (a.strip() for a in raw.split(",")):
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        if address.startswith(("unix:", "fd://")) or (host and port.isdigit() and int(port) < 65536):
            continue
        raise ConfigError(f"BIND={raw!r} must be HOST:PORT, unix:PATH or fd://N (comma-separated for several)")
    return raw


def check_configuration(settings: Settings) -> str | None:
    """Build what a worker builds, in a forked child; the error line, or None if all is well."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into gunicorn
        os.close(read)
        status = 0
        try:
            from proxy.runtime import build_runtime

            build_runtime(settings)
        except ConfigError as exc:
            os.write(write, error_line(exc).encode())
            status = CONFIG_ERROR_STATUS
        except BaseException as exc:  # noqa: BLE001 - a worker would fail the same way: say so in one line
            detail = str(exc).splitlines()[0][:300] if str(exc) else ""
            os.write(write, f"configuration error: the app cannot be built: {type(exc).__name__}: {detail}".encode())
            status = CONFIG_ERROR_STATUS
        os._exit(status)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + CHECK_TIMEOUT_SECONDS
    try:
        while (remaining := deadline - time.monotonic()) > 0 and select.select([read], [], [], remaining)[0]:
            if not (chunk := os.read(read, 65536)):
                break  # the child is done
            chunks.append(chunk)
        else:  # building took too long: something connects or blocks while it is built
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            took = f"checking the configuration took over {CHECK_TIMEOUT_SECONDS} s"
            return f"configuration error: {took} (does a destination connect while it is built?)"
    finally:
        os.close(read)
    _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode(errors="replace").strip()
    if os.waitstatus_to_exitcode(status) != 0:
        return message or "configuration error: the configuration check died without a message"
    return None


from gunicorn.http import message as _http_message  # noqa: E402 - after the helpers above

try:
    _settings = Settings.from_env()
    bind = _bind(_settings)
    workers = _settings.get_int("web_concurrency", os.cpu_count() or 1, 1)
    worker_connections = _settings.get_int("worker_connections", 1000, 1)
    # Time a worker gets after SIGTERM to finish requests and drain its buffers.
    graceful_timeout = _settings.get_int("graceful_timeout", 30, 1)
    timeout = _settings.get_int("worker_timeout", 60, 1)
    # Idle keep-alive connections hold a gevent worker's graceful shutdown open, so keep this
    # short; behind a load balancer that reuses connections longer, raise it above its idle timeout.
    keepalive = _settings.get_int("keepalive", 5, 0)
    accesslog = "-" if _settings.get_bool("access_log") else None
    max_requests = _settings.get_int("max_requests", 0, 0)
    _max_url_bytes = _settings.max_url_bytes
    if _settings.buffer == "disk" and _settings.buffers_rows:
        # A read-only or full BUFFER_DIR is one line here, before any worker starts.
        check_writable_dir(_settings.buffer_dir, "buffer_dir")
except ConfigError as _exc:
    _stop(error_line(_exc))
if (_problem := check_configuration(_settings)) is not None:
    _stop(_problem)

# gunicorn's gevent worker, whose SIGTERM starts draining the buffers at once (proxy/worker.py).
worker_class = "proxy.worker.DrainingGeventWorker"
# Path only (%(U)s), never the query string: browser GET requests carry the payload in `data=`.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s"'
errorlog = "-"
forwarded_allow_ips = "*"  # client IP is derived from X-Forwarded-For with TRUSTED_PROXY_HOPS
# ... so no header may rewrite the WSGI environment: with the default (SCRIPT_NAME,PATH_INFO)
# any client could send `SCRIPT_NAME` (a 500 when the path does not start with it, a shifted
# route when it does). BASE_PATH is the way to serve under a prefix.
forwarder_headers = ""
max_requests_jitter = max_requests // 10
# MAX_URL_BYTES: browser GET batches carry 50 base64 events in `?data=`, far past gunicorn's
# 4094-byte default request line (414). gunicorn clamps the limit to its MAX_REQUEST_LINE
# (8190) unless 0, which is unlimited; raising that bound instead keeps a limit, so a request
# line past MAX_URL_BYTES still gets gunicorn's 414 ("Request Line is too large") before any
# of it is buffered beyond the limit.
limit_request_line = _max_url_bytes + len("OPTIONS  HTTP/1.1")
if limit_request_line > _http_message.MAX_REQUEST_LINE:
    _http_message.MAX_REQUEST_LINE = limit_request_line


def on_starting(server) -> None:  # noqa: ANN001
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = tempfile.mkdtemp(prefix="mpproxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        server._mpproxy_metrics_dir = path


def child_exit(server, worker) -> None:  # noqa: ANN001
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker) -> None:  # noqa: ANN001
    """The worker serves: start adopting what stopped workers left in BUFFER_DIR, and
    tune the garbage collector (proxy/memory.py)."""
    from proxy.worker import start

    start(worker)


def worker_int(worker) -> None:  # noqa: ANN001
    """SIGINT/SIGQUIT (Ctrl-C signals master and workers alike): drain before gunicorn's
    quick exit, which would otherwise cut a drain that worker_exit started."""
    from proxy.worker import drain

    drain(worker)


def worker_exit(server, worker) -> None:  # noqa: ANN001
    """Drain this worker's buffers before it exits. After SIGTERM the drain began at once
    (proxy.worker.DrainingGeventWorker) and this waits for it; other exits (max_requests,
    errors) drain here."""
    from proxy.worker import drain

    drain(worker)


def on_exit(server) -> None:  # noqa: ANN001
    path = getattr(server, "_mpproxy_metrics_dir", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
