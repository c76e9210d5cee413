"""Chunked attention (ours) against torch SDPA on CPU, and its peak memory against XLA's attention.

    PYTHONPATH=$PWD python benchmarks/bench_attention.py [--threads 2] [--repeats 7]

Part 1 times forward and forward+backward at 2048 tokens, 8 heads of 64, batch 1, float32, for
`chunked_attention`, torch `scaled_dot_product_attention` and the plain XLA attention, interleaving
the three each repeat (the machine is shared, so the ratio of one run is what counts).
Part 2 prints the temporary-buffer size XLA assigns (`compiled.memory_analysis()`, the peak working
memory besides inputs and outputs) for forward+backward at 2K/4K/8K/16K tokens: chunked should grow
linearly, XLA quadratically. Nothing is executed in part 2, so 16K XLA (8 GB of scores) is fine.
"""

from __future__ import annotations

import argparse
import os
import time

from _common import add_cpu_arguments, configure_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cpu_arguments(ap)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()

    configure_cpu(args)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from trackedit_jax.kernels.attention import attention

    torch.set_num_threads(args.threads)
    B, L, H, D = 1, args.tokens, args.heads, args.head_dim
    rng = np.random.default_rng(0)
    qn, kn, vn = (rng.standard_normal((B, L, H, D), dtype=np.float32) for _ in range(3))
    q, k, v = (jnp.asarray(x) for x in (qn, kn, vn))
    tq, tk, tv = (torch.from_numpy(x.transpose(0, 2, 1, 3).copy()).requires_grad_(True) for x in (qn, kn, vn))

    def jax_pair(impl):
        fwd = jax.jit(lambda q, k, v: attention(q, k, v, impl=impl))
        grad = jax.jit(jax.grad(lambda q, k, v, impl=impl: attention(q, k, v, impl=impl).sum(), argnums=(0, 1, 2)))
        return (lambda: jax.block_until_ready(fwd(q, k, v))), (lambda: jax.block_until_ready(grad(q, k, v)))

    def torch_fwd():
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)

    def torch_fwd_bwd():
        for t in (tq, tk, tv):
            t.grad = None
        torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).sum().backward()

    cf, cb = jax_pair("chunked")
    xf, xb = jax_pair("xla")
    cases = {
        "chunked fwd": cf,
        "torch fwd": torch_fwd,
        "xla fwd": xf,
        "chunked fwd+bwd": cb,
        "torch fwd+bwd": torch_fwd_bwd,
        "xla fwd+bwd": xb,
    }
    for fn in cases.values():  # compile / warm up
        fn()
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            fn()  # untimed: the previous case's library may still hold the cores (spinning worker threads)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {name: min(ts) * 1e3 for name, ts in times.items()}
    load = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "n/a"
    print(
        f"attention B={B} L={L} H={H} D={D} float32, {args.threads} threads, xla dots={args.xla_dot}, "
        f"best of {args.repeats} (ms); load average after: {load}"
    )
    for name, ms in best.items():
        print(f"  {name:16s} {ms:8.1f}  (median {np.median(times[name]) * 1e3:.1f})")
    for kind in ("fwd", "fwd+bwd"):
        print(
            f"  torch/chunked {kind}: {best[f'torch {kind}'] / best[f'chunked {kind}']:.2f}x"
            f"   xla/chunked {kind}: {best[f'xla {kind}'] / best[f'chunked {kind}']:.2f}x"
        )

    if args.skip_memory:
        return
    print("peak temporary memory of forward+backward (XLA buffer assignment), MiB")
    print(f"  {'tokens':>6s} {'chunked':>10s} {'xla':>10s}")
    for n in (2048, 4096, 8192, 16384):
        spec = jax.ShapeDtypeStruct((B, n, H, D), jnp.float32)
        row = []
        for impl in ("chunked", "xla"):
            g = jax.jit(jax.grad(lambda q, k, v, impl=impl: attention(q, k, v, impl=impl).sum(), argnums=(0, 1, 2)))
            mem = g.lower(spec, spec, spec).compile().memory_analysis()
            row.append(mem.temp_size_in_bytes / 2**20)
        print(f"  {n:6d} {row[0]:10.1f} {row[1]:10.1f}")


if __name__ == "__main__":
    main()
