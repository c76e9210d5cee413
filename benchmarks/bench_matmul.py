"""Matmul peak of this machine in fp32 and bf16 (the probe `trackedit train` runs for MFU).

    PYTHONPATH=$PWD python benchmarks/bench_matmul.py [--size 2048] [--repeats 8]

Prints the CPU model and GFLOP/s per dtype, measured interleaved in one process.
"""

from __future__ import annotations

import argparse
import platform
import subprocess

import jax
import jax.numpy as jnp

from trackedit_jax.train.throughput import measure_peak_flops


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001 - informational only
        return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    best = {"float32": 0.0, "bfloat16": 0.0}
    for _ in range(args.rounds):  # interleaved: the machine's speed drifts
        for name in best:
            best[name] = max(best[name], measure_peak_flops(jnp.dtype(name), size=args.size, repeats=args.repeats))
    print(f"{cpu_model()}, jax {jax.__version__}, {args.size}^3 matmul, best of {args.rounds} x {args.repeats}")
    for name, flops in best.items():
        print(f"  {name:9s} {flops / 1e9:8.1f} GFLOP/s")
    print(f"  bf16 / fp32 = {best['bfloat16'] / best['float32']:.2f}")


if __name__ == "__main__":
    main()
