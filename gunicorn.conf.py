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

from core.settings import ConfigError, Settings
from core.storage import check_writable_dir

try:
    _settings = Settings.from_env()
    if _settings.buffer == "disk" and _settings.buffers_rows:
        # A read-only or full BUFFER_DIR is one line here, before any worker starts.
        check_writable_dir(_settings.buffer_dir, "buffer_dir")
except ConfigError as exc:
    print(f"configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

bind = _settings.get("bind") or f"0.0.0.0:{_settings.port}"
worker_class = "gevent"
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
max_requests = _settings.get_int("max_requests", 0, 0)
max_requests_jitter = max_requests // 10


def on_starting(server) -> None:  # noqa: ANN001
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = tempfile.mkdtemp(prefix="mpproxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        server._mpproxy_metrics_dir = path


def child_exit(server, worker) -> None:  # noqa: ANN001
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _runtime(worker):  # noqa: ANN001, ANN202
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("mpproxy") if app is not None else None


def post_worker_init(worker) -> None:  # noqa: ANN001
    """The worker serves: start adopting what stopped workers left in BUFFER_DIR."""
    runtime = _runtime(worker)
    if runtime is not None:
        runtime.start()


def _drain(worker) -> None:  # noqa: ANN001
    runtime = _runtime(worker)
    if runtime is not None:
        runtime.close(timeout=max(1, graceful_timeout - 2))


def worker_int(worker) -> None:  # noqa: ANN001
    """SIGINT/SIGQUIT (Ctrl-C signals master and workers alike): drain before gunicorn's
    quick exit, which would otherwise cut a drain that worker_exit started."""
    _drain(worker)


def worker_exit(server, worker) -> None:  # noqa: ANN001
    """Drain this worker's buffers before it exits (SIGTERM, max_requests, errors)."""
    _drain(worker)


def on_exit(server) -> None:  # noqa: ANN001
    path = getattr(server, "_mpproxy_metrics_dir", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
