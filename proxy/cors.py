"""CORS in one after_request hook (the browser SDK sends credentials).

FRONTEND_URL: a comma list of allowed origins; `none` disables CORS; unset reflects
the request's Origin. An allowed Origin is echoed exactly with
`Access-Control-Allow-Credentials: true`; `Vary: Origin` is always sent.
"""

from __future__ import annotations

from flask import Flask, Request, Response, request

ALLOWED_METHODS = "GET, POST, OPTIONS"
MAX_AGE = "86400"


class CorsPolicy:
    def __init__(self, frontend_url: str | None) -> None:
        raw = (frontend_url or "").strip()
        self.disabled = raw.lower() == "none"
        self.reflect_any = not raw
        self.origins = {o.strip().rstrip("/") for o in raw.split(",") if o.strip()} if raw and not self.disabled else set()

    def allows(self, origin: str | None) -> bool:
        if not origin or self.disabled:
            return False
        return self.reflect_any or origin.rstrip("/") in self.origins

    def apply(self, req: Request, response: Response) -> Response:
        if self.disabled:
            return response
        response.vary.add("Origin")
        origin = req.headers.get("Origin")
        if not self.allows(origin):
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        if req.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            asked = req.headers.get("Access-Control-Request-Headers")
            response.headers["Access-Control-Allow-Headers"] = asked or "Content-Type, Authorization"
            response.headers["Access-Control-Max-Age"] = MAX_AGE
            response.vary.add("Access-Control-Request-Headers")
        return response


def init_cors(app: Flask, frontend_url: str | None) -> None:
    policy = CorsPolicy(frontend_url)

    @app.before_request
    def _preflight() -> Response | None:
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            return Response(status=204)
        return None

    @app.after_request
    def _cors(response: Response) -> Response:
        return policy.apply(request, response)
