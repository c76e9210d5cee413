"""Forward+backward of our WanDiT against diffusers' WanTransformer3DModel: same weights, inputs, threads.

    PYTHONPATH=$PWD python benchmarks/bench_dit.py [--threads 2] [--repeats 5] [--remat none] [--host-memory keep]
        [--backward both]

Config (issue 2): dim 512, 8 heads of 64, 8 layers, FFN 2048, 2048 video tokens (latents 8 x 32 x 32 x 16,
patch 1x2x2), 64 text tokens of width 4096, batch 1, float32. The loss is the mean square of the output;
both sides compute the gradient of every parameter.

Each library runs in its own worker process (as in real use: a training job imports one of them), both
loading the same diffusers-layout weights written by this script. The parent asks the two workers in
turn (torch, jax, torch, jax, ...) so both see the same machine load; while one measures, the other
waits on its pipe and uses no CPU. Each timed step is preceded by an untimed one. The best and median
time of each and their ratios are printed, with each library's kernel (system) time and minor page
faults per step. `--same-process` runs both in this process instead (the previous method: the libraries
then share one allocator and the CPU's caches between steps).

Our worker starts the way the `trackedit` command does: `keep_freed_host_memory()` before jax runs, so
the ~0.9 GB block XLA allocates per step is reused instead of page-faulted in afresh (see
`trackedit_jax/host_memory.py`). `--host-memory default` leaves glibc's defaults (as a library user who
does not call it gets). The torch worker runs with glibc's defaults either way; its activations are
small blocks that glibc already reuses.

`--backward both` (the default) adds a third worker: our model traced with plain autodiff backward passes
(`trackedit_jax.models.layers.backward_passes("autodiff")`, what TPU/GPU run) beside the CPU-tuned ones
("auto" on CPU), so one run gives the ratio of the two on this machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time

from _common import add_cpu_arguments, configure_cpu

LATENTS = (1, 8, 32, 32, 16)  # (B, F, H, W, C): 8 * 16 * 16 = 2048 tokens after 1x2x2 patches
TEXT = (1, 64, 4096)


def _inputs():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal(LATENTS, dtype=np.float32)
    return x, np.array([700.0], np.float32), rng.standard_normal(TEXT, dtype=np.float32)


def _torch_step_fn(weights: str, threads: int):
    import numpy as np
    import torch
    from diffusers import WanTransformer3DModel

    torch.set_num_threads(threads)
    ref = WanTransformer3DModel.from_pretrained(weights).train()
    x, t, ctx = _inputs()
    tx, tt, tc = (
        torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))),
        torch.from_numpy(t),
        torch.from_numpy(ctx),
    )

    def step():
        ref.zero_grad(set_to_none=True)
        out = ref(tx, tt, tc, return_dict=False)[0]
        (out**2).mean().backward()

    return step


def _jax_step_fn(weights: str, remat: str, attention: str, backward: str):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from trackedit_jax.convert import load_wan_transformer
    from trackedit_jax.models.layers import backward_passes
    from trackedit_jax.models.wan.config import WanConfig

    cfg = WanConfig.from_diffusers_json(_read_config(weights), remat_policy=remat, attention_impl=attention)
    model = load_wan_transformer(weights, config=cfg)
    jx, jt, jc = (jnp.asarray(a) for a in _inputs())
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def grads(params, x, t, c):
        return jax.value_and_grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(x, t, c) ** 2))(params)

    with backward_passes(backward):  # the mode is read when the step is traced, on this first call
        jax.block_until_ready(grads(params, jx, jt, jc))
    return lambda: jax.block_until_ready(grads(params, jx, jt, jc))


def _read_config(weights: str) -> dict:
    import json

    with open(os.path.join(weights, "config.json")) as f:
        return json.load(f)


def _make_step(lib: str, weights: str, args):
    if lib == "torch":
        return _torch_step_fn(weights, args.threads)
    backward = "autodiff" if lib == "jax-autodiff" else "auto"
    return _jax_step_fn(weights, args.remat, args.attention, backward)


def _timed(step) -> tuple[float, float, int]:
    """(wall seconds, kernel seconds, minor page faults) of one call; the last two for this process."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    step()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return wall, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


def _set_host_memory(args) -> None:
    """Before jax starts its threads, as `trackedit` does (see the module docstring)."""
    if args.host_memory == "keep":
        from trackedit_jax.host_memory import keep_freed_host_memory

        keep_freed_host_memory()


