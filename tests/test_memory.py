"""proxy.memory: glibc's mmap threshold stays pinned, so freed large blocks go back to the system.

Checked in a fresh interpreter through glibc's own accounting (mallinfo2: bytes in mmapped
blocks): after a 10 MiB block is freed, glibc by default serves the next 6 MiB block from
the heap (the threshold rose to 10 MiB); pinned at 4 MiB, it is still mmapped (and returned
on free).
The effect on a running proxy is measured by the soak in bench/.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "pinned":
    from proxy.memory import pin_mmap_threshold
    assert pin_mmap_threshold()
big = bytearray(10 << 20)
del big  # freeing a mmapped 10 MiB block is what raises glibc's threshold
before = libc.mallinfo2().hblkhd
block = bytearray(6 << 20)
print(libc.mallinfo2().hblkhd - before >= 6 << 20)
"""


def _glibc_with_mallinfo2() -> bool:
    if platform.libc_ver()[0] != "glibc":
        return False
    return hasattr(ctypes.CDLL(None), "mallinfo2")


pytestmark = pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc >= 2.33 only (mallinfo2)")


def run_probe(mode: str, env: dict[str, str] | None = None) -> bool:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return out.stdout.strip() == "True"


def test_by_default_glibc_keeps_large_blocks_on_the_heap_after_a_big_free():
    assert run_probe("default") is False  # the behaviour the pin exists for


def test_pinned_threshold_keeps_large_blocks_mmapped():
    assert run_probe("pinned") is True


@pytest.mark.parametrize("variable", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operators_malloc_setting_is_left_alone(monkeypatch, variable):
    from proxy.memory import pin_mmap_threshold

    monkeypatch.setenv(variable, "4194304")
    assert pin_mmap_threshold() is False
