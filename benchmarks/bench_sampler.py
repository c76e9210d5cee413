"""Overhead of the one-jit sampling loop against calling the jitted model `steps` times.

The stand-in model is a small residual MLP over a (B, L, D) latent with a timestep embedding and a
conditioning vector (a few matmuls, ~10-50 ms per call on a 2-core CPU); its weights enter through a
`jax.tree_util.Partial`, as a real model's would. With guidance != 1 one "model call" is the batched CFG
call (batch 2B), which is also what the sampler makes each step.

  PYTHONPATH=$PWD python benchmarks/bench_sampler.py [--steps 20] [--solver unipc] [--guidance 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import print_loop_overhead

from trackedit_jax.diffusion.samplers import initial_noise, make_schedule, sample


def init_model(key, dim, hidden, layers):
    keys = jax.random.split(key, 2 * layers + 1)
    return {
        "t_proj": jax.random.normal(keys[0], (64, dim)) / 8.0,
        "w_in": [jax.random.normal(keys[1 + 2 * i], (dim, hidden)) / np.sqrt(dim) for i in range(layers)],
        "w_out": [jax.random.normal(keys[2 + 2 * i], (hidden, dim)) / np.sqrt(hidden) for i in range(layers)],
    }


def velocity_model(x, t, cond, params):
    """x (B, L, D), t (B,), cond {"text": (B, D)} -> (B, L, D)."""
    freqs = jnp.exp(-jnp.arange(32) / 32.0 * jnp.log(1e4))
    angles = t[:, None] * freqs[None]
    temb = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1) @ params["t_proj"]
    h = x + (temb + cond["text"])[:, None, :]
    for w_in, w_out in zip(params["w_in"], params["w_out"]):
        h = h + jax.nn.gelu(h @ w_in) @ w_out
    return h - x


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--solver", default="unipc", choices=["unipc", "euler"])
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    params = init_model(jax.random.PRNGKey(0), args.dim, args.hidden, args.layers)
    vf = jax.tree_util.Partial(velocity_model, params=params)
    noise = initial_noise(0, (args.batch, args.length, args.dim))
    cond = {"text": jax.random.normal(jax.random.PRNGKey(1), (args.batch, args.dim))}
    uncond = {"text": jnp.zeros((args.batch, args.dim))}
    schedule = make_schedule(args.steps, shift=5.0, kind="wan_unipc" if args.solver == "unipc" else "wan")

    cfg = args.guidance != 1.0
    call_x = jnp.concatenate([noise, noise]) if cfg else noise
    call_cond = {"text": jnp.concatenate([cond["text"], uncond["text"]])} if cfg else cond
    call_t = jnp.full((call_x.shape[0],), 500.0)
    model_call = jax.jit(lambda vf, x, t, c: vf(x, t, c))
    run_loop = lambda: sample(
        vf,
        noise,
        cond,
        uncond=uncond,
        guidance=args.guidance,  # noqa: E731
        solver=args.solver,
        schedule=schedule,
    )

    jax.block_until_ready(model_call(vf, call_x, call_t, call_cond))  # compile both
    jax.block_until_ready(run_loop())

    def steps_of_calls():  # `steps` back-to-back model calls, as a Python-loop sampler would make
        out = None
        for _ in range(args.steps):
            out = model_call(vf, call_x, call_t, call_cond)
        return out

    calls_s, loop_s = float("inf"), float("inf")
    for _ in range(args.repeats):  # interleaved, best of each, to damp noise from a shared machine
        calls_s = min(calls_s, timed(steps_of_calls, 1))
        loop_s = min(loop_s, timed(run_loop, 1))
    call_s = calls_s / args.steps

    batch = call_x.shape[0]
    print(
        f"backend={jax.default_backend()} solver={args.solver} steps={args.steps} guidance={args.guidance} "
        f"model: (B={batch}, L={args.length}, D={args.dim}), {args.layers} MLP layers x {args.hidden}"
    )
    print_loop_overhead(call_s, calls_s, loop_s)


if __name__ == "__main__":
    main()
