"""keep_freed_host_memory: a second large allocation reuses the pages of the first instead of
page-faulting them in again (counted by the kernel: getrusage minor faults)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Allocates, fills and frees 256 MB twice in a new thread (as XLA's worker threads do) and prints the minor
# page faults of the second round.
_PROBE = """
import ctypes, ctypes.util, resource, sys, threading
from trackedit_jax.host_memory import keep_freed_host_memory
if sys.argv[1] == "keep":
    assert keep_freed_host_memory() and keep_freed_host_memory()  # idempotent
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 256 << 20
faults = []
def work():
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)  # plain malloc: numpy would ask for huge pages
        ctypes.memset(block, 1, size)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work); t.start(); t.join()
print(faults[1])
"""


def _second_round_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    pages = (256 << 20) // 4096
    default = _second_round_faults("default")
    kept = _second_round_faults("keep")
    assert default > 0.9 * pages  # glibc mmaps the block afresh: every page faults again
    assert kept < 0.02 * pages, (kept, default)
