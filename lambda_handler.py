"""AWS Lambda entry point: `--handler lambda_handler.handler` (scripts/aws-deploy.sh).

apig-wsgi turns API Gateway HTTP API (payload 2.0), REST API (1.0) and function URL
(2.0) events into WSGI requests, decoding `isBase64Encoded` bodies (gzip from the mobile
SDKs arrives that way), and answers text as text and anything else base64-encoded.
A REST API must list `*/*` in its binary media types, or it hands binary bodies over
as mangled text.

Two things on top of the adapter:
- the peer address is the event's `requestContext` `sourceIp` (API Gateway's own view
  of the client). apig-wsgi takes the first X-Forwarded-For entry for REST API events,
  which any client can write; with TRUSTED_PROXY_HOPS=0 (the AWS default) nothing a
  client sends can change the recorded IP.
- SECRETS_ARN: a Secrets Manager secret whose JSON object holds secret settings
  (e.g. `{"s3_secret_access_key": "..."}`), read once per cold start; Lambda has no
  native way to put a secret into the environment. The environment wins over it.

RUNTIME=AWS: see proxy/serverless.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from apig_wsgi import make_lambda_handler

from app import create_app
from core.settings import read_environment
from proxy.serverless import platform_settings

# Served as text; other bodies go back base64-encoded (apig-wsgi's binary support).
TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/x-javascript")


def _secrets() -> dict[str, str]:
    arn = read_environment().get("secrets_arn")
    if not arn:
        return {}
    import boto3

    reply = boto3.client("secretsmanager").get_secret_value(SecretId=arn)
    return {str(k): str(v) for k, v in json.loads(reply["SecretString"]).items()}


def _source_ip(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        context = environ.get("apig_wsgi.request_context") or {}
        source = (context.get("http") or {}).get("sourceIp") or (context.get("identity") or {}).get("sourceIp")
        if source:
            environ["REMOTE_ADDR"] = source
        return app(environ, start_response)

    return wsgi


proxy_app = create_app(platform_settings("AWS", secrets=_secrets()))
handler = make_lambda_handler(_source_ip(proxy_app), binary_support=True, non_binary_content_type_prefixes=TEXT_TYPES)
