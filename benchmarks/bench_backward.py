"""Forward+backward of each layer with a hand-written backward pass, CPU-tuned vs plain autodiff.

    PYTHONPATH=$PWD python benchmarks/bench_backward.py [--threads 2] [--repeats 30]

Shapes are those of `bench_dit.py` (batch 1, 2048 tokens, width 512, FFN 2048, float32): the per-block
pieces of a Wan DiT layer. For each op both variants are traced under
`trackedit_jax.models.layers.backward_passes` ("cpu_tuned" / "autodiff"), compiled, and then timed in turn
(cpu_tuned, autodiff, cpu_tuned, ...) so both see the same machine load; every call is synchronised with
`block_until_ready`. The forward (returning its residuals) and the backward are compiled apart, as they
are inside the layer scan, where every layer's residuals are stored between the passes. Printed: the
median time of each, their ratio, and the size of the residuals each keeps. The whole-model figure is
`bench_dit.py --backward both`.
"""

from __future__ import annotations

import argparse
import time

from _common import add_cpu_arguments, configure_cpu

TOKENS, WIDTH, FFN = 2048, 512, 2048


def _cases():
    """name -> (function of the arrays, argument shapes); every function returns a float32 array."""
    from trackedit_jax.models import layers

    def attn_qkv(x, wq, wk, wv):
        x_t = layers.transpose_tokens(x) if layers.cpu_tuned_backward() else None
        return sum(layers.dense(x, w, x_t=x_t) for w in (wq, wk, wv))

    return {
        "dense 512->512 (q, k, v shared input)": (
            attn_qkv,
            [(1, TOKENS, WIDTH)] + [(WIDTH, WIDTH)] * 3,
        ),
        "dense 512->2048 (FFN up)": (lambda x, w, b: layers.dense(x, w, b), [(1, TOKENS, WIDTH), (WIDTH, FFN), (FFN,)]),
        "dense 2048->512 (FFN down)": (
            lambda x, w, b: layers.dense(x, w, b),
            [(1, TOKENS, FFN), (FFN, WIDTH), (WIDTH,)],
        ),
        "gelu_tanh (1, 2048, 2048)": (layers.gelu_tanh, [(1, TOKENS, FFN)]),
        "layer_norm + adaLN modulate": (
            lambda x, scale, shift: layers.mul_broadcast(layers.layer_norm(x, 1e-6), 1.0 + scale) + shift,
            [(1, TOKENS, WIDTH), (1, 1, WIDTH), (1, 1, WIDTH)],
        ),
        "rms_norm (q/k norm)": (lambda x, s: layers.rms_norm(x, 1e-6, s), [(1, TOKENS, WIDTH), (WIDTH,)]),
        "adaLN gate x * g": (layers.mul_broadcast, [(1, TOKENS, WIDTH), (1, 1, WIDTH)]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cpu_arguments(ap)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    configure_cpu(args)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from trackedit_jax.models.layers import backward_passes

    rng = np.random.default_rng(0)
    modes = ("cpu_tuned", "autodiff")
    print(
        f"fwd+bwd per op, float32, batch 1, {TOKENS} tokens, {args.threads} threads, median of {args.repeats} "
        f"(interleaved); backend {jax.default_backend()}"
    )
    print(
        f"  {'op':40s} {'cpu_tuned':>10s} {'autodiff':>10s} {'autodiff/tuned':>15s} "
        f"{'residuals MiB tuned/autodiff':>29s}"
    )
    for name, (fn, shapes) in _cases().items():
        arrays = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
        w = jnp.asarray(rng.standard_normal(jax.eval_shape(fn, *arrays).shape), jnp.float32)
        steps, temp = {}, {}
        for mode in modes:
            with backward_passes(mode):
                # forward with its residuals, then the backward from them: as inside the layer scan,
                # where the residuals of every layer are stored between the two passes
                fwd = jax.jit(lambda *a, fn=fn: jax.vjp(fn, *a))
                _, vjp_fn = fwd(*arrays)
            bwd = jax.jit(lambda f, g: f(g))
            steps[mode] = (fwd, bwd)
            residual_bytes = sum(x.nbytes for x in jax.tree.leaves(vjp_fn))
            temp[mode] = residual_bytes / 2**20

        def run(mode, arrays=arrays, w=w, steps=steps):
            fwd, bwd = steps[mode]
            _, vjp_fn = fwd(*arrays)
            return bwd(vjp_fn, w)

        times = {mode: [] for mode in modes}
        for mode in modes:  # warm-up
            jax.block_until_ready(run(mode))
        for _ in range(args.repeats):
            for mode in modes:
                t0 = time.perf_counter()
                jax.block_until_ready(run(mode))
                times[mode].append(time.perf_counter() - t0)
        med = {mode: float(np.median(v)) * 1e3 for mode, v in times.items()}
        print(
            f"  {name:40s} {med['cpu_tuned']:8.2f}ms {med['autodiff']:8.2f}ms "
            f"{med['autodiff'] / med['cpu_tuned']:14.2f}x"
            f" {temp['cpu_tuned']:11.1f} / {temp['autodiff']:.1f}"
        )


if __name__ == "__main__":
    main()
