"""Summarise py-spy's raw (collapsed) stacks: self and inclusive share of samples per function."""

from __future__ import annotations

from collections import Counter

PROJECT_DIRS = ("proxy/", "destinations/", "core/", "app.py", "gunicorn.conf.py")
# Where busy time goes, by phase: the first rule whose every needle appears in a stack wins.
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("upstream: gzip of the body (mixpanel.py write)", ("MixpanelDestination.write", "gzip (core/codec.py")),
    (
        "upstream: JSON encode (mixpanel.py chunks)",
        ("MixpanelDestination.write", "chunks (destinations/mixpanel.py"),
    ),
    ("upstream: the HTTP call (core/http.py) + socket I/O", ("MixpanelDestination.write",)),
    ("write-ahead buffer: append (frame, compress, write)", ("DiskBuffer.append",)),
    (
        "write-ahead buffer: fsync syscalls (its own OS thread, off the GIL; mostly waiting on the disk)",
        ("_fsync_all (destinations/wal/log.py",),
    ),
    ("write-ahead buffer: fsync rounds and waiting for them", ("WriteAheadLog.",)),
    ("lake flush: NDJSON encode (lake.py encode_objects)", ("encode_objects", "dumps_row")),
    ("lake flush: gzip (lake.py _gzip)", ("_gzip (destinations/lake.py",)),
    ("lake flush: object write (put: files fsync / S3 PUT)", ("LakeWriter.write",)),
    ("lake flush: other", ("RowDestination.flush",)),
    ("buffer: rows into the destination's buffer (delivery.py)", ("RowDestination.write",)),
    ("rows: to_rows / event_row", ("to_rows (destinations/rows.py",)),
    ("decode: form + base64 + JSON (payloads.py)", ("(proxy/payloads.py",)),
    ("normalize (records.py)", ("normalize (core/records.py",)),
    ("reply JSON (replies.py)", ("(proxy/replies.py",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("request plumbing: gunicorn/werkzeug/flask/gevent", ()),
)


# Leaf frames of an OS thread that is waiting, not working: py-spy's --nonblocking mode
# records them although the thread holds no CPU (the write-ahead log's syncer sleeping out
# its interval, or blocked on its wake-up lock). They are idle time, like the gevent hub in epoll.
IDLE_LEAVES = ("native_sleep (core/green.py", "WriteAheadLog._sync_loop (destinations/wal/log.py")


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]


def is_project(frame: str) -> bool:
    location = frame.rsplit("(", 1)[-1]
    return location.startswith(PROJECT_DIRS)


def summarize(raw: str, top: int = 15) -> dict:
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        joined = ";".join(frames)
        phase = next(name for name, needles in PHASES if all(n in joined for n in needles))
        phases[phase] += count
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}

    def rows(counter: Counter[str], keep: object = None, limit: int = top) -> list[dict]:
        picked = [(f, c) for f, c in counter.most_common() if keep is None or keep(f)][:limit]
        return [{"function": f, "samples": c, "percent": round(100 * c / total, 1)} for f, c in picked]

    return {
        "samples": total,
        "self": rows(self_counts),
        "phases": [{"phase": p, "samples": c, "percent": round(100 * c / total, 1)} for p, c in phases.most_common()],
        "inclusive_project": rows(inclusive, is_project, 20),
        "inclusive": rows(inclusive, None, 25),
    }
