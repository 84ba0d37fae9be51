"""What an SDK really sent, read from the bytes captured at the client, and what Mixpanel
must receive for it.

The decoding here is written from Mixpanel's wire formats (docs/wire-formats.md), not
taken from the proxy, so the suite checks the proxy against an independent reading:
gzip first; a JSON or NDJSON body as is; else the form field `data` (body, then query),
which is JSON, or base64 of JSON (browser: percent-encoded; Node: raw, with literal `+`).

The normalisation is the documented one (core/records.py, docs/architecture.md), again
written out here: the client IP when the SDK sent `ip=1` (`properties.ip` on events,
`$ip` on profile updates, never overwriting one the SDK set), `MIXPANEL_TOKEN` when
configured, and a receive time in milliseconds for events without `time`. Where that
would add nothing but the client IP (no `MIXPANEL_TOKEN`, every event with its `time`, on
/track, /engage or /groups), Mixpanel may be sent the SDK's own JSON instead, byte for byte:
the IP then goes only in X-Forwarded-For with `ip=1` (docs/wire-formats.md).
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

INGEST = ("track", "engage", "groups", "import")
KIND = {"track": "event", "import": "event", "engage": "user", "groups": "group"}


class AnyTime:
    """Stands for the receive time the proxy adds: epoch milliseconds within the run."""

    def __init__(self, low_ms: int, high_ms: int) -> None:
        self.low_ms, self.high_ms = low_ms, high_ms

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and not isinstance(other, bool) and self.low_ms <= other <= self.high_ms

    def __repr__(self) -> str:
        return f"<receive time in [{self.low_ms}, {self.high_ms}] ms>"


@dataclass
class Sent:
    """One HTTP request as the client put it on the wire."""

    client: str
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    transport: str = ""  # e.g. xhr, fetch, ping (sendBeacon), http
    status: int | None = None

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def endpoint(self) -> str:
        return self.path.strip("/").split("/")[0]

    @property
    def query(self) -> dict[str, str]:
        return form_fields(urlsplit(self.url).query)


@dataclass
class SentRecord:
    """One record an SDK sent, with what the proxy must make of it."""

    client: str
    operation: str
    endpoint: str
    sent: Any
    expected: Any  # `sent` after the documented normalisation
    request: Sent = field(repr=False)
    # Whether Mixpanel may get `sent` as it is, in the SDK's own bytes: normalising its
    # request adds nothing but the client IP.
    as_sent: bool = False


def form_fields(text: str) -> dict[str, str]:
    """Raw (still percent-encoded) form values by name: a base64 value must not have its
    `+` turned into a space, which a form parser would do."""
    out: dict[str, str] = {}
    for pair in text.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            out.setdefault(unquote_plus(name), value)
    return out


def text_of(raw: bytes) -> str:
    """UTF-8 text, reading a surrogate pair written as two three-byte halves (CESU-8, what
    mixpanel-browser's own encoder writes for an emoji) as the one character it stands for."""
    halves = raw.decode("utf-8", "surrogatepass")
    return halves.encode("utf-16-le", "surrogatepass").decode("utf-16-le")


def decode(request: Sent) -> list[Any]:
    """The records the SDK sent: its JSON (sdk_json), or NDJSON, as a list."""
    text = text_of(sdk_json(request)).strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = [json.loads(line) for line in text.splitlines() if line.strip()]
    return value if isinstance(value, list) else [value]


def sdk_json(request: Sent) -> bytes:
    """The JSON text the SDK encoded, as bytes: the body after gzip, or its `data` field
    (body, then query) after percent-decoding and base64."""
    body = request.body
    if request.headers.get("content-encoding", "").lower() == "gzip":
        body = gzip.decompress(body)
    if body.strip()[:1] in (b"[", b"{"):
        return body
    raw = form_fields(body.decode("utf-8", "surrogatepass")).get("data")
    if raw is None:
        raw = request.query["data"]
    plain = unquote_plus(raw).strip()
    if plain[:1] in ("[", "{"):
        return plain.encode("utf-8", "surrogatepass")
    b64 = "".join(unquote(raw).split())
    return base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)


def only_the_ip_added(item: Any, expected: Any) -> bool:
    """Whether normalising `item` into `expected` added nothing but the client IP."""
    if not isinstance(item, dict):
        return True  # left as it is, for Mixpanel to judge
    without_ip = dict(expected)
    if "$ip" not in item:
        without_ip.pop("$ip", None)
    props = without_ip.get("properties")
    if isinstance(props, dict) and "ip" not in (item.get("properties") or {}):
        without_ip["properties"] = {k: v for k, v in props.items() if k != "ip"}
    return without_ip == item


def flag(request: Sent, name: str) -> str | None:
    """A parameter from the query or the form body (Python sends `ip` in the body)."""
    if name in request.query:
        return unquote_plus(request.query[name])
    text = request.body.decode("utf-8", "replace") if request.body[:1] not in (b"[", b"{", b"\x1f") else ""
    raw = form_fields(text).get(name)
    return unquote_plus(raw) if raw is not None else None


def normalised(endpoint: str, item: Any, *, client_ip: str | None, token: str | None, times: tuple[int, int]) -> Any:
    if not isinstance(item, dict):
        return item
    out = copy.deepcopy(item)
    if KIND[endpoint] == "event":
        props = out.setdefault("properties", {})
        if client_ip and "ip" not in props:
            props["ip"] = client_ip
        if token:
            props["token"] = token
        if "time" not in props:
            props["time"] = AnyTime(*times)
    else:
        if token:
            out["$token"] = token
        if KIND[endpoint] == "user" and client_ip and "$ip" not in out:
            out["$ip"] = client_ip
    return out


def sent_records(
    requests: list[Sent],
    operation: Any,
    *,
    client_ip: str,
    token: str | None,
    times: tuple[int, int],
) -> list[SentRecord]:
    """Every record in the clients' ingest requests, labelled by `operation(endpoint, record,
    request)`, with its expected normalised form."""
    out: list[SentRecord] = []
    for request in requests:
        if request.endpoint not in INGEST or (request.method != "POST" and "data=" not in request.url):
            continue
        ip = client_ip if flag(request, "ip") == "1" else None
        items = decode(request)
        expected = [normalised(request.endpoint, item, client_ip=ip, token=token, times=times) for item in items]
        as_sent = request.endpoint != "import" and all(map(only_the_ip_added, items, expected))
        for item, normal in zip(items, expected, strict=True):
            label = operation(request.endpoint, item, request)
            out.append(SentRecord(request.client, label, request.endpoint, item, normal, request, as_sent))
    return out
