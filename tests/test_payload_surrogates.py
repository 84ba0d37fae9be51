"""The browser SDK's UTF-8 encoder writes a character outside the Basic Multilingual Plane
(an emoji) as two three-byte surrogate halves (CESU-8). The proxy must read it as the one
character, as Mixpanel does, not as two lone halves that end up as `??`."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

from destinations.rows import dumps_row
from proxy.payloads import decode

TEXT = "naïve 🎉 👩‍💻 𝄞 한국어"
PAYLOAD = {"event": "e", "properties": {"text": TEXT, TEXT: 1}}


def cesu8(value: object) -> bytes:
    """JSON as mixpanel-browser's _.utf8Encode writes it: each UTF-16 code unit on its own."""
    text = json.dumps(value, ensure_ascii=False)
    units = memoryview(text.encode("utf-16-le")).cast("H")
    encoded = "".join(chr(unit) for unit in units).encode("utf-8", "surrogatepass")
    assert b"\xed\xa0" in encoded  # really surrogate halves
    return encoded


def test_browser_base64_with_surrogate_halves_decodes_to_the_characters() -> None:
    body = b"data=" + quote(base64.b64encode(cesu8(PAYLOAD)).decode(), safe="").encode()
    [item] = decode(body, {}).items
    assert item == PAYLOAD
    assert TEXT in dumps_row({"p": item}).decode("utf-8")


def test_json_and_ndjson_bodies_with_surrogate_halves() -> None:
    line = cesu8(PAYLOAD)
    assert decode(line, {}).items == [PAYLOAD]
    assert decode(line + b"\n" + line, {}).items == [PAYLOAD, PAYLOAD]


def test_plain_utf8_and_escaped_pairs_are_unchanged() -> None:
    assert decode(json.dumps(PAYLOAD, ensure_ascii=False).encode(), {}).items == [PAYLOAD]
    assert decode(json.dumps(PAYLOAD).encode(), {}).items == [PAYLOAD]
    assert decode(b"data=" + base64.b64encode(json.dumps(PAYLOAD).encode()), {}).items == [PAYLOAD]
