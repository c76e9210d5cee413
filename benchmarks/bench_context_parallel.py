"""Per-device memory of self-attention with and without context parallelism (compile only, no run).

Compiles `attention` (forward, and forward+backward of a scalar loss) for q/k/v of (1, L, 12, 128)
float32 on 8 simulated CPU devices, ahead of time under jit with the sequence sharded over the mesh's
``context`` axis, and prints what XLA's buffer assignment reserves per device
(`compiled.memory_analysis()`): arguments + outputs + temporaries - aliased, and the temporaries alone.

Meshes: context 1 (fsdp 8: batch 1 cannot be split, so every device computes the whole attention, as
GSPMD does without context parallelism), context 8 (ring; 12 heads do not divide by 8, so "ulysses"
falls back to the ring; with --heads 16 it runs), and context 4 x fsdp 2 (ulysses and ring).

  PYTHONPATH=$PWD python benchmarks/bench_context_parallel.py [--lengths 16384 32768] [--impl xla]
      [--impl pallas_gpu --interpret] [--heads 12]

`--impl` is the local kernel of the baseline and of ulysses (the ring uses its own blockwise code). On CPU
"xla" is dense: its logits are quadratic in L, so those rows show the 1/C split of a quadratic term; a
flash kernel (splash/cuDNN/pallas on TPU/GPU, "chunked" on CPU) makes them linear.
"""

from __future__ import annotations

import argparse
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from trackedit_jax.parallel import context_attention as ca  # noqa: E402
from trackedit_jax.parallel import make_mesh  # noqa: E402
from trackedit_jax.parallel.attention import attention  # noqa: E402
from trackedit_jax.parallel.rules import activation_spec  # noqa: E402

HEADS, HEAD_DIM = 12, 128
CONFIGS = [  # (label, mesh sizes, context_parallel)
    ("None", {"fsdp": 8}, None),
    ("ring", {"context": 8}, "ring"),
    ("ulysses", {"context": 8}, "ulysses"),
    ("ulysses", {"fsdp": 2, "context": 4}, "ulysses"),
    ("ring", {"fsdp": 2, "context": 4}, "ring"),
]


def _memory(fn, args, shardings, mesh):
    with jax.set_mesh(mesh):
        compiled = jax.jit(fn, in_shardings=shardings).lower(*args).compile()
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return total, m.temp_size_in_bytes


def measure(length, mesh_sizes, strategy, impl, interpret=False, heads=HEADS):
    """(path taken, (fwd total, fwd temp), (fwd+bwd total, fwd+bwd temp)) in bytes per device."""
    mesh = make_mesh(mesh_sizes)
    shape = jax.ShapeDtypeStruct((1, length, heads, HEAD_DIM), jnp.float32)
    sharding = NamedSharding(mesh, activation_spec(shape.shape, ("act_batch", "act_length", "act_heads", None), mesh))

    def forward(q, k, v):
        return attention(q, k, v, impl=impl, interpret=interpret, context_parallel=strategy)

    def loss(q, k, v):
        return jnp.sum(forward(q, k, v) ** 2)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    with jax.set_mesh(mesh):
        path = ca.plan(shape.shape, shape.shape, strategy, min_length=0) if strategy else None
    args = (shape, shape, shape)
    fwd = _memory(forward, args, (sharding,) * 3, mesh)
    bwd = _memory(grad, args, (sharding,) * 3, mesh)
    return path or "none", fwd, bwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768])
    parser.add_argument("--impl", default="xla", help="local kernel for the baseline and ulysses")
    parser.add_argument("--heads", type=int, default=HEADS, help="attention heads (of 128)")
    parser.add_argument("--interpret", action="store_true", help="Pallas impls in interpret mode (CPU)")
    args = parser.parse_args()
    gib = 1 << 30
    impl = args.impl + (" (interpret)" if args.interpret else "")
    print(f"self-attention q/k/v (1, L, {args.heads}, {HEAD_DIM}) float32, {jax.device_count()} devices, impl={impl}")
    print("per-device bytes from compiled.memory_analysis(): total = args + outputs + temps - aliased")
    header = (
        f"{'L':>6} | {'context_parallel=':<24} | {'mesh (d,f,c,t)':<14} | {'path':<7} | {'fwd total':>10} | "
        f"{'fwd temp':>9} | {'fwd+bwd total':>13} | {'fwd+bwd temp':>12}"
    )
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        base = None
        for label, sizes, strategy in CONFIGS:
            path, (ft, ftemp), (bt, btemp) = measure(length, sizes, strategy, args.impl, args.interpret, args.heads)
            mesh_desc = ",".join(str(sizes.get(a, 1)) for a in ("data", "fsdp", "context", "tensor"))
            if base is None:
                base = (ft, bt)
            ratio = f"  (x{base[0] / ft:.1f} / x{base[1] / bt:.1f} less)" if strategy else ""
            print(
                f"{length:>6} | {label:<24} | {mesh_desc:<14} | {path:<7} | {ft / gib:>8.3f}Gi | {ftemp / gib:>7.3f}Gi"
                f" | {bt / gib:>11.3f}Gi | {btemp / gib:>10.3f}Gi{ratio}"
            )


if __name__ == "__main__":
    main()
