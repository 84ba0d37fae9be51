"""Google Cloud Functions (2nd gen) entry point: `--entry-point=handler` (scripts/gcp-func-deploy.sh).

The Functions Framework (what Cloud Functions runs: gunicorn with threads) hands us its
own Flask request; the proxy app answers it as a WSGI app on the same environ, so every
route, header and body reaches it unchanged. RUNTIME=GCP: see proxy/serverless.py.
Locally: `functions-framework --source main.py --target handler --port 8080`.
"""

from __future__ import annotations

import functions_framework
from flask import Request
from werkzeug.wrappers import Response

from app import create_app
from proxy.serverless import platform_settings

proxy_app = create_app(platform_settings("GCP"))


@functions_framework.http
def handler(request: Request) -> Response:
    return Response.from_app(proxy_app, request.environ)
