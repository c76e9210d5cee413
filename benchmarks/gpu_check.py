"""The GPU check: our Pallas GPU flash attention against cuDNN and XLA, one training step and the sampling loop.

    PYTHONPATH=$PWD python benchmarks/gpu_check.py                # on a CUDA machine (< 8 min on an H100)
    PYTHONPATH=$PWD python benchmarks/gpu_check.py --dry-run      # tiny shapes on any backend (tests)

Prints one markdown table (rows appear as each part finishes). Each part runs on its own; a part that fails
(out of memory, a kernel that does not compile) puts its error in its row and the rest still runs.

1. Attention at Wan-1.3B shapes: batch 1, 32,760 tokens (the paired 2 x 16,380 sequence), 12 heads of 128,
   bfloat16. `pallas_gpu` is our Triton kernel (`trackedit_jax/kernels/pallas_gpu.py`); `cudnn` and `xla`
   are `jax.nn.dot_product_attention(implementation=...)`. Errors are against a float32 reference computed
   from the same bfloat16 inputs on the first `--ref-rows` queries (every key): the output rows for the
   forward pass, the dQ rows of the loss sum(out * cot) for forward+backward (a query row's dQ depends only
   on that row, so the slice is exact). Times are the median of `--repeats` synchronised calls
   (`block_until_ready`) after a compiling call. Rate: model TFLOP/s, 4 B H L^2 D for the forward and
   3.5x that for forward+backward (the backward recomputes the scores).
2. One `EditByTrack` training step (the `TrainingSetup.jit_step` that `trackedit train` runs) at a
   reduced-depth Wan-1.3B shape: `wan1_3b_stage1` with `--layers` blocks (width 1536, 12 heads, bfloat16
   compute, LoRA), batch 1, a `--frames`-frame 480x832 clip as precomputed latents, random weights.
   Tokens/s counts both sides of the paired sequence; MFU is `train.flops.train_step_flops` (the DiT's
   matmuls, 3x forward) per second over the GPU's peak.
3. The jitted sampling loop (`diffusion.samplers.sample`, UniPC, guidance 5: one batch-2 model call per
   step) over the same model for `--sample-steps` steps, the source cache precomputed as `EditPipeline`
   does. MFU: the DiT's forward FLOPs of the batch-2 call per step over the peak.

MFU uses `--peak-flops`, or the dense bfloat16 peak of the GPU named by the device kind (PEAK_BF16_FLOPS).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable

# Dense bfloat16 tensor-core peak per GPU (vendor data sheets), matched in order against jax's device_kind.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),  # also GH200
    ("A100", 312e12),
)

COLUMNS = ("part", "impl", "shape", "max abs err", "mean abs err", "median ms", "rate", "MFU", "status")


@dataclasses.dataclass
class Sizes:
    """Shapes and repeat counts of one run."""

    tokens: int = 32760
    heads: int = 12
    head_dim: int = 128
    ref_rows: int = 1024
    repeats: int = 10
    config: str = "wan1_3b_stage1"
    layers: int = 2
    frames: int = 17
    height: int = 480
    width: int = 832
    train_repeats: int = 5
    sample_steps: int = 4
    sample_repeats: int = 3
    model_attention: str = "auto"  # the model's attention impl ("auto": cuDNN on a GPU at these lengths)
    interpret: bool = False


DRY_RUN = Sizes(
    tokens=192,
    heads=2,
    head_dim=64,
    ref_rows=64,
    repeats=2,
    config="tiny_cpu",
    layers=2,
    frames=17,
    height=64,
    width=64,
    train_repeats=2,
    sample_steps=2,
    sample_repeats=1,
    interpret=True,
)


def peak_flops(device_kind: str) -> float | None:
    """The dense bfloat16 peak FLOP/s of the GPU named `device_kind`, or None when it is not in the table."""
    for name, peak in PEAK_BF16_FLOPS:
        if name in device_kind:
            return peak
    return None


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` synchronised calls of `fn`, after one untimed (compiling) call."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ attention


def attention_rows(sizes: Sizes) -> list[dict]:
    """One row function per (pass, impl): forward and forward+backward of pallas_gpu, cudnn and xla."""
    import jax
    import jax.numpy as jnp

    from trackedit_jax.kernels.attention import attention

    B, L, H, D, R = 1, sizes.tokens, sizes.heads, sizes.head_dim, min(sizes.ref_rows, sizes.tokens)
    shape = f"B{B} L{L} H{H} D{D} bf16"
    state: dict = {}

    def inputs():
        if not state:
            keys = jax.random.split(jax.random.key(0), 4)
            q, k, v, cot = (jax.random.normal(key, (B, L, H, D), jnp.bfloat16) for key in keys)
            state.update(q=q, k=k, v=v, cot=cot)
        return state["q"], state["k"], state["v"], state["cot"]

    def reference():
        # float32 attention of the first R queries on every key, from the same bfloat16 inputs.
        if "ref" not in state:
            q, k, v, cot = (x.astype(jnp.float32) for x in inputs())

            def ref_attn(qr):
                logits = jnp.einsum("bqhd,bkhd->bhqk", qr, k, precision="highest") / math.sqrt(D)
                return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v, precision="highest")

            out, vjp = jax.vjp(ref_attn, q[:, :R])
            state["ref"] = jax.device_get(out), jax.device_get(vjp(cot[:, :R])[0])
        return state["ref"]

    impls = {
        "pallas_gpu": lambda q, k, v: attention(q, k, v, impl="pallas_gpu", interpret=sizes.interpret),
        "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"),
        "xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
    }
    fwd_flops = 4.0 * B * H * L * L * D

    def errors(got, want) -> tuple[float, float]:
        diff = abs(jax.device_get(got).astype("float32") - want)
        return float(diff.max()), float(diff.mean())

    def forward(name, fn):
        def run():
            q, k, v, _ = inputs()
            call = jax.jit(fn)
            out = call(q, k, v)
            max_err, mean_err = errors(out[:, :R], reference()[0])
            del out
            seconds = median_seconds(lambda: call(q, k, v), sizes.repeats)
            return dict(err=(max_err, mean_err), seconds=seconds, rate=f"{fwd_flops / seconds / 1e12:.1f} TFLOP/s")

        return dict(part="attention fwd", impl=name, shape=shape, run=run)

    def forward_backward(name, fn):
        def run():
            q, k, v, cot = inputs()
            loss = lambda q, k, v, cot: jnp.sum(fn(q, k, v).astype(jnp.float32) * cot.astype(jnp.float32))
            call = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))  # cot an argument, not a constant
            _, (dq, _, _) = call(q, k, v, cot)
            max_err, mean_err = errors(dq[:, :R], reference()[1])
            del dq
            seconds = median_seconds(lambda: call(q, k, v, cot), sizes.repeats)
            rate = f"{3.5 * fwd_flops / seconds / 1e12:.1f} TFLOP/s"
            return dict(err=(max_err, mean_err), seconds=seconds, rate=rate)

        return dict(part="attention fwd+bwd (dQ err)", impl=name, shape=shape, run=run)

    rows = [forward(n, f) for n, f in impls.items()] + [forward_backward(n, f) for n, f in impls.items()]
    return rows


# ------------------------------------------------------------------------------------------------ model parts


def model_config(sizes: Sizes):
    """The preset with the reduced depth, batch 1 and the clip size of `sizes`."""
    from trackedit_jax.configuration import load_config

    config = load_config(sizes.config)
    config.model.wan.num_layers = sizes.layers
    config.model.wan.attention_impl = sizes.model_attention
    config.train.batch_size = 1
    config.data.update(num_frames=sizes.frames, height=sizes.height, width=sizes.width)
    return config


def _random_batch(abstract: dict, seed: int) -> dict:
    """A batch shaped and sharded like `abstract` (TrainingSetup.abstract_batch): random latents and text,
    tracks in front of a pinhole camera, every point visible."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in abstract.items():
        shape, dtype = spec.shape, np.dtype(spec.dtype)
        if name.endswith("_xyz"):
            xyz = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
            xyz[..., 2] = 3.0 + xyz[..., 2]  # depth in [2, 4]
            value = xyz
        elif name.endswith("_intrinsics"):
            value = np.broadcast_to(np.array([[500.0, 0, 400], [0, 500.0, 240], [0, 0, 1]], np.float32), shape)
        elif name.endswith("_extrinsics"):
            value = np.broadcast_to(np.eye(4, dtype=np.float32), shape)
        elif dtype == np.bool_:
            value = np.ones(shape, bool)
        elif np.issubdtype(dtype, np.integer):
            value = np.zeros(shape, dtype)
        else:
            value = rng.standard_normal(shape).astype(dtype)
        out[name] = jax.device_put(jnp.asarray(value), spec.sharding)
    return out


