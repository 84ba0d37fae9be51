"""gunicorn settings: gevent workers, graceful drain, Prometheus multiprocess metrics.

`gunicorn -c gunicorn.conf.py app:app` (the Procfile and Dockerfile do exactly this).
Settings come from core.settings, so a bad configuration stops the master with one
line before any worker starts.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from gunicorn.http import message as _http_message

from core.settings import ConfigError, Settings

try:
    _settings = Settings.from_env()
    _max_url_bytes = _settings.max_url_bytes
except ConfigError as exc:
    print(f"configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

bind = _settings.get("bind") or f"0.0.0.0:{_settings.port}"
# gunicorn's gevent worker, whose SIGTERM starts draining the buffers at once (proxy/worker.py).
worker_class = "proxy.worker.DrainingGeventWorker"
workers = _settings.get_int("web_concurrency", os.cpu_count() or 1, 1)
worker_connections = _settings.get_int("worker_connections", 1000, 1)
# Time a worker gets after SIGTERM to finish requests and drain its buffers.
graceful_timeout = _settings.get_int("graceful_timeout", 30, 1)
timeout = _settings.get_int("worker_timeout", 60, 1)
# Idle keep-alive connections hold a gevent worker's graceful shutdown open, so keep this
# short; behind a load balancer that reuses connections longer, raise it above its idle timeout.
keepalive = _settings.get_int("keepalive", 5, 0)
accesslog = "-" if _settings.get_bool("access_log") else None
# Path only (%(U)s), never the query string: browser GET requests carry the payload in `data=`.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s"'
errorlog = "-"
forwarded_allow_ips = "*"  # client IP is derived from X-Forwarded-For with TRUSTED_PROXY_HOPS
# ... so no header may rewrite the WSGI environment: with the default (SCRIPT_NAME,PATH_INFO)
# any client could send `SCRIPT_NAME` (a 500 when the path does not start with it, a shifted
# route when it does). BASE_PATH is the way to serve under a prefix.
forwarder_headers = ""
max_requests = _settings.get_int("max_requests", 0, 0)
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
