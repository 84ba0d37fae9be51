"""Azure Functions entry point (Python v2 programming model; scripts/azure-deploy.sh).

One anonymous HTTP trigger catches every path and method and hands the request to the
proxy app through `azure.functions.WsgiMiddleware`. host.json sets the route prefix to
empty, so `/track` is served at `/track`, not `/api/track`. Secrets arrive as app
settings that are Key Vault references, resolved by the platform into the environment.
RUNTIME=AZURE: see proxy/serverless.py.
"""

from __future__ import annotations

import azure.functions as func

from app import create_app
from proxy.serverless import platform_settings

proxy_app = create_app(platform_settings("AZURE"))
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="{*path}", methods=["GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE"])
def proxy(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    # A middleware per call: its error buffer is per instance, and the host runs calls on threads.
    return func.WsgiMiddleware(proxy_app).handle(req, context)