def train_row(sizes: Sizes, peak: float | None) -> dict:
    def run():
        import jax
        from flax import nnx

        from trackedit_jax.parallel.mesh import make_mesh
        from trackedit_jax.train import build
        from trackedit_jax.train.flops import train_step_flops
        from trackedit_jax.train.setup import TrainingSetup
        from trackedit_jax.train.step import init_train_state

        config = model_config(sizes)
        mesh = make_mesh({"data": 1, "fsdp": 1, "context": 1, "tensor": 1}, devices=jax.devices()[:1])
        setup = TrainingSetup.create(config, mesh)
        params, frozen = setup.init_params()
        state = jax.jit(
            lambda p: init_train_state(p, setup.tx, int(config.train.seed), setup.use_ema),
            out_shardings=setup.state_sh,
        )(params)
        del params
        vae_graphdef, vae_state = nnx.split(build.abstract_vae(config))
        vae_state = jax.device_put(
            jax.tree.map(lambda x: jax.numpy.zeros(x.shape, x.dtype), vae_state), setup.replicated
        )
        step = setup.jit_step(vae_graphdef)
        batch = _random_batch(setup.abstract_batch(), seed=0)
        holder = {"state": state}

        def one_step():
            holder["state"], metrics = step(holder["state"], frozen, vae_state, batch)
            return metrics

        with jax.set_mesh(mesh):
            seconds = median_seconds(one_step, sizes.train_repeats)
            loss = float(jax.device_get(one_step()["loss"]))
        tokens = 2 * build.tokens_per_clip(config) * config.train.batch_size
        flops = train_step_flops(
            build.wan_config(config),
            latent_shape=build.latent_grid(config),
            text_tokens=int(config.text.text_len),
            batch_size=int(config.train.batch_size),
        )
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss}")
        return dict(
            seconds=seconds,
            rate=f"{tokens / seconds:,.0f} tokens/s",
            mfu=None if peak is None else flops / seconds / peak,
            note=f"loss {loss:.3f}",
        )

    shape = f"{sizes.config} {sizes.layers} layers, {sizes.frames}x{sizes.height}x{sizes.width}, batch 1"
    return dict(part="train step (EditByTrack)", impl="jit_step", shape=shape, run=run)


