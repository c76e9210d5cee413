"""Host memory settings for CPU runs: keep memory XLA frees in the process heap for its next step.

XLA:CPU allocates the temporaries of one execution as a single block (about 0.9 GB for a
forward+backward step of the 8-layer bench DiT). glibc serves any block over 32 MB with a fresh `mmap`
and returns it to the kernel on `free`, so every step touches the whole block again for the first time:
about 250K page faults per step, 0.5 s of kernel time on a 2-core VM, where torch, whose activations are
many smaller blocks served from the heap, takes about 10K. `keep_freed_host_memory()` makes glibc serve
large blocks from the heap of one arena and never hand freed heap back, so later steps reuse the pages
they already faulted in (0 faults per step; `benchmarks/bench_dit.py` shows the effect).

The cost: the process keeps its peak heap size until it exits, and all threads allocate from one
arena (fine for XLA, which allocates a few large blocks per step rather than many small ones). Call it
at the start of a process, before jax runs anything: the arena limit only affects threads that have
not allocated yet. The `trackedit` command does this; library users opt in by calling it themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)

_applied = False


def keep_freed_host_memory() -> bool:
    """Keep freed memory in the heap for reuse (glibc only). Returns True if the settings were applied
    (now or by an earlier call); False on a C library without `mallopt` (macOS, musl), where nothing is
    changed. Idempotent."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # One arena: only the main arena's heap can grow past 64 MB, so in any other arena a large block
    # would still be mmapped. No mmap: large blocks come from that heap. No trim: freed heap stays mapped.
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _NEVER_TRIM),
        )
    )
    _applied = ok
    return ok
