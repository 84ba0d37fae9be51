"""The WSGI entry point: `gunicorn -k gevent app:app` (see gunicorn.conf.py)."""

from __future__ import annotations

import atexit
import logging
import sys

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from core import metrics
from core.settings import ConfigError, Settings
from destinations import build_destinations, upstream_client
from destinations.schema import build_schemas
from destinations.wal import open_buffer
from proxy import __version__, cli, replies
from proxy.cors import init_cors
from proxy.logs import configure_logging
from proxy.memory import pin_mmap_threshold
from proxy.routes import bp
from proxy.runtime import Runtime
from proxy.staticlib import LibraryCache
from proxy.transform import RowTransformer, Transformer

log = logging.getLogger("proxy")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings)
    pin_mmap_threshold()  # flat RSS across lake flushes (see proxy/memory.py)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = None  # we enforce MAX_BODY_BYTES ourselves, after gunzip too
    schemas = build_schemas(settings)
    upstream = upstream_client(settings)  # the worker's one pool to Mixpanel
    destinations = build_destinations(settings, schemas, upstream)
    rt = Runtime(
        settings=settings,
        destinations=destinations,
        buffer=open_buffer(settings, destinations),
        schemas=schemas,
        row_transformer=RowTransformer.from_settings(settings),
        transformer=Transformer.from_settings(settings),
        library=LibraryCache(settings.mixpanel_cdn_url, settings.mixpanel_lib_dir),
        upstream=upstream,
    )
    app.extensions["mpproxy"] = rt
    init_cors(app, settings.frontend_url)
    app.register_blueprint(bp, url_prefix=settings.get("base_path"))
    cli.register(app)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return replies.as_json({"error": exc.name.lower(), "status": exc.code}, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return replies.as_json({"error": "internal error", "status": 500}, 500)

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = (request.url_rule.rule.strip("/").split("/")[0] if request.url_rule else "unmatched") or "root"
        metrics.REQUESTS.labels(endpoint, str(response.status_code)).inc()
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
        print(f"configuration error: {exc}", file=sys.stderr)
        # 4 is gunicorn's APP_LOAD_ERROR: the master stops instead of respawning the worker.
        raise SystemExit(4) from None


app = _load()

if __name__ == "__main__":
    app.extensions["mpproxy"].start()
    app.run(host="127.0.0.1", port=app.extensions["mpproxy"].settings.port)
