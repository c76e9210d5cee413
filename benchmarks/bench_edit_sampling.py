"""Sampling loop in one jit vs `steps` x one jitted call of the real edit model (`EditByTrack`).

The model is the `tiny_cpu` preset's (random weights), called exactly as `EditPipeline` calls it: the
`EditVelocity` of its graph bound with the weights and the precomputed source cache in a
`jax.tree_util.Partial`. With guidance != 1 one "model call" is the batched CFG call (batch 2), which is
also what the sampler makes each step. Both sides run interleaved; the best of `--repeats` is kept.

  PYTHONPATH=$PWD python benchmarks/bench_edit_sampling.py [--steps 50] [--solver unipc] [--guidance 5]
      [--frames 17 --height 64 --width 64] [--tracks 256]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from _common import print_loop_overhead
from flax import nnx

from trackedit_jax.configuration import load_config
from trackedit_jax.diffusion.samplers import initial_noise, make_schedule, sample
from trackedit_jax.infer.pipeline import EditVelocity, _encode_source
from trackedit_jax.train import build


def timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--solver", default="unipc", choices=["unipc", "euler"])
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--config", default="tiny_cpu")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--tracks", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = load_config(args.config)
    model = nnx.jit(lambda: build.build_edit_model(config, seed=0))()
    graphdef, state = nnx.split(model)
    wan = model.wan_config
    f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    latents = jax.random.normal(keys[0], (1, f, h, w, wan.in_dim))
    src = jnp.concatenate(
        [
            jax.random.uniform(keys[1], (1, f, args.tracks, 2), minval=-1, maxval=1),
            jax.random.uniform(keys[2], (1, f, args.tracks, 1)),
        ],
        -1,
    )
    valid = jnp.ones((1, f, args.tracks), bool)
    cache = jax.block_until_ready(_encode_source(graphdef, state, latents, src, src + 0.05, valid, valid))
    vf = jax.tree_util.Partial(EditVelocity(graphdef), state, cache)

    text_len = int(config.text.text_len)
    cond = {"context": jax.random.normal(keys[3], (1, text_len, wan.text_dim))}
    uncond = {"context": jnp.zeros_like(cond["context"])}
    noise = initial_noise(0, latents.shape)
    schedule = make_schedule(args.steps, shift=5.0, kind="wan_unipc" if args.solver == "unipc" else "wan")

    cfg = args.guidance != 1.0
    call_x = jnp.concatenate([noise, noise]) if cfg else noise
    call_c = {"context": jnp.concatenate([cond["context"], uncond["context"]])} if cfg else cond
    call_t = jnp.full((call_x.shape[0],), 500.0)
    model_call = jax.jit(lambda vf, x, t, c: vf(x, t, c))

    def run_loop():
        return sample(
            vf,
            noise,
            cond,
            uncond=uncond if cfg else None,
            guidance=args.guidance,
            solver=args.solver,
            schedule=schedule,
        )

    def steps_of_calls():  # `steps` back-to-back model calls, as a Python-loop sampler would make
        out = None
        for _ in range(args.steps):
            out = model_call(vf, call_x, call_t, call_c)
        return out

    jax.block_until_ready(model_call(vf, call_x, call_t, call_c))  # compile both
    jax.block_until_ready(run_loop())
    calls_s, loop_s = float("inf"), float("inf")
    for _ in range(args.repeats):  # interleaved, best of each, to damp noise from a shared machine
        calls_s = min(calls_s, timed(steps_of_calls))
        loop_s = min(loop_s, timed(run_loop))
    call_s = calls_s / args.steps

    print(
        f"backend={jax.default_backend()} solver={args.solver} steps={args.steps} guidance={args.guidance} "
        f"config={args.config} (dim {wan.dim}, {wan.num_layers} layers), latents {tuple(latents.shape)}, "
        f"2 x {f * (h // 2) * (w // 2)} tokens, {args.tracks} tracks, model batch {call_x.shape[0]}"
    )
    print_loop_overhead(call_s, calls_s, loop_s)


if __name__ == "__main__":
    main()
