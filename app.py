"""The WSGI entry point: `gunicorn -c gunicorn.conf.py app:app` (see gunicorn.conf.py).

`create_app(settings)` builds the app. The module attribute `app` is built from the
environment on first access (gunicorn's `app:app`, `flask --app app`), so the serverless
entry points (main.py, lambda_handler.py, function_app.py) and the tests can import
`create_app` without building a second app from the environment.
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from core import metrics
from core.settings import ConfigError, Settings, error_line
from destinations.wal import open_buffer
from proxy import __version__, cli, replies
from proxy.cors import init_cors
from proxy.logs import configure_logging
from proxy.memory import pin_mmap_threshold, publish_gc_passes
from proxy.routes import bp
from proxy.runtime import build_runtime

log = logging.getLogger("proxy")


class ProxyFlask(Flask):
    """Flask, with the answer of `ensure_sync` remembered per function.

    Flask asks `inspect.iscoroutinefunction` of every hook and view on every request
    (five times per ingest request here), though the answer for a function never changes.
    Flask documents `ensure_sync` as the method to override for how views run."""

    MAX_REMEMBERED = 256  # far more than the app's hooks, views and error handlers

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Any, Any] = {}

    def ensure_sync(self, func: Any) -> Any:
        try:
            return self._sync[func]
        except KeyError:
            sync = super().ensure_sync(func)
            if len(self._sync) < self.MAX_REMEMBERED:
                self._sync[func] = sync
            return sync
        except TypeError:  # an unhashable callable
            return super().ensure_sync(func)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings)
    pin_mmap_threshold()  # flat RSS across lake flushes (see proxy/memory.py)
    rt = build_runtime(settings)  # the whole configuration check; raises ConfigError
    # The write-ahead buffer claims its directory under BUFFER_DIR: done here, not in the
    # configuration check (gunicorn's master runs that in a throw-away child).
    rt.buffer = open_buffer(settings, rt.destinations)
    app = ProxyFlask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = None  # we enforce MAX_BODY_BYTES ourselves, after gunzip too
    app.extensions["mpproxy"] = rt
    init_cors(app, settings.frontend_url, settings.base_path)

    @app.before_request
    def _url_limit() -> Response | None:
        """MAX_URL_BYTES where nothing in front enforced it (gunicorn does: gunicorn.conf.py)."""
        req = request._get_current_object()
        target = req.environ.get("RAW_URI") or req.environ.get("REQUEST_URI")
        size = len(target) if target else len(req.path.encode()) + 1 + len(req.query_string)
        if size > rt.max_url_bytes:
            message = f"URL exceeds MAX_URL_BYTES ({rt.max_url_bytes} bytes): send the data in a POST body"
            return replies.as_json({"error": message, "status": 414}, 414)
        return None

    app.register_blueprint(bp, url_prefix=settings.base_path)
    cli.register(app)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return replies.as_json({"error": exc.name.lower(), "status": exc.code}, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return replies.as_json({"error": "internal error", "status": 500}, 500)

    counters: dict[tuple[str | None, int], Any] = {}  # (route, status) -> its counter: labels() takes a lock

    @app.after_request
    def _count(response: Response) -> Response:
        rule = request._get_current_object().url_rule  # not through the proxy's __getattr__
        key = (rule.rule if rule else None, response.status_code)
        counter = counters.get(key)
        if counter is None:
            route = key[0]
            endpoint = (route.strip("/").split("/")[0] if route is not None else "unmatched") or "root"
            counter = counters[key] = metrics.REQUESTS.labels(endpoint, str(key[1]))
        counter.inc()
        publish_gc_passes()
        return response

    names = ", ".join(d.name for d in rt.destinations)
    if settings.destinations_defaulted:
        log.info("DESTINATIONS is unset: using the embedded default, local files under %s", settings.data_dir)
    log.info("mixpanel-dwh-proxy %s ready: destinations %s", __version__, names)
    atexit.register(rt.close)
    return app


def _load() -> Flask:
    try:
        return create_app()
    except ConfigError as exc:
        print(error_line(exc), file=sys.stderr)
        # 4 is gunicorn's APP_LOAD_ERROR: the master stops instead of respawning the worker.
        raise SystemExit(4) from None


def __getattr__(name: str) -> Flask:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global app
    app = _load()  # later look-ups find the module global and never come back here
    return app


if __name__ == "__main__":
    local = _load()
    local.extensions["mpproxy"].start()
    local.run(host="127.0.0.1", port=local.extensions["mpproxy"].settings.port)
