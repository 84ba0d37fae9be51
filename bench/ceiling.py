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
"""

from __future__ import annotations

import gevent
from flask import Flask, Response, request

app = Flask(__name__)

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
def ping() -> Response:
    return Response("1", mimetype="text/plain")  # the harness's readiness check
