"""JSON and gzip, the one way the code base does them.

JSON goes through orjson (C; about 5x the standard library's encoder on our rows, see
bench/). Its output is compact UTF-8 like `json.dumps(..., ensure_ascii=False,
separators=(",", ":"))`; the one textual difference is exponent floats (`1e16`, not
`1e+16`), the same number. What orjson refuses (integers beyond 64 bits, non-string
keys, lone surrogates, odd types from a transform) falls back to the standard library.

gzip goes through ISA-L (`isal`), which writes standard gzip streams that zcat,
Athena, BigQuery and every gzip reader take, at a fraction of zlib's CPU: measured on
our NDJSON rows, ISA-L level 2 compresses 7.3:1 for 1.1 µs a row where zlib level 6 does
8.8:1 for 7.2 µs (bench/RESULTS.md). ISA-L has levels 0-3; `gzip_level()` maps the
familiar 1-9 scale onto them.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from isal import isal_zlib

GZIP_WBITS = 31  # a gzip header and trailer: the bytes are a .gz file as they are


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; never raises for JSON-like data (odd types become strings)."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        return text.encode("utf-8", "replace")


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


# orjson reads an integer beyond 64 bits as a float, silently. The shortest such integer
# (negative) has 19 digits: JSON with a run of 19 digits anywhere is read by json.loads.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def may_hold_big_int(data: bytes) -> bool:
    """Whether `data` has a run of 19 digits, which orjson might read inexactly."""
    return _LONG_DIGIT_RUN in data.translate(_DIGITS_ONLY)


def loads_exact(data: bytes) -> Any:
    """JSON this proxy wrote (a buffered row or record), read back to the value it encoded:
    orjson, or the standard library where orjson would round an integer beyond 64 bits."""
    if not may_hold_big_int(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def gzip_level(level: int) -> int:
    """zlib's 1-9 scale onto ISA-L's 0-3: 1 -> 0, 2-3 -> 1, 4-9 -> 2. ISA-L's level 3 costs
    three times level 2 for no better ratio on NDJSON rows (bench/), so nothing maps to it."""
    return 0 if level <= 1 else 1 if level <= 3 else 2


def compressor(level: int) -> Any:
    """A streaming gzip compressor (`compress`, `flush`) at a zlib-scale level."""
    return isal_zlib.compressobj(gzip_level(level), isal_zlib.DEFLATED, GZIP_WBITS)


def deflate(data: bytes, level: int = 1) -> bytes:
    """A zlib stream (what `zlib.decompress` reads) at ISA-L's `level` (0-3): the
    write-ahead buffer's frames. Level 1: about 51 us and 7.3:1 on a 50-event browser
    batch's rows, where zlib's level 1 takes 178 us for 7.1:1."""
    return isal_zlib.compress(data, level)


def inflate(data: bytes | memoryview) -> bytes:
    """The bytes of a zlib stream; ValueError when it is not one."""
    try:
        return isal_zlib.decompress(data)
    except isal_zlib.error as exc:
        raise ValueError(f"not a zlib stream: {exc}") from None


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32 as `zlib.crc32` computes it, about 9 times faster (ISA-L)."""
    return isal_zlib.crc32(data, value)


def gzip(data: bytes | bytearray, level: int) -> bytes:
    """One gzip stream of `data`, at a zlib-scale level."""
    stream = compressor(level)
    return stream.compress(data) + stream.flush()
