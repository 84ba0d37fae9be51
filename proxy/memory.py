"""Keep worker memory flat under glibc's malloc.

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
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 << 20  # request buffers stay on the heap; lake objects beyond this are mmapped
TRIM_THRESHOLD_BYTES = 16 << 20


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