def sample_row(sizes: Sizes, peak: float | None) -> dict:
    def run():
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from trackedit_jax.diffusion.samplers import initial_noise, make_schedule, sample
        from trackedit_jax.infer.pipeline import EditVelocity
        from trackedit_jax.train import build
        from trackedit_jax.train.flops import train_step_flops

        config = model_config(sizes)
        model = nnx.jit(lambda: build.build_edit_model(config, seed=0))()
        graphdef, state = nnx.split(model)
        wan = model.wan_config
        f, h, w = build.latent_grid(config)
        tracks = int(config.data.max_tracks)
        keys = jax.random.split(jax.random.key(0), 4)
        latents = jax.random.normal(keys[0], (1, f, h, w, wan.in_dim))
        src = jnp.concatenate(
            [
                jax.random.uniform(keys[1], (1, f, tracks, 2), minval=-1, maxval=1),
                jax.random.uniform(keys[2], (1, f, tracks, 1)),
            ],
            -1,
        )
        valid = jnp.ones((1, f, tracks), bool)
        encode = nnx.jit(lambda m, *a: m.encode_source(*a))
        cache = encode(model, latents, src, src + 0.05, valid, valid)
        velocity = jax.tree_util.Partial(
            EditVelocity(graphdef, prediction=str(config.diffusion.prediction)), state, cache
        )
        text_len = int(config.text.text_len)
        cond = {"context": jax.random.normal(keys[3], (1, text_len, wan.text_dim))}
        uncond = {"context": jnp.zeros_like(cond["context"])}
        noise = initial_noise(0, latents.shape)
        schedule = make_schedule(sizes.sample_steps, shift=5.0, kind="wan_unipc")

        def loop():
            return sample(velocity, noise, cond, uncond=uncond, guidance=5.0, solver="unipc", schedule=schedule)

        seconds = median_seconds(loop, sizes.sample_repeats)
        out = loop()
        if not bool(jnp.all(jnp.isfinite(out))):
            raise FloatingPointError("the sampled latents are not finite")
        per_step = seconds / sizes.sample_steps
        call_flops = (
            train_step_flops(wan, latent_shape=(f, h, w), text_tokens=text_len, batch_size=2) / 3.0
        )  # one forward of the batch-2 (cond + uncond) call
        return dict(
            seconds=seconds,
            rate=f"{per_step * 1e3:.1f} ms/step",
            mfu=None if peak is None else call_flops / per_step / peak,
        )

    shape = f"{sizes.config} {sizes.layers} layers, {sizes.frames}x{sizes.height}x{sizes.width}, CFG batch 2"
    return dict(part=f"sampling loop ({sizes.sample_steps} UniPC steps)", impl="sample", shape=shape, run=run)


