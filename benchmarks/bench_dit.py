"""Forward+backward of our WanDiT against diffusers' WanTransformer3DModel: same weights, inputs, threads.

    PYTHONPATH=$PWD python benchmarks/bench_dit.py [--threads 2] [--repeats 3] [--remat none]

Config (issue 2): dim 512, 8 heads of 64, 8 layers, FFN 2048, 2048 video tokens (latents 8 x 32 x 32 x 16,
patch 1x2x2), 64 text tokens of width 4096, batch 1, float32. The loss is the mean square of the output;
both sides compute the gradient of every parameter. Runs alternate (torch, jax, torch, jax, ...) so both
see the same machine load, each timed run preceded by an untimed one of the same library; the best and
median time of each and their ratios are printed.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from _common import add_cpu_arguments, configure_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cpu_arguments(ap)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--remat", default="none", help="WanConfig.remat_policy of our model")
    ap.add_argument("--attention", default="auto", help="WanConfig.attention_impl of our model")
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()

    configure_cpu(args)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from diffusers import WanTransformer3DModel
    from flax import nnx

    from trackedit_jax.convert import load_wan_transformer
    from trackedit_jax.models.wan.config import WanConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ref = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=64, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=2048, num_layers=args.layers,
    ).train()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        cfg = WanConfig.from_diffusers_json(ref.config, remat_policy=args.remat, attention_impl=args.attention)
        model = load_wan_transformer(tmp, config=cfg)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 32, 32, 16), dtype=np.float32)  # (B, F, H, W, C): 8*16*16 = 2048 tokens
    t = np.array([700.0], np.float32)
    ctx = rng.standard_normal((1, 64, 4096), dtype=np.float32)
    tx, tt, tc = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))), torch.from_numpy(t), torch.from_numpy(ctx)
    jx, jt, jc = jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)

    def torch_step():
        ref.zero_grad(set_to_none=True)
        out = ref(tx, tt, tc, return_dict=False)[0]
        (out**2).mean().backward()

    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def jax_grads(params, x, t, c):
        return jax.value_and_grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(x, t, c) ** 2))(params)

    def jax_step():
        jax.block_until_ready(jax_grads(params, jx, jt, jc))

    load_before = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "n/a"
    t0 = time.perf_counter()
    jax_step()
    compile_s = time.perf_counter() - t0
    torch_step()
    times = {"diffusers (torch)": [], "ours (jax)": []}
    for _ in range(args.repeats):
        for name, fn in (("diffusers (torch)", torch_step), ("ours (jax)", jax_step)):
            # Untimed first: right after the other library, memory freshly handed back by its allocator
            # page-faults again and its worker threads may still spin; a training loop repeats one library.
            fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    print(f"Wan DiT fwd+bwd: dim 512, 8x64 heads, {args.layers} layers, ffn 2048, 2048 video + 64 text tokens, "
          f"float32, {args.threads} threads, remat={args.remat}, attention={args.attention}, xla dots={args.xla_dot}; "
          f"best of {args.repeats}; load average before: {load_before}")
    print(f"  (jax first call incl. compile: {compile_s:.1f} s)")
    for k, v in times.items():
        print(f"  {k:18s} {best[k]:7.2f} s   (all: {', '.join(f'{s:.2f}' for s in v)})")
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"  speed-up ours vs diffusers: {best['diffusers (torch)'] / best['ours (jax)']:.2f}x (best), "
          f"{med['diffusers (torch)'] / med['ours (jax)']:.2f}x (median)")


if __name__ == "__main__":
    main()