def _worker(conn, lib: str, weights: str, args) -> None:
    """Build the step and run it once (jax: compiles), then on each request: one untimed step, one timed."""
    if lib.startswith("jax"):
        _set_host_memory(args)
    t0 = time.perf_counter()
    step = _make_step(lib, weights, args)
    conn.send(time.perf_counter() - t0)
    while conn.recv() == "step":
        step()
        conn.send(_timed(step))


def _save_reference_weights(out_dir: str, layers: int) -> None:
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=8,
        attention_head_dim=64,
        in_channels=16,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=2048,
        num_layers=layers,
    ).save_pretrained(out_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cpu_arguments(ap)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--remat", default="none", help="WanConfig.remat_policy of our model")
    ap.add_argument("--attention", default="auto", help="WanConfig.attention_impl of our model")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--same-process", action="store_true", help="run both libraries in this process")
    ap.add_argument(
        "--host-memory",
        choices=("keep", "default"),
        default="keep",
        help="keep: our worker calls trackedit_jax.host_memory.keep_freed_host_memory() first, as "
        "the trackedit command does; default: glibc's defaults",
    )
    ap.add_argument(
        "--backward",
        choices=("auto", "both"),
        default="both",
        help="auto: our model as trackedit runs it on this backend; both: also a worker with plain autodiff",
    )
    args = ap.parse_args()
    configure_cpu(args)  # environment first: the workers inherit it
    import numpy as np

    names = {"torch": "diffusers (torch)", "jax": "ours (jax)"}
    if args.backward == "both":
        names["jax-autodiff"] = "ours, autodiff bwd"
    times = {lib: [] for lib in names}
    load_before = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "n/a"
    with tempfile.TemporaryDirectory() as weights:
        _save_reference_weights(weights, args.layers)
        if args.same_process:
            _set_host_memory(args)
            steps = {lib: _make_step(lib, weights, args) for lib in names}
            steps["torch"]()
            compile_s = float("nan")  # compiled inside _make_step

            def measure(lib):
                steps[lib]()
                return _timed(steps[lib])  # kernel time and faults: the whole process
        else:
            ctx = mp.get_context("spawn")
            pipes, procs = {}, {}
            for lib in names:
                pipes[lib], child = ctx.Pipe()
                procs[lib] = ctx.Process(target=_worker, args=(child, lib, weights, args), daemon=True)
                procs[lib].start()
            first = {lib: pipes[lib].recv() for lib in names}  # wait until both are built and warm
            compile_s = first["jax"]

            def measure(lib):
                pipes[lib].send("step")
                return pipes[lib].recv()

        for _ in range(args.repeats):
            for lib in names:
                times[lib].append(measure(lib))
        if not args.same_process:
            for lib in names:
                pipes[lib].send("stop")
                procs[lib].join()

    sys_s = {k: float(np.median([m[1] for m in v])) for k, v in times.items()}
    faults = {k: int(np.median([m[2] for m in v])) for k, v in times.items()}
    times = {k: [m[0] for m in v] for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(
        f"Wan DiT fwd+bwd: dim 512, 8x64 heads, {args.layers} layers, ffn 2048, 2048 video + 64 text tokens, "
        f"float32, {args.threads} threads, remat={args.remat}, attention={args.attention}, xla dots={args.xla_dot}, "
        f"{'one process' if args.same_process else 'one process per library'}, host memory={args.host_memory}; "
        f"best of {args.repeats}; "
        f"load average before: {load_before}"
    )
    print(f"  (jax build + first call incl. compile: {compile_s:.1f} s)")
    for lib, name in names.items():
        print(
            f"  {name:18s} {best[lib]:7.2f} s   (all: {', '.join(f'{s:.2f}' for s in times[lib])}; per step: "
            f"kernel time {sys_s[lib]:.2f} s, {faults[lib]} page faults)"
        )
    print(
        f"  speed-up ours vs diffusers: {best['torch'] / best['jax']:.2f}x (best), "
        f"{med['torch'] / med['jax']:.2f}x (median)"
    )
    if "jax-autodiff" in names:
        print(
            f"  speed-up CPU-tuned vs autodiff backward passes: {best['jax-autodiff'] / best['jax']:.2f}x (best), "
            f"{med['jax-autodiff'] / med['jax']:.2f}x (median)"
        )


if __name__ == "__main__":
    main()
