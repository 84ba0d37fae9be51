"""Decode whatever a Mixpanel SDK sent into plain JSON values (pure, no Flask).

The order of checks follows docs/wire-formats.md: gunzip (every member); raw JSON or
NDJSON when the body starts with `[` or `{`; otherwise a form body (`data=...`), else
`data` from the query string; a `data` value is JSON, or base64 of UTF-8 JSON. The
decision is made from the bytes, never from the Content-Type (sendBeacon sends `text/plain`).

What a value becomes is decided here, once, so that Mixpanel, the lakes and the
warehouses all receive the same thing (docs/wire-formats.md, "Odd values"):
`NaN`, `Infinity`, `-Infinity` and numbers too large for a double become `null`, as
JavaScript's `JSON.stringify` makes them; a lone UTF-16 surrogate (`"\\ud800"` without
its pair), which no UTF-8 encoder can write, becomes U+FFFD; integers stay exact.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pybase64

from core import codec

GZIP_MAGIC = b"\x1f\x8b"
TRUE_FLAGS = {"1", "true"}
# `cat a.gz b.gz` is one valid gzip body; a body of thousands of empty members is an attack.
MAX_GZIP_MEMBERS = 1000
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class PayloadError(ValueError):
    """The request cannot be decoded; the message is one line, safe to show the client."""

    status = 400


class PayloadTooLarge(PayloadError):
    status = 413


class BodyTimeout(PayloadError):
    """The body did not arrive within BODY_READ_TIMEOUT_SECONDS."""

    status = 408


@dataclass(frozen=True)
class Decoded:
    items: list[Any]
    # Flags taken from the query string or the form body (Python sends them in the body).
    params: Mapping[str, str] = field(default_factory=dict)
    # The payload came in a `data` field (form body or query), the SDKs' way of calling
    # every endpoint: /import then answers like /track (`1`), as the SDKs expect.
    legacy: bool = False
    # The JSON array `items` were read from, byte for byte (after gzip, form and base64), when
    # orjson read them from it as they were: nothing repaired, one array. Mixpanel can be sent
    # these bytes where the records were not changed (core/records.py, `sent_as_is`).
    raw: bytes | None = None

    @property
    def verbose(self) -> bool:
        return self.params.get("verbose", "").lower() in TRUE_FLAGS

    @property
    def ip_enabled(self) -> bool:
        return self.params.get("ip", "1").lower() not in {"0", "false"}


def gunzip(body: bytes, max_bytes: int) -> bytes:
    """Inflate a gzip (or zlib) body, every member of it (`cat a.gz b.gz` is valid gzip),
    refusing to produce more than `max_bytes` (gzip bombs). Zero padding after the last
    member is ignored; anything else after it is an error, never silently dropped."""
    parts: list[bytes] = []
    produced = 0
    data = body
    for _member in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits=47)  # 32 + 15: auto-detect gzip or zlib header
        try:
            out = inflater.decompress(data, max_bytes + 1 - produced)
        except zlib.error:
            raise PayloadError("body is not valid gzip") from None
        produced += len(out)
        if produced > max_bytes or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"body exceeds {max_bytes} bytes after gunzip")
        if not inflater.eof:
            raise PayloadError("gzip body is truncated")
        parts.append(out)
        data = inflater.unused_data
        if not data.strip(b"\x00"):
            return parts[0] if len(parts) == 1 else b"".join(parts)
    raise PayloadError(f"gzip body has more than {MAX_GZIP_MEMBERS} members")


def _finite(literal: str) -> float | None:
    """A JSON float literal; one too large for a double (`1e999`) is null, like NaN."""
    value = float(literal)
    return value if math.isfinite(value) else None


def _constant(_name: str) -> None:
    """`NaN`, `Infinity`, `-Infinity`: not JSON, but Python's json.dumps writes them."""
    return None


def _json(text: str) -> Any:
    value = json.loads(text, parse_float=_finite, parse_constant=_constant)
    # A surrogate can only come from a `\\uD800`-style escape (bytes are decoded strictly):
    # only a body holding one, a lone one or half of a pair, is walked. Most bodies hold no
    # backslash at all, which memchr tells at once; the regex costs a scan of the rest.
    if "\\" in text and _SURROGATE_ESCAPE.search(text):
        value = _replace_lone_surrogates(value)
    return value


def _clean(text: str) -> str:
    if text.isascii() or not _LONE_SURROGATE.search(text):  # isascii() is O(1) in CPython
        return text
    return _LONE_SURROGATE.sub("\ufffd", text)


