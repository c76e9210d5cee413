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


_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (*_MALLINFO2_FIELDS, "keepcost")]


_mallinfo2 = []  # the libc function, looked up once


def heap_in_use_bytes() -> int | None:
    """Bytes the C allocator has handed out and not yet taken back (glibc `mallinfo2`: heap chunks in use
    plus mmapped blocks), or None without glibc >= 2.33. XLA:CPU allocates its buffers with malloc."""
    if not _mallinfo2:
        fn = None
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2", None)
            if fn is not None:
                fn.restype = _MallInfo2
        _mallinfo2.append(fn)
    fn = _mallinfo2[0]
    if fn is None:
        return None
    info = fn()
    return int(info.uordblks + info.hblkhd)


class HeapPeak:
    """Peak growth of `heap_in_use_bytes` while the block runs, sampled by a background thread (which runs
    whenever the main thread waits, e.g. in `jax.block_until_ready`):

        with HeapPeak() as peak:
            jax.block_until_ready(step(*args))
        peak.bytes   # the largest in-use heap seen, minus the in-use heap at entry

    For a measured counterpart of XLA:CPU's buffer assignment (`compiled.memory_analysis()`), whose
    temporaries are allocated when an execution starts and freed when it ends. Needs glibc >= 2.33.
    """

    def __enter__(self) -> HeapPeak:
        import threading

        base = heap_in_use_bytes()
        if base is None:
            raise RuntimeError("HeapPeak needs glibc >= 2.33 (mallinfo2)")
        self._base, self._peak, self._stop = base, base, threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, heap_in_use_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.bytes = self._peak - self._base
