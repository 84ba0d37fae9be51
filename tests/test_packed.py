"""A lake's buffer chunk (destinations.lake.PackedRows): rows gzip-compressed as they arrive.

What must hold: sealing gives one valid gzip NDJSON object per hour with exactly the rows
added, in order; the raw-size cap is kept; the dead letter gets every row back in bounded
pieces; and the delivery buffer counts compressed bytes, so the flush timer, not the byte
limit, decides when a busy lake writes.
"""

from __future__ import annotations

import gzip
import json
import random

from destinations.deadletter import DeadLetter
from destinations.lake import PackedRows
from destinations.rows import Line
from tests.support import files

HOURS = ("2031-01-01T23", "2031-01-02T00")


def lines(count: int, seed: int = 7) -> list[Line]:
    """Row-like NDJSON with some entropy, alternating between two hours."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        row = {
            "event": rng.choice(["Page Viewed", "Signed Up", "Purchase"]),
            "insert_id": f"id-{i}-{rng.getrandbits(64):016x}",
            "distinct_id": f"user-{rng.randrange(500)}",
            "properties": {"$current_url": f"https://example.com/p/{rng.randrange(10_000)}", "amount": rng.random()},
        }
        out.append((HOURS[(i // 10) % 2], json.dumps(row, separators=(",", ":")).encode()))
    return out


def test_sealed_chunk_is_one_gzip_object_per_hour_with_every_row_in_order():
    rows = lines(1000)
    chunk = PackedRows(level=6)
    for start in range(0, len(rows), 37):  # many small adds, as requests arrive
        assert chunk.add(rows[start : start + 37]) == len(rows[start : start + 37])
    assert len(chunk) == 1000
    assert chunk.raw_bytes == sum(len(line) + 1 for _, line in rows)

    objects = chunk.objects()
    assert [partition for partition, _, _ in objects] == ["dt=2031-01-01/hr=23", "dt=2031-01-02/hr=00"]
    for hour, (_partition, data, count) in zip(HOURS, objects, strict=True):
        expected = [line for h, line in rows if h == hour]
        assert count == len(expected)
        assert gzip.decompress(data) == b"\n".join(expected) + b"\n"
    assert chunk.objects() == objects  # sealing is idempotent: a retried write sends the same bytes
    assert chunk.nbytes == sum(len(data) for _, data, _ in objects) < chunk.raw_bytes / 2


def test_add_after_sealing_is_refused():
    chunk = PackedRows()
    chunk.add(lines(3))
    chunk.objects()
    try:
        chunk.add(lines(1))
    except RuntimeError as exc:
        assert "sealed" in str(exc)
    else:
        raise AssertionError("a sealed chunk took more rows")


def test_chunk_keeps_to_its_raw_size_cap_but_always_takes_one_row():
    rows = lines(50)
    cap = sum(len(line) + 1 for _, line in rows[:10])
    chunk = PackedRows(max_raw_bytes=cap)
    assert chunk.add(rows) == 10
    assert chunk.full and chunk.raw_bytes == cap
    assert chunk.add(rows[10:]) == 0  # full: the buffer opens a new chunk

    huge = [("2031-01-01T23", b'{"big":"' + b"x" * (cap * 3) + b'"}')]
    fresh = PackedRows(max_raw_bytes=cap)
    assert fresh.add(huge) == 1, "an oversized row must still move"
    assert gzip.decompress(fresh.objects()[0][1]) == huge[0][1] + b"\n"


def test_chunk_keeps_to_its_row_cap():
    rows = lines(40)
    chunk = PackedRows(max_rows=25)
    assert chunk.add(rows[:10]) == 10
    assert chunk.add(rows[10:30]) == 15  # up to the cap, across both hours
    assert chunk.full and len(chunk) == 25
    assert chunk.add(rows[25:]) == 0
    held = [line for _, data, _ in chunk.objects() for line in gzip.decompress(data).splitlines()]
    assert sorted(held) == sorted(line for _, line in rows[:25])


def test_chunk_keeps_to_its_compressed_size_cap_batch_max_bytes():
    """Lakes count BATCH_MAX_BYTES compressed: a chunk closes once it holds that much gzip,
    not after that much NDJSON (which would cut one object per flush into several). The
    compressor emits in blocks, so the count lags what was added: a chunk closes at the
    first add that finds the cap reached."""
    rows = lines(20000)
    raw = sum(len(line) + 1 for _, line in rows)
    chunk = PackedRows(level=6, max_packed_bytes=4096)
    taken = 0
    while not chunk.full:
        got = chunk.add(rows[taken : taken + 50])
        assert got
        taken += got
    assert chunk.nbytes >= 4096 and chunk.raw_bytes > 4096  # more NDJSON than the cap: it counts gzip
    assert chunk.add(rows[taken:]) == 0
    assert taken < len(rows) and raw > chunk.raw_bytes


def test_pieces_give_back_every_row_in_bounded_pieces():
    rows = lines(3000)
    chunk = PackedRows()
    chunk.add(rows)
    pieces = list(chunk.pieces(max_bytes=20_000))
    longest = max(len(line) for _, line in rows) + 1
    assert len(pieces) > 5
    assert all(sum(len(line) + 1 for _, line in piece) < 20_000 + longest for piece in pieces)
    by_hour = {hour: [line for h, line in rows if h == hour] for hour in HOURS}
    assert [line for piece in pieces for line in piece] == [(h, line) for h in HOURS for line in by_hour[h]]


def test_a_failed_packed_chunk_is_dead_lettered_in_pieces_and_nothing_is_lost(tmp_path):
    rows = lines(2000)
    chunk = PackedRows()
    chunk.add(rows)
    dead_letter = DeadLetter(str(tmp_path / "spool"))
    for piece in chunk.pieces(max_bytes=50_000):
        dead_letter.put("s3", "events", piece, "transient: test", 3, encoded=True)
    batches = list(dead_letter.batches("s3"))
    assert len(batches) > 1
    spooled = sorted(row["insert_id"] for batch in batches for row in batch.rows)
    assert spooled == sorted(json.loads(line)["insert_id"] for _, line in rows)


def test_lake_buffer_counts_compressed_bytes_and_one_flush_writes_one_object(make_app, tmp_path):
    app = make_app(delivery="batch", batch_max_seconds="3600")
    files_destination = next(d for d in app.extensions["mpproxy"].destinations if d.name == "files")
    client = app.test_client()
    sent = 0
    for request in range(40):
        batch = [
            {
                "event": "Page Viewed",
                "properties": {
                    "distinct_id": f"user-{i % 97}",
                    "time": 1767225600 + i,
                    "$insert_id": f"r{request}-{i}",
                    "$current_url": f"https://example.com/p/{i * 7919 % 10007}",
                },
            }
            for i in range(request * 50, request * 50 + 50)
        ]
        assert client.post("/track", json=batch).data == b"1"
        sent += len(batch)

    health = files_destination.health()
    assert health["buffered_rows"] == sent
    written = files_destination.flush()
    assert written == sent
    objects = files.objects(tmp_path / "data", "events")
    assert len(objects) == 1, objects
    raw = sum(len(line) + 1 for line in gzip.decompress(objects[0].read_bytes()).splitlines())
    # What the buffer held is what was written, compressed: a fraction of the NDJSON.
    assert health["buffered_bytes"] <= objects[0].stat().st_size < raw / 3
    assert sorted(json.loads(line)["insert_id"] for line in gzip.decompress(objects[0].read_bytes()).splitlines()) == sorted(
        f"r{r}-{i}" for r in range(40) for i in range(r * 50, r * 50 + 50)
    )
