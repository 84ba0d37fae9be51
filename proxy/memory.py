"""Keep worker memory flat under glibc's malloc, and the garbage collector off the request path.

glibc serves large blocks (at first, 128 KiB and up) with mmap and returns them to the
system when freed, but every time such a block is freed it raises its mmap threshold to
that block's size (up to 32 MiB). A lake flush frees one object-sized block (about
10 MiB of gzip per worker at 10,000 events/s), after which blocks that size come from
the heap and stay resident: a one-time step of about one object per worker. Measured
with `bench/` (browser batches, Mixpanel + files): RSS 62 MiB, then 72 MiB from the
fourth flush on; with the threshold pinned, flat.

Pinning M_MMAP_THRESHOLD (what the `MALLOC_MMAP_THRESHOLD_` environment variable does
at start-up) turns that adjustment off, and with it the trim threshold's: left at its
128 KiB default, the heap is trimmed and regrown around every large request (measured:
+20% CPU per event on 2,000-event /import batches), so it is pinned too, at 16 MiB.
An operator who set either variable keeps glibc's behaviour as configured; on other C
libraries (musl, macOS) this does nothing.

CPython's cyclic garbage collector starts a young-generation pass whenever tracked
containers (dicts, lists, objects) allocated outnumber those freed by 700. A 50-event
browser batch holds a few hundred of them while it is handled (each event's dict and
properties, its record, its row), so with 32 requests in flight a worker ran a pass every
second or third request, promoted the live requests' objects to the older generations,
and every few seconds walked everything in the process in a full pass of about 50 ms
(the ~50,000 objects the imports leave behind). Measured with gc.callbacks under the
benchmark's load (browser batches, Mixpanel + files): 0.75-1.0 s of collection per
worker in a 14 s run, about 6% of its CPU. `tune_gc()`, run once per gunicorn worker when it
starts serving, freezes what exists then (imports, the app, its destinations: never
garbage, never scanned again) and lets the young generation grow to 10,000 before a
pass. Objects a request makes are freed by reference counting when it ends, so passes
become rare (0-8 in the same run, 0.02 s in all) while garbage cycles are still
collected once 10,000 accumulate. Each pass is counted, with its time, in /metrics
(`mpproxy_gc_collections_total`, `mpproxy_gc_seconds_total`).
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
from typing import Any

from core import metrics

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 << 20  # request buffers stay on the heap; lake objects beyond this are mmapped
TRIM_THRESHOLD_BYTES = 16 << 20
GC_YOUNG_THRESHOLD = 10_000  # CPython's default: 700


def pin_mmap_threshold(mmap_bytes: int = MMAP_THRESHOLD_BYTES, trim_bytes: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap and trim thresholds; True if they were set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, mmap_bytes) == 1 and mallopt(M_TRIM_THRESHOLD, trim_bytes) == 1


def tune_gc(young_threshold: int = GC_YOUNG_THRESHOLD) -> None:
    """Freeze the objects that exist now, raise the young generation's threshold to
    `young_threshold` (never lowering one already set higher) and count every pass in
    /metrics. Call it once, in a worker that has built its app and is about to serve."""
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    young, *older = gc.get_threshold()
    if young_threshold > young:
        gc.set_threshold(young_threshold, *older)
    if not _COUNTERS:  # per generation: (passes, seconds), made now so /metrics shows zeros too
        _COUNTERS.extend((metrics.GC_PASSES.labels(str(g)), metrics.GC_SECONDS.labels(str(g))) for g in range(3))
        gc.callbacks.append(_count_pass)


_COUNTERS: list[tuple[Any, Any]] = []
_pending = [[0, 0.0] for _ in range(3)]  # per generation: passes and seconds not yet in /metrics
_pass_started = [0.0]


def _count_pass(phase: str, info: dict[str, Any]) -> None:
    # A pass can start inside any allocation, including one made while prometheus_client
    # holds its lock for an update: no lock may be taken here, so the pass is noted in
    # plain numbers and published later. Passes never overlap (CPython runs one at a time).
    if phase == "start":
        _pass_started[0] = time.perf_counter()
        return
    slot = _pending[info["generation"]]
    slot[0] += 1
    slot[1] += time.perf_counter() - _pass_started[0]


def publish_gc_passes() -> None:
    """Add the passes noted since the last call to /metrics (after every request, and when
    /metrics is read): never from inside a pass."""
    for generation, (passes, seconds) in enumerate(_COUNTERS):
        if _pending[generation][0]:
            fresh = [0, 0.0]  # made first: a pass this allocation starts lands in the old slot
            noted, _pending[generation] = _pending[generation], fresh
            passes.inc(noted[0])
            seconds.inc(noted[1])
