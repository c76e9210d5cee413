"""Ahead-of-time planning of an edit: the sampler's loop of `EditPipeline`, compiled for a mesh on abstract
weights, with per-device memory and FLOPs per sampling step (see `train.aot` for the figures).

What is compiled is the `SamplingProgram` `EditPipeline.generate` runs (`diffusion.samplers`): UniPC over
the model's velocity, one model call per step of batch 2 with classifier-free guidance (the config
trains with text dropout) or 1 without. Parameters are placed by `parallel.sharding.state_shardings` and
the source cache by `cache_shardings`, exactly as a pipeline built with `mesh=` places them. The loop
runs over traced step bounds, so XLA does not know its trip count: the loop-corrected FLOP count is one
step, and an edit is `num_steps` of them. The model is the exported one (LoRA merged into the base, as
`trackedit export` writes it). The source encoding (run once per edit), the VAE and the text
encoder are not part of this program.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from trackedit_jax.diffusion.samplers import sampling_program
from trackedit_jax.infer.pipeline import EditVelocity, cache_shardings
from trackedit_jax.parallel.devices import DeviceKind
from trackedit_jax.parallel.mesh import make_mesh
from trackedit_jax.parallel.sharding import state_shardings
from trackedit_jax.train import build
from trackedit_jax.train.aot import DEFAULT_MFU, StepPlan, compiled_figures, sharded_bytes
from trackedit_jax.train.checkpointing import abstract_like
from trackedit_jax.train.flops import edit_model_forward_parts

DEFAULT_GUIDANCE = 5.0


def plan_edit_step(
    config: ConfigDict,
    *,
    num_steps: int = 50,
    device: DeviceKind | None = None,
    mfu: float = DEFAULT_MFU,
    mesh=None,
) -> StepPlan:
    """Lower and compile the sampling loop for an edit at the config's clip size (`data.num_frames`,
    `data.height` x `data.width`, `data.max_tracks` tracks) on `mesh` (default: `config.mesh` over all
    visible devices); nothing is allocated. Per-step FLOPs; `predicted_seconds` covers `num_steps` steps."""
    if num_steps < 1:
        raise ValueError(f"--steps must be >= 1; got {num_steps}")
    mesh = make_mesh(dict(config.mesh)) if mesh is None else mesh
    config = ConfigDict(config.to_dict())
    config.lora.mode = "full"  # the exported model: LoRA merged into the base (`trackedit export`)
    wan, cond_cfg = build.wan_config(config), build.conditioner_config(config)
    graphdef, abs_state = nnx.split(nnx.eval_shape(lambda: build.build_edit_model(config, seed=0)))
    state = abstract_like(abs_state, state_shardings(abs_state, mesh))
    f, h, w = build.latent_grid(config)
    N, T = int(config.data.max_tracks), int(config.text.text_len)
    replicated = NamedSharding(mesh, P())

    def sds(shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    latents, xyz, valid = sds((1, f, h, w, wan.in_dim)), sds((1, f, N, 3)), sds((1, f, N), jnp.bool_)
    k = 2 if build.warp_coverage(config) else 1
    prior = sds((1, f, h, w, wan.in_dim * k)) if build.warp_prior(config) else None
    abs_cache = jax.eval_shape(
        lambda st, *a, prior: nnx.merge(graphdef, st).encode_source(*a, prior_latents=prior),
        abs_state,
        latents,
        xyz,
        xyz,
        valid,
        valid,
        prior=prior,
    )
    cache = abstract_like(abs_cache, cache_shardings(abs_cache, mesh))
    use_cfg = float(config.text.dropout) > 0
    context = sds((1, T, wan.text_dim))
    velocity_fn = EditVelocity(graphdef, config.diffusion.get("prediction", "velocity"))
    velocity = jax.tree_util.Partial(velocity_fn, state, cache)
    program = sampling_program(
        velocity,
        {"context": context},
        uncond={"context": context} if use_cfg else None,
        guidance=DEFAULT_GUIDANCE if use_cfg else 1.0,
        solver="unipc",
        num_steps=int(num_steps),
        shift=float(config.diffusion.shift),
    )
    x = sds((1, f, h, w, wan.in_dim))
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = program.lower((x, x, x, x), 0, int(num_steps)).compile()
    seconds = time.perf_counter() - t0
    fig = compiled_figures(compiled)
    unknown = fig.pop("unknown_trip_loops")

    parts = edit_model_forward_parts(wan, cond_cfg, latent_shape=(f, h, w), num_tracks=N, text_tokens=T)
    batch = 2 if use_cfg else 1
    per_step = batch * (parts["dit_linear"] + parts["dit_inputs"] + parts["dit_attention"] + parts["lora"])
    n = mesh.size
    notes = [
        f"per sampling step: one model call of batch {batch} ({'with' if use_cfg else 'without'} CFG); "
        "the source encoding, VAE and text encoder run once per edit and are not included",
    ]
    if unknown != 1:
        notes.append(f"{unknown} loops of unknown trip count (expected the sampler's only): FLOPs may be off")
    plan = StepPlan(
        mode="edit",
        mesh=dict(mesh.shape),
        num_devices=n,
        tokens_per_example=2 * (f // wan.patch_size[0]) * (h // wan.patch_size[1]) * (w // wan.patch_size[2]),
        parts={"parameters": sharded_bytes(state), "source cache": sharded_bytes(cache)},
        flops_model=per_step / n,
        flops_executed=per_step / n,
        compile_seconds=seconds,
        steps=int(num_steps),
        device=device,
        mfu=mfu,
        notes=tuple(notes),
        config_hints=dict(param_dtype=str(config.model.wan.param_dtype)),
        executable=compiled,
        **fig,
    )
    return plan
