"""Segment files: framing, appending, reading back with torn-tail detection, acknowledgements.

A segment holds one frame per request, written back to back:

    magic   4 bytes   b"\\xf0WAZ": the payload is a zlib stream (ISA-L level 1); b"\\xf0WAL": stored as is
    length  uint32    stored payload bytes
    index   uint32    the record's number within this segment: 0, 1, 2, ...
    crc     uint32    CRC-32 of length, index and stored payload

(big-endian), then the payload (destinations/wal/payload.py). Compression (core/codec.py
`deflate`) costs about 50 us per 50-event browser batch and makes the frame about 7 times smaller, and bytes are what an
fsync has to push to the disk (see docs/buffer.md, "Cost"). A reader trusts a frame only
when its magic, length and checksum agree. At the first frame that does not, it has found
a torn write (a crash in the middle of an append) or damage: it skips ahead to the next
frame that proves itself by its checksum, so one bad record does not cost the intact ones
after it, and reports how many bytes it skipped.

Next to each segment, `<segment>.ack` lists the rows destinations have taken, one line
per piece: `destination TAB record index TAB table TAB first row TAB row count`. Lines are
appended with plain writes and no fsync: a killed process leaves them in the page cache,
so after SIGKILL only a write the kill caught between the destination's commit and this
line is sent again. After a host crash some lines may be missing and those rows are sent
twice (at least once; destinations that de-duplicate by insert_id store them once). A
torn last line is ignored the same way.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from core import codec

MAGIC = b"\xf0WAL"  # 0xF0 'W' never occurs in UTF-8 text, so neither marker hides inside a JSON payload
ZMAGIC = b"\xf0WAZ"
SYNC = MAGIC[:3]
HEADER = struct.Struct(">4sIII")
LEVEL = 1
# A payload smaller than this (a request of one or a few records) is deflated at ISA-L's
# level 0: about 3 us instead of 10 for a single event's ~1.4 KB, at 2:1 instead of 3:1.
SMALL_PAYLOAD = 4096
SUFFIX = ".seg"
ACK_SUFFIX = ".ack"


class BufferFull(Exception):
    """The write-ahead buffer cannot keep a request's rows: the request is answered 503."""

    def __init__(self, message: str, reason: str = "buffer_full") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Packed:
    """A payload as it will be stored (compressed outside any lock, framed under the log's)."""

    stored: bytes
    compressed: bool

    @property
    def frame_size(self) -> int:
        return HEADER.size + len(self.stored)


def pack(payload: bytes, compress: bool = True) -> Packed:
    if not compress:
        return Packed(payload, False)
    return Packed(codec.deflate(payload, LEVEL if len(payload) >= SMALL_PAYLOAD else 0), True)


def frame(index: int, payload: bytes | Packed, compress: bool = True) -> bytes:
    packed = payload if isinstance(payload, Packed) else pack(payload, compress)
    head = struct.pack(">II", len(packed.stored), index)
    crc = struct.pack(">I", codec.crc32(packed.stored, codec.crc32(head)))
    return (ZMAGIC if packed.compressed else MAGIC) + head + crc + packed.stored


def _frame_at(data: bytes | memoryview, pos: int) -> tuple[int, int, bool] | None:
    """(index, end, compressed) of an intact frame starting at `pos`, else None."""
    if len(data) - pos < HEADER.size:
        return None
    magic, length, index, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + length
    if magic not in (MAGIC, ZMAGIC) or end > len(data):
        return None
    body = data[pos + HEADER.size : end]
    if codec.crc32(body, codec.crc32(bytes(data[pos + 4 : pos + 12]))) != crc:
        return None
    return index, end, magic == ZMAGIC


@dataclass
class Scan:
    """What a segment file holds: its intact records, and what was damaged."""

    records: list[tuple[int, bytes]] = field(default_factory=list)  # (index, payload)
    damaged_bytes: int = 0
    damaged_regions: int = 0


def scan(data: bytes) -> Scan:
    out = Scan()
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        found = _frame_at(view, pos)
        if found is not None:
            index, end, compressed = found
            stored = view[pos + HEADER.size : end]
            try:
                out.records.append((index, codec.inflate(stored) if compressed else bytes(stored)))
            except ValueError:  # checksummed yet not inflatable: only a bug writes that; count it as damage
                out.damaged_bytes += end - pos
                out.damaged_regions += 1
            pos = end
            continue
        resume = data.find(SYNC, pos + 1)
        while resume != -1 and _frame_at(view, resume) is None:
            resume = data.find(SYNC, resume + 1)
        stop = len(data) if resume == -1 else resume
        out.damaged_bytes += stop - pos
        out.damaged_regions += 1
        pos = stop
    return out


class SegmentFile:
    """The segment a worker appends to. Not thread-safe: the log's lock serialises appends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0
        self.records = 0

    def append(self, payload: bytes | Packed) -> tuple[int, int]:
        """Write one frame; return (its index, bytes written). On any error (a full disk, a
        short write) the file is cut back to where it was, so a failed append leaves no torn
        frame behind, and the error is raised."""
        data = frame(self.records, payload)
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                wrote = os.write(self.fd, view[done:])
                if wrote <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += wrote
        except OSError:
            if done:
                try:
                    os.ftruncate(self.fd, self.size)
                    os.lseek(self.fd, self.size, os.SEEK_SET)
                except OSError:
                    pass
            raise
        index = self.records
        self.records += 1
        self.size += len(data)
        return index, len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- acknowledgements ---------------------------------------------------------------------

Piece = tuple[int, str, int, int]  # (record index, table, first row, row count)


def ack_lines(destination: str, pieces: list[Piece]) -> bytes:
    return "".join(f"{destination}\t{index}\t{table}\t{start}\t{count}\n" for index, table, start, count in pieces).encode()


def read_acks(path: Path) -> dict[tuple[str, int, str], list[tuple[int, int]]]:
    """(destination, record index, table) -> [(first row, row count)] from an ack file.
    Lines that do not parse (a torn last line) are ignored: their rows are sent again."""
    out: dict[tuple[str, int, str], list[tuple[int, int]]] = defaultdict(list)
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return out
    for line in text.split("\n"):
        parts = line.split("\t")
        if len(parts) != 5:
            continue
        try:
            out[(parts[0], int(parts[1]), parts[2])].append((int(parts[3]), int(parts[4])))
        except ValueError:
            continue
    return out


def remaining(total: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (start, count) runs of rows 0..total-1 that no acknowledged piece covers."""
    if not taken:
        return [(0, total)] if total else []
    covered = bytearray(total)
    for start, count in taken:
        for i in range(max(0, start), min(total, start + count)):
            covered[i] = 1
    runs: list[tuple[int, int]] = []
    i = 0
    while i < total:
        if covered[i]:
            i += 1
            continue
        j = i
        while j < total and not covered[j]:
            j += 1
        runs.append((i, j - i))
        i = j
    return runs


def ack_path(segment: Path) -> Path:
    return segment.with_name(segment.name[: -len(SUFFIX)] + ACK_SUFFIX)
