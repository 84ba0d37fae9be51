"""Decode whatever a Mixpanel SDK sent into plain JSON values (pure, no Flask).

The order of checks follows docs/wire-formats.md: gunzip; raw JSON or NDJSON when the
body starts with `[` or `{`; otherwise a form body (`data=...`), else `data` from
the query string; a `data` value is JSON, or base64 of UTF-8 JSON. The decision is
made from the bytes, never from the Content-Type (sendBeacon sends `text/plain`).
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

GZIP_MAGIC = b"\x1f\x8b"
TRUE_FLAGS = {"1", "true"}


class PayloadError(ValueError):
    """The request cannot be decoded; the message is one line, safe to show the client."""

    status = 400


class PayloadTooLarge(PayloadError):
    status = 413


@dataclass(frozen=True)
class Decoded:
    items: list[Any]
    # Flags taken from the query string or the form body (Python sends them in the body).
    params: Mapping[str, str] = field(default_factory=dict)
    # The payload came in a `data` field (form body or query), the SDKs' way of calling
    # every endpoint: /import then answers like /track (`1`), as the SDKs expect.
    legacy: bool = False

    @property
    def verbose(self) -> bool:
        return self.params.get("verbose", "").lower() in TRUE_FLAGS

    @property
    def ip_enabled(self) -> bool:
        return self.params.get("ip", "1").lower() not in {"0", "false"}


def gunzip(body: bytes, max_bytes: int) -> bytes:
    """Inflate a gzip (or zlib) body, refusing to produce more than `max_bytes` (gzip bombs)."""
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: auto-detect gzip or zlib header
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error:
        raise PayloadError("body is not valid gzip") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"body exceeds {max_bytes} bytes after gunzip")
    if not inflater.eof:
        raise PayloadError("gzip body is truncated")
    return out


def _paired(raw: bytes) -> str | bytes:
    """The browser SDK's own UTF-8 encoder writes each half of a UTF-16 surrogate pair as
    three bytes of its own (CESU-8): an emoji arrives as ED A0 BC ED BE 89. A strict UTF-8
    decoder refuses that and json.loads keeps two lone halves, which no encoder writes back
    (the emoji became `??` everywhere); Mixpanel reads it as the one character. Re-pair."""
    if b"\xed" not in raw:  # no surrogate half can be there: the hot path stays bytes
        return raw
    try:
        text = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return raw  # not UTF-8 at all: json.loads says so
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _loads(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(_paired(text) if isinstance(text, bytes) else text)
    except (ValueError, RecursionError):
        raise PayloadError(f"{what} is not valid JSON") from None


def _loads_json_or_ndjson(text: bytes) -> Any:
    try:
        return json.loads(_paired(text))
    except (ValueError, RecursionError):
        pass
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise PayloadError("body is not valid JSON")
    items = []
    for number, line in enumerate(lines, 1):
        try:
            items.append(json.loads(_paired(line)))
        except (ValueError, RecursionError):
            raise PayloadError(f"line {number} of the NDJSON body is not valid JSON") from None
    return items


def decode_data_value(value: str) -> Any:
    """A `data` value: JSON as is, otherwise base64 (standard or URL-safe) of UTF-8 JSON."""
    stripped = value.strip()
    if stripped[:1] in ("[", "{"):
        return _loads(stripped, "data")
    if not stripped:
        raise PayloadError("data is empty")
    # A form parser turned Node's raw `+` into spaces; legacy Swift wraps with CRLF.
    compact = "".join(stripped.replace(" ", "+").split())
    compact += "=" * (-len(compact) % 4)
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    try:
        raw = base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError("data is neither JSON nor base64") from None
    return _loads(raw, "base64-decoded data")


_FORM_ESCAPES = ((b"%2B", b"+"), (b"%2F", b"/"), (b"%3D", b"="))  # encodeURIComponent's, upper case


def _fast_base64_form(body: bytes) -> bytes | None:
    """The browser SDK's body, `data=<percent-encoded base64>` and nothing else, decoded
    without a general form parser (the hot path). None when the body is anything else.
    Equivalent to the general path: a raw `+` would be a space there, turned back into `+`.
    `a2b_base64` in strict mode is the validation: anything but the base64 alphabet
    (another field's `&`, a stray escape) sends the body down the general path."""
    if not body.startswith(b"data="):
        return None
    value = body[5:]
    if b"%" in value:
        for escape, char in _FORM_ESCAPES:
            value = value.replace(escape, char)
        if b"%" in value:
            for escape, char in _FORM_ESCAPES:
                value = value.replace(escape.lower(), char)
            if b"%" in value:
                return None
    value += b"=" * (-len(value.rstrip(b"=")) % 4) if len(value) % 4 else b""
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        return None  # let the general path produce the error message


def _as_items(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    raise PayloadError("payload must be a JSON object or an array of objects")


def decode(body: bytes, query: Mapping[str, str], content_encoding: str | None = None, max_bytes: int = 10 << 20) -> Decoded:
    """Decode one request. Raises PayloadError (400) or PayloadTooLarge (413)."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"body exceeds {max_bytes} bytes")
    encoding = (content_encoding or "").strip().lower()
    if encoding in {"gzip", "x-gzip", "deflate"} or body[:2] == GZIP_MAGIC:
        body = gunzip(body, max_bytes) if body else body  # a GET may carry the header and no body
    elif encoding not in {"", "identity"}:
        raise PayloadError(f"unsupported Content-Encoding {encoding!r}")

    params = {k: v for k, v in query.items() if k != "data"}
    head = body.lstrip()[:1]
    if head in (b"[", b"{"):
        return Decoded(_as_items(_loads_json_or_ndjson(body)), params)

    fast = _fast_base64_form(body)
    if fast is not None:
        return Decoded(_as_items(_loads(fast, "base64-decoded data")), params, legacy=True)

    data: str | None = None
    if body.strip():
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("body is not UTF-8") from None
        for key, value in parse_qsl(text, keep_blank_values=True):
            if key == "data":
                data = value
            else:
                params[key] = value
    if data is None:
        data = query.get("data")
    if data is None and body.strip():
        # A bare base64 body (curl users, some beacons) rather than a form.
        params = {k: v for k, v in query.items() if k != "data"}
        data = text
    if data is None:
        raise PayloadError("no data: send a JSON body, a form field `data`, or `data` in the query string")
    return Decoded(_as_items(decode_data_value(data)), params, legacy=True)
