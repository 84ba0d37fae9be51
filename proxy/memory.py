"""Keep worker memory flat under glibc's malloc.

glibc serves large blocks (at first, 128 KiB and up) with mmap and returns them to the
system when freed, but every time such a block is freed it raises its mmap threshold to
that block's size (up to 32 MiB). A lake flush frees one object-sized block (about
10 MiB of gzip per worker at 10,000 events/s), after which blocks that size come from
the heap and stay resident: a one-time step of about one object per worker. Measured
with `bench/` (browser batches, Mixpanel + files): RSS 62 MiB, then 72 MiB from the
fourth flush on; with the threshold pinned, flat at 58-62 MiB.

Pinning M_MMAP_THRESHOLD (what the `MALLOC_MMAP_THRESHOLD_` environment variable
does at start-up) turns that adjustment off. An operator who set the variable keeps
their value; on other C libraries (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD_BYTES = 1 << 20


def pin_mmap_threshold(size: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `size`; True if it was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, size) == 1
