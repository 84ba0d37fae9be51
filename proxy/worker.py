"""The gunicorn worker: gevent's, with a drain that starts the moment the worker is told to stop.

gunicorn's gevent worker answers SIGTERM by waiting up to GRACEFUL_TIMEOUT for the
requests in flight, and only then calls `worker_exit`. A client that stalls its upload
holds that wait for the whole timeout; the master then kills the worker, and whatever
the buffers held (acknowledged rows) is lost before any drain began. Here SIGTERM
starts the drain at once, in its own greenlet, beside the requests still in flight:
the buffers are written (or spooled) within GRACEFUL_TIMEOUT whatever the clients do.
A request that finishes after the drain began writes its rows through at once
(destinations/delivery.py), so it is not lost either.

`worker_exit` (gunicorn.conf.py) still calls `drain()`: it returns as soon as this
drain is done, and covers exits that send no SIGTERM (max_requests, a failed boot).
SIGINT and SIGQUIT (quick shutdown) drain in `worker_int` before gunicorn exits.

One answer differs from gunicorn's: a request with a transfer coding it does not know
(`Transfer-Encoding: xchunked`, a smuggling probe) gets 400, not 501. No SDK sends one;
it is the client's mistake, and a 5xx would page the operator for it.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.ggevent import GeventWorker

from core import green

log = logging.getLogger(__name__)
# Kept back from GRACEFUL_TIMEOUT: the master kills the worker when it runs out.
MARGIN_SECONDS = 2


def _runtime(worker: Any) -> Any:
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("mpproxy") if app is not None else None


def start(worker: Any) -> None:
    """The worker serves: start adopting what stopped workers left in BUFFER_DIR, and
    keep the garbage collector off the request path (proxy/memory.py)."""
    # Imported here, in the worker: gunicorn's master imports this module for the worker
    # class, and must not load the metrics before PROMETHEUS_MULTIPROC_DIR is set.
    from proxy.memory import tune_gc

    runtime = _runtime(worker)
    if runtime is not None:
        runtime.start()
    tune_gc()


def drain(worker: Any) -> None:
    """Flush (or spool) every destination's buffer within the worker's graceful timeout."""
    runtime = _runtime(worker)
    if runtime is not None:
        runtime.close(timeout=max(1, worker.cfg.graceful_timeout - MARGIN_SECONDS))


class DrainingGeventWorker(GeventWorker):
    """gunicorn's gevent worker whose SIGTERM starts the drain beside in-flight requests."""

    _drainer: Any = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)  # stop accepting; in-flight requests go on
        if self._drainer is None:
            # A signal handler must not block (nor log: it may have interrupted a log call):
            # the drain runs in a greenlet of its own.
            self._drainer = green.spawn(self._drain_now)

    def _drain_now(self) -> None:
        log.info("worker %s: stopping, draining buffers now", self.pid)
        drain(self)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        # Yield to the other connections once per request. A keep-alive client whose next
        # request is already in the socket is otherwise served again and again while the
        # others wait, whenever nothing in the request happens to block (an upstream answer
        # already there).
        green.sleep(0)
        return super().handle_request(listener_name, req, sock, addr)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader("TRANSFER-ENCODING", req=req)
        super().handle_error(req, client, addr, exc)