# ------------------------------------------------------------------------------------------------ the table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def run_row(row: dict) -> dict:
    """The cells of one row: its run's results, or the error it raised in `status`."""
    cells = {c: "" for c in COLUMNS}
    cells.update(part=row["part"], impl=row["impl"], shape=row["shape"])
    try:
        result = row["run"]()
    except Exception as error:  # a failing part reports and the check goes on
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        cells["status"] = _cell(f"error: {type(error).__name__}: {message}"[:200])
        return cells
    if "err" in result:
        cells["max abs err"] = f"{result['err'][0]:.2e}"
        cells["mean abs err"] = f"{result['err'][1]:.2e}"
    cells["median ms"] = f"{result['seconds'] * 1e3:.2f}"
    cells["rate"] = result.get("rate", "")
    if "mfu" in result:
        cells["MFU"] = "n/a (unknown peak)" if result["mfu"] is None else f"{result['mfu']:.3f}"
    cells["status"] = _cell("ok" + (f", {result['note']}" if result.get("note") else ""))
    return cells


def format_row(cells: dict) -> str:
    return "| " + " | ".join(cells[c] for c in COLUMNS) + " |"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the check and print the table; returns the rows' cells."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, Pallas interpreter: any backend, seconds")
    ap.add_argument("--parts", default="attention,train,sample", help="comma-separated subset of the parts")
    ap.add_argument("--peak-flops", type=float, default=0.0, help="peak FLOP/s per GPU for MFU (0: by device)")
    ap.add_argument("--tokens", type=int, help="attention sequence length (default 32760)")
    ap.add_argument("--layers", type=int, help="DiT blocks of the training step and sampling model (default 2)")
    ap.add_argument("--frames", type=int, help="clip frames, 4k+1 (default 17)")
    ap.add_argument("--model-attention", help="attention impl of the training step and sampling model (default auto)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"attention", "train", "sample"})
    if unknown:
        ap.error(f"--parts: unknown part(s) {unknown}; choose from attention, train, sample")

    import jax

    sizes = dataclasses.replace(DRY_RUN if args.dry_run else Sizes())
    for name in ("tokens", "layers", "frames", "model_attention"):
        if getattr(args, name) is not None:
            setattr(sizes, name, getattr(args, name))
    device = jax.devices()[0]
    peak = args.peak_flops or peak_flops(device.device_kind)
    peak_text = "unknown" if peak is None else f"{peak / 1e12:.0f} TFLOP/s bf16"
    print(
        f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} devices); jax {jax.__version__};"
        f" peak {peak_text}{'; dry run' if args.dry_run else ''}",
        flush=True,
    )
    rows = []
    if "attention" in parts:
        rows += attention_rows(sizes)
    if "train" in parts:
        rows.append(train_row(sizes, peak))
    if "sample" in parts:
        rows.append(sample_row(sizes, peak))

    print()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS), flush=True)
    table = []
    for row in rows:
        cells = run_row(row)
        table.append(cells)
        print(format_row(cells), flush=True)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