def _replace_lone_surrogates(value: Any) -> Any:
    """Replace unpaired surrogates in every string, key or value, in place (iteratively:
    the nesting json.loads accepted must not overflow the stack here)."""
    if isinstance(value, str):
        return _clean(value)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(isinstance(k, str) and _clean(k) is not k for k in node):
                items = [(_clean(k), v) for k, v in node.items()]
                node.clear()
                node.update(items)
            for key, item in node.items():
                if isinstance(item, str):
                    node[key] = _clean(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, str):
                    node[index] = _clean(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
    return value


def _utf8(raw: bytes, what: str) -> str:
    """Strict UTF-8, a leading BOM allowed (json.loads would let encoded surrogates
    through: it decodes bytes with `surrogatepass`)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        if b"\xed" not in raw:  # no encoded surrogate half: simply not UTF-8
            raise PayloadError(f"{what} is not UTF-8") from None
    # The browser SDK's own UTF-8 encoder writes each half of a UTF-16 surrogate pair as
    # three bytes of its own (CESU-8): an emoji arrives as ED A0 BC ED BE 89. Mixpanel reads
    # it as the one character, so re-pair the halves; a half left alone becomes U+FFFD, as
    # a lone `\ud800` escape does (decided once, here, for every destination).
    try:
        text = raw.decode("utf-8-sig", "surrogatepass")
    except UnicodeDecodeError:
        raise PayloadError(f"{what} is not UTF-8") from None
    return _clean(text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass"))


_MISS = object()


def _fast(raw: bytes) -> Any:
    """orjson's reading of `raw`, where it equals json.loads' (2-2.5x faster: bench.micro), or _MISS.
    Whatever orjson refuses (NaN, 1e999, lone surrogates, CESU-8, a BOM, deep nesting,
    invalid JSON) goes the exact way, which accepts, repairs or rejects it as always."""
    if codec.may_hold_big_int(raw):  # orjson would round an integer beyond 64 bits: json.loads is exact
        return _MISS
    try:
        return orjson.loads(raw)
    except ValueError:  # orjson.JSONDecodeError
        return _MISS


def _loads(text: str | bytes, what: str) -> Any:
    if isinstance(text, bytes):
        value = _fast(text)
        if value is not _MISS:
            return value
    return _exact(text, what)


def _exact(text: str | bytes, what: str) -> Any:
    """The exact reading of JSON orjson did not take (see _fast); PayloadError if it is not JSON."""
    if isinstance(text, bytes):
        text = _utf8(text, what)
    try:
        return _json(text)
    except (ValueError, RecursionError):
        raise PayloadError(f"{what} is not valid JSON") from None


def _exact_json_or_ndjson(body: bytes) -> Any:
    """A JSON or NDJSON body orjson did not take (see _fast), read exactly."""
    text = _utf8(body, "body")
    try:
        return _json(text)
    except (ValueError, RecursionError):
        pass
    # Lines end at \n, \r\n or \r only: str.splitlines() would also split inside a value at
    # U+2028 and the like, which JSON strings may hold unescaped.
    lines = [line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line.strip()]
    if len(lines) < 2:
        raise PayloadError("body is not valid JSON")
    items = []
    for number, line in enumerate(lines, 1):
        try:
            items.append(_json(line))
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
_FORM_ESCAPE = {e[1:]: c for escape, c in _FORM_ESCAPES for e in (escape, escape.lower())}
_FEW_ESCAPES = 64


def _unescape_few(value: bytes) -> bytes | None:
    """`value` with its `%2B`, `%2F` and `%3D` escapes undone, when it holds at most
    _FEW_ESCAPES escapes and only those; else None. Base64 of ASCII JSON holds few `+` and
    `/` (only `>`, `?`, `~` and DEL at one position of three make them), so the escapes
    are found with `find` (memchr) and the pieces between them joined once: one pass,
    where counting and splitting took two and replacing takes one per kind of escape."""
    at = value.find(b"%")
    if at < 0:
        return value
    parts: list[bytes] = []
    start = 0
    while at >= 0:
        char = _FORM_ESCAPE.get(value[at + 1 : at + 3])
        if char is None or len(parts) >= 2 * _FEW_ESCAPES:
            return None
        parts += (value[start:at], char)
        start = at + 3
        at = value.find(b"%", start)
    parts.append(value[start:])
    return b"".join(parts)


def _fast_base64_form(body: bytes) -> bytes | None:
    """The browser SDK's body, `data=<percent-encoded base64>` and nothing else, decoded
    without a general form parser (the hot path). None when the body is anything else.
    Equivalent to the general path: a raw `+` would be a space there, turned back into `+`.
    Strict base64 is the validation: anything but the base64 alphabet
    (another field's `&`, a stray escape) sends the body down the general path."""
    if not body.startswith(b"data="):
        return None
    value = body[5:]
    unescaped = _unescape_few(value)
    if unescaped is not None:
        value = unescaped
    else:  # many escapes, or another kind (left as `%`, which sends the body down the general path)
        for escape, char in _FORM_ESCAPES:
            value = value.replace(escape, char)
        if b"%" in value:
            for escape, char in _FORM_ESCAPES:
                value = value.replace(escape.lower(), char)
            if b"%" in value:
                return None
    value += b"=" * (-len(value.rstrip(b"=")) % 4) if len(value) % 4 else b""
    try:
        # SIMD base64: 2 us where a2b_base64 takes 118 us for a 50-event batch (bench/micro.py).
        # It accepts a subset of what strict a2b_base64 does, with the same result
        # (tests/test_property.py); the rest, e.g. excess padding, is a2b_base64's to judge.
        return pybase64.b64decode(value, validate=True)
    except ValueError:
        pass
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
        value = _fast(body)
        if value is _MISS:
            return Decoded(_as_items(_exact_json_or_ndjson(body)), params)
        return Decoded(_as_items(value), params, raw=body if value.__class__ is list else None)

    fast = _fast_base64_form(body)
    if fast is not None:  # mixpanel-browser's body
        value = _fast(fast)
        if value is _MISS:
            return Decoded(_as_items(_exact(fast, "base64-decoded data")), params, legacy=True)
        return Decoded(_as_items(value), params, legacy=True, raw=fast if value.__class__ is list else None)

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
