"""Requests as each serverless platform hands them to the entry points.

The shapes follow the platforms' documentation: AWS "payload format version 2.0" for
HTTP APIs, the REST API proxy integration's input format (1.0) and the function URL
request payload; Azure's HttpRequest as the Functions host builds it behind its front
end. Values such as request ids are fixed samples; what the proxy reads (method, path,
query, headers, body, base64 flag, source IP) is what the platforms send.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import parse_qsl


@dataclass(frozen=True)
class Call:
    """One HTTP request as the SDK sent it, and the address it came from."""

    method: str
    path: str
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    client_ip: str = "198.51.100.7"
    #: What the client itself wrote into X-Forwarded-For (a spoofing attempt), if anything.
    spoofed_for: str | None = "6.6.6.6"

    def forwarded_for(self, port: int | None = None) -> str:
        """X-Forwarded-For after the platform's front end appended the client (Azure's adds
        the client's port: `203.0.113.5:52341`, `[2001:db8::42]:52341`)."""
        client = self.client_ip
        if port is not None:
            client = f"[{client}]:{port}" if ":" in client else f"{client}:{port}"
        return ", ".join(x for x in (self.spoofed_for, client) if x)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


def _body_fields(call: Call, base64_body: bool) -> dict:
    if base64_body:
        return {"body": base64.b64encode(call.body).decode(), "isBase64Encoded": True}
    return {"body": call.body.decode() if call.body else None, "isBase64Encoded": False}


def http_api_v2(call: Call, base64_body: bool) -> dict:
    """API Gateway HTTP API, payload format 2.0."""
    headers = {k.lower(): v for k, v in call.headers.items()}
    headers.update(
        {
            "host": "r3pmxmplak.execute-api.us-east-2.amazonaws.com",
            "x-amzn-trace-id": "Root=1-5e6722a7-cc56xmpl46db7ae02d4da47e",
            "x-forwarded-for": call.forwarded_for(),
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
        }
    )
    if call.body:
        headers["content-length"] = str(len(call.body))
    query = dict(parse_qsl(call.query, keep_blank_values=True)) or None
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": call.path,
        "rawQueryString": call.query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "r3pmxmplak",
            "domainName": "r3pmxmplak.execute-api.us-east-2.amazonaws.com",
            "domainPrefix": "r3pmxmplak",
            "http": {
                "method": call.method,
                "path": call.path,
                "protocol": "HTTP/1.1",
                "sourceIp": call.client_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "10/Mar/2020:05:16:23 +0000",
            "timeEpoch": 1583817383220,
        },
        **_body_fields(call, base64_body),
    }
    if query:
        event["queryStringParameters"] = query
    return event


def function_url(call: Call, base64_body: bool) -> dict:
    """Lambda function URL (payload format 2.0, its own domain, no stage)."""
    event = http_api_v2(call, base64_body)
    host = "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6.lambda-url.us-west-2.on.aws"
    event["headers"].update(
        {"host": host, "x-amzn-tls-version": "TLSv1.2", "x-amzn-tls-cipher-suite": "ECDHE-RSA-AES128-GCM-SHA256"}
    )
    event["requestContext"].update({"apiId": host.split(".")[0], "domainName": host, "domainPrefix": host.split(".")[0]})
    return event


def rest_api_v1(call: Call, base64_body: bool) -> dict:
    """API Gateway REST API proxy integration (`/{proxy+}` on stage `prod`), format 1.0.
    Query values arrive decoded; headers come both single- and multi-valued."""
    headers = dict(call.headers)
    headers.update(
        {
            "Host": "1234567890.execute-api.us-east-1.amazonaws.com",
            "X-Amzn-Trace-Id": "Root=1-5e66d96f-7491f09xmpl79d18acf3d050",
            "X-Forwarded-For": call.forwarded_for(),
            "X-Forwarded-Port": "443",
            "X-Forwarded-Proto": "https",
        }
    )
    pairs = parse_qsl(call.query, keep_blank_values=True)
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        multi.setdefault(key, []).append(value)
    return {
        "resource": "/{proxy+}",
        "path": call.path,
        "httpMethod": call.method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi.items()} or None,
        "multiValueQueryStringParameters": multi or None,
        "pathParameters": {"proxy": call.path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "1234567890",
            "domainName": "1234567890.execute-api.us-east-1.amazonaws.com",
            "extendedRequestId": "BQGojGb4oAMFmPw=",
            "httpMethod": call.method,
            "identity": {"sourceIp": call.client_ip, "userAgent": headers.get("User-Agent", "")},
            "path": f"/prod{call.path}",
            "protocol": "HTTP/1.1",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "requestTime": "09/Apr/2015:12:34:56 +0000",
            "requestTimeEpoch": 1428582896000,
            "resourceId": "123456",
            "resourcePath": "/{proxy+}",
            "stage": "prod",
        },
        **_body_fields(call, base64_body),
    }


def lambda_reply(result: dict) -> Reply:
    """apig-wsgi's answer as API Gateway reads it (base64 decoded when flagged)."""
    if "multiValueHeaders" in result:
        headers = {k.lower(): ", ".join(v) for k, v in result["multiValueHeaders"].items()}
    else:
        headers = {k.lower(): v for k, v in result["headers"].items()}
    raw = result.get("body") or ""
    body = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
    return Reply(result["statusCode"], headers, body)


def azure_request(call: Call):  # noqa: ANN201 - azure.functions.HttpRequest, imported lazily
    """What the Functions host passes a Python HTTP trigger behind App Service's front end:
    the client (with its port) appended to X-Forwarded-For, also in CLIENT-IP."""
    import azure.functions as func

    host = "mpproxy-example.azurewebsites.net"
    headers = dict(call.headers)
    headers.update(
        {
            "Host": host,
            "X-Forwarded-For": call.forwarded_for(52341),
            "CLIENT-IP": call.forwarded_for(52341).rsplit(", ", 1)[-1],
            "X-Forwarded-Proto": "https",
            "X-ARR-SSL": "2048|256|CN=Microsoft Azure RSA TLS Issuing CA 03",
            "X-Original-URL": call.path + (f"?{call.query}" if call.query else ""),
            "X-WAWS-Unencoded-URL": call.path + (f"?{call.query}" if call.query else ""),
            "DISGUISED-HOST": host,
            "X-AppService-Proto": "https",
        }
    )
    if call.body:
        headers["Content-Length"] = str(len(call.body))
    url = f"https://{host}{call.path}" + (f"?{call.query}" if call.query else "")
    params = dict(parse_qsl(call.query, keep_blank_values=True))
    return func.HttpRequest(method=call.method, url=url, headers=headers, params=params, body=call.body)


def azure_reply(response) -> Reply:  # noqa: ANN001 - azure.functions.HttpResponse
    return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.get_body())
