"""Pieces the benchmark scripts share (imported as `_common`: a script's own folder is on sys.path)."""

from __future__ import annotations

import argparse
import os


def add_cpu_arguments(ap: argparse.ArgumentParser) -> None:
    """--threads (both libraries) and --xla-dot (which library XLA:CPU uses for its matmuls)."""
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument(
        "--xla-dot",
        choices=("default", "eigen"),
        default="default",
        help="eigen: XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= (XLA's Eigen dots instead of YNNPACK)",
    )


def configure_cpu(args) -> None:
    """Apply --threads and --xla-dot; call before jax or torch is imported (both read them at start-up)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.xla_dot == "eigen":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_ynn_fusion_type=").strip()


def print_loop_overhead(call_s: float, calls_s: float, loop_s: float) -> None:
    """The sampling-loop report: one call, steps x one call, the one-jit loop and their ratio (seconds in)."""
    print(f"one jitted model call        : {call_s * 1e3:8.2f} ms")
    print(f"steps x one model call       : {calls_s * 1e3:8.2f} ms")
    print(f"whole sampling loop, one jit : {loop_s * 1e3:8.2f} ms")
    print(f"ratio loop / (steps x call)  : {loop_s / calls_s:8.3f}")
