"""Ahead-of-time planning: lower and compile a step for a mesh without any weights or data, and report
per-device memory, FLOPs per step and a predicted step time on a chosen accelerator kind.

On this CPU machine a pod is simulated with `jax_num_cpu_devices` host devices; the same code on a
real TPU/GPU host compiles for the real devices. For training, what is compiled is
`TrainingSetup.jit_step`, the step `train` runs, on `TrainingSetup.abstract_arguments`: the batch holds
precomputed latents and text embeddings (the frozen VAE encode is planned separately), which is how the
paper-size run is fed. For editing, `infer.aot.plan_edit_step` compiles the sampler's loop
(`diffusion.samplers.SamplingProgram`, the program `EditPipeline` runs) for one model call per step.

Memory comes from XLA's buffer assignment (`compiled.memory_analysis()`): arguments (split here into
parameters, optimiser state and the rest from their shardings), temporaries (activations and scratch),
and outputs not aliased to donated arguments.

FLOPs per device per step, three figures side by side:
* model: the analytic count of `train.flops` (3 x forward for training, the MFU convention), the edit
  model's conditioner included;
* executed (analytic): what the compiled step runs according to the same formulas, with frozen layers'
  missing weight gradients, full rematerialisation's recomputed forward and the flash kernels' recomputed
  scores (`train.flops.executed_train_step_flops`);
* XLA, loops x trip counts: the matmul FLOPs of the compiled program itself, read from its optimised HLO
  with every while loop (the layer scan, the attention's query/key-block loops) multiplied by its trip
  count (`train.hlo_flops`). `compiled.cost_analysis()` counts each loop body once and so under-counts
  the step ~100x; it is shown as well, as "XLA cost analysis (loop bodies once)". Counting from the HLO is
  exact for whatever the compiler kept (including its own rematerialisation) and needs no second compile,
  where extrapolating from 1- and 2-layer probes would still under-count the attention loops inside each
  layer.

The predicted step time is model FLOPs / (peak bf16 FLOP/s x MFU) of the `--device` kind (for an edit,
the larger of that and the compiled per-device count: a batch of 1-2 is not split by fsdp, so each device
may run the whole model call). A step fits when
the peak estimate is at most the kind's HBM; otherwise `suggestions` names what to change.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
from flax import nnx
from ml_collections import ConfigDict

from trackedit_jax.parallel.devices import DeviceKind
from trackedit_jax.parallel.mesh import make_mesh
from trackedit_jax.train import build
from trackedit_jax.train.flops import edit_model_forward_parts, executed_train_step_flops, train_step_flops
from trackedit_jax.train.hlo_flops import count_matmul_flops
from trackedit_jax.train.setup import TrainingSetup

GIB = 1024**3
DEFAULT_MFU = 0.4


def sharded_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded `jax.ShapeDtypeStruct`s/arrays (replicated leaves in full)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if not hasattr(leaf, "shape"):
            continue
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        total += math.prod(shape) * jax.numpy.dtype(leaf.dtype).itemsize
    return int(total)


@dataclasses.dataclass
class StepPlan:
    """Per-device figures of a compiled step (bytes, FLOPs).

    mode: "train" or "edit"; parts: named per-device argument bytes (parameters, optimiser state, ...);
    steps: model calls per reported run (1 for a training step, the sampling steps of an edit);
    flops_*: per device per step (for an edit: per sampling step); device: the kind sized for (or None).
    """

    mode: str
    mesh: dict
    num_devices: int
    tokens_per_example: int
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    generated_code_bytes: int
    parts: dict
    flops_model: float
    flops_executed: float
    flops_xla: float
    flops_xla_cost_analysis: float | None
    compile_seconds: float
    steps: int = 1
    device: DeviceKind | None = None
    mfu: float = DEFAULT_MFU
    notes: tuple = ()
    config_hints: dict = dataclasses.field(default_factory=dict)
    executable: Any = dataclasses.field(default=None, repr=False)  # the compiled step, to run on real arrays

    @property
    def flops(self) -> float:
        """Matmul FLOPs per device per step of the compiled program (loops counted)."""
        return self.flops_xla

    @property
    def peak_bytes(self) -> int:
        """Arguments + temporaries + outputs not aliased to (donated) arguments."""
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

    @property
    def flops_agreement(self) -> float:
        """XLA (loops counted) / executed (analytic): 1.0 is perfect agreement."""
        return self.flops_xla / self.flops_executed if self.flops_executed else float("nan")

    @property
    def fits(self) -> bool | None:
        return None if self.device is None else self.peak_bytes <= self.device.hbm_bytes

    @property
    def predicted_seconds(self) -> float | None:
        """Seconds per step (training) or per edit (all sampling steps) at `mfu` of the device's peak."""
        if self.device is None:
            return None
        # an edit's batch (1 or 2) does not split over fsdp: devices may each run more than model / devices
        flops = self.flops_model if self.mode == "train" else max(self.flops_model, self.flops_xla)
        return self.steps * flops / (self.device.peak_bf16_flops * self.mfu)

    def suggestions(self) -> list[str]:
        """What to change when the step does not fit (empty when it fits or no device is given)."""
        if self.fits is not False:
            return []
        h = self.config_hints
        out = []
        n, m = self.num_devices, self.mesh
        data, fsdp, context = m.get("data", 1), m.get("fsdp", 1), m.get("context", 1)
        rest = {k: v for k, v in m.items() if v > 1 and k not in ("data", "fsdp")}

        def spec(**sizes) -> str:
            return ",".join(f"{k}={v}" for k, v in {**rest, **sizes}.items() if v > 1) or "data=1"

        if data > 1:
            out.append(f"more fsdp: --mesh {spec(fsdp=fsdp * data)} (parameters and optimiser state split further)")
        if fsdp > 1:
            out.append(
                f"context parallel: --mesh {spec(fsdp=fsdp // 2, context=context * 2)} (activations split by sequence)"
            )
        out.append(f"more devices: --devices {2 * n} --mesh {spec(data=data, fsdp=fsdp * 2)}")
        if self.mode == "train":
            if h.get("remat_policy") != "full":
                out.append("remat: --config.model.wan.remat_policy=full (recompute each block in the backward pass)")
            per_device_batch = h.get("per_device_batch", 1)
            if per_device_batch > 1:
                out.append(
                    f"smaller batch per device: --config.train.grad_accum={2 * h.get('grad_accum', 1)} "
                    f"(or --config.train.batch_size={h.get('batch_size', 2) // 2})"
                )
            if h.get("param_dtype") == "float32" and h.get("lora_mode") == "lora":
                out.append("frozen base in bfloat16: --config.model.wan.param_dtype=bfloat16")
        else:
            if h.get("param_dtype") == "float32":
                out.append("bfloat16 weights: --config.model.wan.param_dtype=bfloat16")
            out.append("fewer frames or a smaller grid: --config.data.num_frames / height / width")
        return out

    def table(self) -> str:
        rows = [
            ("mode", self.mode),
            ("mesh", str(self.mesh)),
            ("devices", str(self.num_devices)),
            ("tokens per example (paired)", f"{self.tokens_per_example:,}"),
        ]
        rows += [(f"{name} per device", f"{b / GIB:.3f} GiB") for name, b in self.parts.items()]
        rows += [
            ("arguments per device", f"{self.argument_bytes / GIB:.3f} GiB"),
            ("temporaries per device", f"{self.temp_bytes / GIB:.3f} GiB"),
            ("outputs per device", f"{self.output_bytes / GIB:.3f} GiB (aliased {self.alias_bytes / GIB:.3f})"),
            ("peak estimate per device", f"{self.peak_bytes / GIB:.3f} GiB"),
        ]
        unit = "step" if self.mode == "train" else "sampling step"
        rows += [
            (f"FLOPs per device per {unit}, model", f"{self.flops_model:.3e}"),
            (f"FLOPs per device per {unit}, executed (analytic)", f"{self.flops_executed:.3e}"),
            (f"FLOPs per device per {unit}, XLA (loops x trip counts)", f"{self.flops_xla:.3e}"),
            ("XLA / executed (> 1: devices repeat work)", f"{self.flops_agreement:.3f}"),
            (
                "XLA cost analysis (loop bodies once)",
                "n/a" if self.flops_xla_cost_analysis is None else f"{self.flops_xla_cost_analysis:.3e}",
            ),
        ]
        if self.device is not None:
            d = self.device
            what = "step" if self.mode == "train" else f"edit ({self.steps} steps)"
            rows += [
                ("device", f"{d.name}: {d.description}, {d.hbm_bytes / GIB:.0f} GiB, {d.peak_bf16_flops:.3g} FLOP/s"),
                ("fits", f"{'yes' if self.fits else 'NO'} ({self.peak_bytes / d.hbm_bytes:.0%} of HBM)"),
                (f"predicted time per {what} at {self.mfu:.0%} MFU", f"{self.predicted_seconds:.3g} s"),
            ]
        rows.append(("compile time", f"{self.compile_seconds:.1f} s"))
        rows += [("note", n) for n in self.notes]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def compiled_figures(compiled) -> dict:
    """Memory (bytes) and FLOPs (loop-corrected and XLA's own) of a compiled executable."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    hlo = count_matmul_flops(compiled.as_text())
    return dict(
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        generated_code_bytes=int(mem.generated_code_size_in_bytes),
        flops_xla=float(hlo.flops),
        flops_xla_cost_analysis=float(cost["flops"]) if cost and "flops" in cost else None,
        unknown_trip_loops=hlo.unknown_trip_loops,
    )


def recomputes_scores(config: ConfigDict, tokens: int, num_heads: int) -> bool:
    """Whether the DiT's self-attention compiles to a kernel that recomputes the scores in its backward
    pass (every kernel but dense "xla"; "auto" chooses by the shapes on this backend)."""
    from trackedit_jax.kernels.attention import select_impl

    impl = config.model.wan.attention_impl
    if impl == "auto":
        q = jax.ShapeDtypeStruct((1, tokens, num_heads, 1), jax.numpy.bfloat16)
        impl = select_impl(q, q)
    return impl != "xla"


def plan_training_step(
    config: ConfigDict, *, device: DeviceKind | None = None, mfu: float = DEFAULT_MFU, mesh=None
) -> StepPlan:
    """Lower and compile the training step of `config` for `mesh` (default: `config.mesh` over all
    visible devices); nothing is allocated."""
    build.validate_config(config, planning=True, num_devices=None if mesh is None else mesh.size)
    mesh = make_mesh(dict(config.mesh)) if mesh is None else mesh
    setup = TrainingSetup.create(config, mesh)
    vae_graphdef, abs_vae = nnx.split(build.abstract_vae(config))
    jitted = setup.jit_step(vae_graphdef)  # the very step `train` runs
    args = setup.abstract_arguments(abs_vae)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - t0
    fig = compiled_figures(compiled)
    fig.pop("unknown_trip_loops")

    wan, n = build.wan_config(config), mesh.size
    latent = build.latent_grid(config)
    tokens = 2 * build.tokens_per_clip(config)
    B = int(config.train.batch_size)
    parts = edit_model_forward_parts(
        wan,
        build.conditioner_config(config),
        latent_shape=latent,
        num_tracks=int(config.data.max_tracks),
        text_tokens=int(config.text.text_len),
        warp_prior=build.warp_prior(config),
        prior_clips=2 if build.warp_coverage(config) else 1,
        source_gate=build.source_gate(config),
        gate_coverage=build.gate_coverage(config),
    )
    model = 3.0 * B * sum(parts.values())
    executed = executed_train_step_flops(
        parts,
        batch_size=B,
        base_trainable=config.lora.mode == "full",
        remat_full=wan.remat_policy == "full",
        recompute_scores=recomputes_scores(config, tokens, wan.num_heads),
    )
    state, frozen, vae, batch = args
    mem_parts = {
        "trainable parameters": sharded_bytes(state.params),
        "optimiser state": sharded_bytes(state.opt_state) + sharded_bytes(state.ema),
        "frozen parameters": sharded_bytes(frozen) + sharded_bytes(vae),
        "batch": sharded_bytes(batch),
    }
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    dit_only = train_step_flops(wan, latent_shape=latent, text_tokens=int(config.text.text_len), batch_size=B)
    notes = (f"model FLOPs: 3 x forward of the DiT and the track conditioner (the DiT alone: {dit_only / n:.3e})",)
    return StepPlan(
        mode="train",
        mesh=dict(mesh.shape),
        num_devices=n,
        tokens_per_example=int(tokens),
        parts=mem_parts,
        flops_model=model / n,
        flops_executed=executed / n,
        compile_seconds=seconds,
        device=device,
        mfu=mfu,
        notes=notes,
        config_hints=dict(
            remat_policy=wan.remat_policy,
            per_device_batch=B // dp // int(config.train.grad_accum),
            grad_accum=int(config.train.grad_accum),
            batch_size=B,
            param_dtype=str(config.model.wan.param_dtype),
            lora_mode=config.lora.mode,
        ),
        executable=compiled,
        **fig,
    )
