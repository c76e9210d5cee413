"""Peak host memory of a Wan VAE encode + decode: 33 frames vs 9 frames at the same resolution.

Each case runs in a fresh subprocess that builds the VAE, encodes a random video and decodes the
latents (both jitted), then reports its own peak resident set size (`ru_maxrss`). With the chunked
causal inference the 33-frame peak should stay close to the 9-frame one (target: within 1.3x); the
whole-sequence path (`--with-unchunked`) shows what chunking saves.

Default model: the Wan 2.1 topology (dim_mult 1,2,4,4, 2 residual blocks, temporal (F,T,T), z 16)
at a reduced width (base_dim 32 instead of 96, ~14M parameters = 56 MB) and 256x256 frames, so the
activations (not the weights) dominate memory while a run stays CPU-affordable.

    PYTHONPATH=. python benchmarks/bench_vae_memory.py [--base-dim 32] [--size 256] [--with-unchunked]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from trackedit_jax.models.wan.vae import WanVAE, WanVAEConfig

    cfg = WanVAEConfig(base_dim=args.base_dim)
    vae = WanVAE(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(vae)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
    chunked = not args.unchunked
    video = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, args.frames, args.size, args.size, 3)), jnp.float32)

    # The same maths as WanVAE.encode / decode (one jitted function each), compiled ahead of time so
    # the compiler's own memory can be told apart from the memory of running the model.
    def encode(state, video):
        return nnx.merge(graphdef, state).encode_frames(video, chunked=chunked)

    def decode(state, latents):
        return nnx.merge(graphdef, state).decode_frames(latents, chunked=chunked)

    t0 = time.perf_counter()
    enc = jax.jit(encode).lower(state, video).compile()
    f_lat = cfg.latent_frames(args.frames)
    s = args.size // cfg.spatial_factor
    dec = jax.jit(decode).lower(state, jax.ShapeDtypeStruct((1, f_lat, s, s, cfg.z_dim), jnp.float32)).compile()
    t_compile = time.perf_counter() - t0
    peak_after_compile = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    before = _status_mb("VmRSS")
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    latents = enc(state, video).block_until_ready()
    t1 = time.perf_counter()
    decoded = dec(state, latents).block_until_ready()
    t2 = time.perf_counter()
    assert decoded.shape == video.shape, (decoded.shape, video.shape)
    print(
        json.dumps(
            {
                "frames": args.frames,
                "chunked": chunked,
                "params": n_params,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # whole process, incl. compile
                "peak_after_compile_mb": peak_after_compile,
                "rss_before_run_mb": before,
                "run_peak_mb": _status_mb("VmHWM") if reset else float("nan"),  # peak while encoding + decoding
                "compile_s": t_compile,
                "encode_s": t1 - t0,
                "decode_s": t2 - t1,
                "latents": list(latents.shape),
            }
        )
    )


def run_case(args, frames: int, unchunked: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--frames",
        str(frames),
        "--size",
        str(args.size),
        "--base-dim",
        str(args.base_dim),
    ] + (["--unchunked"] if unchunked else [])
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", os.getcwd())
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"case frames={frames} unchunked={unchunked} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--unchunked", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=9, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=256, help="frame height = width in pixels")
    p.add_argument("--base-dim", type=int, default=32, help="VAE width (Wan 2.1: 96)")
    p.add_argument("--with-unchunked", action="store_true", help="also run the whole-sequence path")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    modes = [False, True] if args.with_unchunked else [False]
    results = {}
    for unchunked in modes:
        for frames in (9, 33):
            r = run_case(args, frames, unchunked)
            results[(frames, unchunked)] = r
            print(
                f"{'whole-sequence' if unchunked else 'chunked':>14} F={frames:2d} {args.size}x{args.size}: "
                f"process peak RSS {r['peak_mb']:6.0f} MB | running: RSS before {r['rss_before_run_mb']:5.0f} MB, "
                f"peak {r['run_peak_mb']:6.0f} MB (+{r['run_peak_mb'] - r['rss_before_run_mb']:5.0f}) | "
                f"compile {r['compile_s']:4.1f} s, encode {r['encode_s']:5.1f} s, decode {r['decode_s']:5.1f} s",
                flush=True,
            )
    print(
        f"VAE base_dim={args.base_dim}: {results[(9, False)]['params'] / 1e6:.1f}M parameters "
        f"({results[(9, False)]['params'] * 4 / 2**20:.0f} MB fp32)"
    )
    for unchunked in modes:
        a, b = results[(9, unchunked)], results[(33, unchunked)]
        name = "whole-sequence" if unchunked else "chunked"
        print(
            f"{name}: 33 / 9 frames: process peak RSS ratio {b['peak_mb'] / a['peak_mb']:.3f}, "
            f"run peak RSS ratio {b['run_peak_mb'] / a['run_peak_mb']:.3f}, run increase ratio "
            f"{(b['run_peak_mb'] - b['rss_before_run_mb']) / (a['run_peak_mb'] - a['rss_before_run_mb']):.3f}"
        )


if __name__ == "__main__":
    main()
