"""The training step: rectified flow on the target latents of a (source, target) pair.

  z_src, z_tgt = normalise(VAE.encode(video))      frozen VAE, or precomputed latents in the batch
  z_warp       = the same for the batch's warp clip (`model.warp_prior` models only)
  cond         = prepare_track_condition(tracks, cameras)       projected, resampled, normalised
  sigma ~ timestep distribution (uniform / logit-normal, shifted; 1 with diffusion.pure_noise_fraction)
  eps ~ N(0, I)
  x_t = (1 - sigma) z_tgt + sigma eps;  v = eps - z_tgt
  loss = mean over target tokens of w(sigma) |v_hat - v|^2,  w: diffusion.weighting (default 1);
         + diffusion.edit_weight * the same mean over the edit region only (`edit_region`: where the
         target latents differ from the source's), so that whole-frame edits do not drown out small ones;
         + diffusion.temporal_weight * `temporal_difference_error` of the decoded clean-sample estimate
         (frame-to-frame changes of its error, in pixels / vae scale: meant for cheap decoders);
         + diffusion.gate_weight * `gate_choice_loss` (`source_gate` models: the gate's cross-entropy
         against whichever of source and warp is nearer the target, weighted by |source - warp|);
         v_hat = the model's output (diffusion.prediction "velocity") or (x_t - output) / max(sigma, 0.05)
         ("sample": the model predicts x0)

Text embeddings are replaced by the null (all-zero) embedding with probability `text.dropout`
(classifier-free guidance). Gradients flow only into the trainable parameters; the step is
jitted once with explicit shardings and donates the old state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from ml_collections import ConfigDict

from trackedit_jax.diffusion.flow import (
    edit_region,
    flow_matching_loss,
    gate_choice_loss,
    noisy_sample,
    sample_sigmas,
    sigmas_to_timesteps,
    temporal_difference_error,
    velocity_from_output,
    velocity_target,
    x0_from_velocity,
)
from trackedit_jax.geometry.conditioning import prepare_track_condition_batch


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a training run changes; saved in every checkpoint.

    step: () int32; params: nnx.State of the trainable parameters; opt_state: optax state;
    rng: (2,) uint32 base key (per-step keys are folded in from `step`, so resuming is exact);
    ema: nnx.State like `params` or None.
    """

    step: Any
    params: Any
    opt_state: Any
    rng: Any
    ema: Any = None


def init_train_state(params: nnx.State, tx: optax.GradientTransformation, seed: int, ema: bool) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(seed),
        ema=jax.tree.map(jnp.copy, params) if ema else None,
    )


def video_to_latents(vae, video_uint8: jax.Array) -> jax.Array:
    """(B, F, H, W, 3) uint8 -> normalised latents (B, f, H/8, W/8, z) with the frozen VAE."""
    video = video_uint8.astype(jnp.float32) / 127.5 - 1.0
    return jax.lax.stop_gradient(vae.normalize_latents(vae.encode_frames(video)))


def batch_latents(vae, batch: dict) -> tuple[jax.Array, jax.Array]:
    if "source_latents" in batch and "target_latents" in batch:
        return batch["source_latents"], batch["target_latents"]
    return video_to_latents(vae, batch["source_video"]), video_to_latents(vae, batch["target_video"])


def batch_prior(vae, batch: dict) -> jax.Array | None:
    """Latents of the batch's warp clip (`warp_latents`, or `warp_video` through the VAE), followed on the
    channel axis by those of its coverage clip when the batch has one (`coverage_latents` or
    `warp_coverage`): (B, f, h, w, C) or (B, f, h, w, 2C); None without a warp."""
    if "warp_latents" not in batch and "warp_video" not in batch:
        return None
    clips = []
    for latents, video in (("warp_latents", "warp_video"), ("coverage_latents", "warp_coverage")):
        if latents in batch:
            clips.append(batch[latents])
        elif video in batch:
            clips.append(video_to_latents(vae, batch[video]))
    return jnp.concatenate(clips, axis=-1)


def batch_condition(batch: dict, image_size: tuple[int, int]):
    return prepare_track_condition_batch(
        batch["source_xyz"],
        batch["source_intrinsics"],
        batch["source_extrinsics"],
        batch["target_xyz"],
        batch["target_intrinsics"],
        batch["target_extrinsics"],
        image_size=image_size,
        point_mask=batch["point_mask"],
    )


def batch_text(batch: dict, batch_size: int, text_len: int, text_dim: int) -> jax.Array:
    if "text_embedding" in batch:
        return batch["text_embedding"].astype(jnp.float32)
    return jnp.zeros((batch_size, text_len, text_dim), jnp.float32)


def flow_loss(model, vae, batch: dict, keys: jax.Array, config: ConfigDict, image_size: tuple[int, int]):
    """Mean squared velocity error (`flow_matching_loss`) on the target latents of one (micro)batch;
    returns (loss () float32, aux {"sigma_mean": () float32}).

    keys: (B, 2) uint32, one PRNG key per example: the noise level, the noise and the text dropout of an
    example depend only on its own key, so splitting a batch into micro-batches changes nothing.
    """
    z_src, z_tgt = batch_latents(vae, batch)
    B = z_tgt.shape[0]
    cond = batch_condition(batch, image_size)
    wan = model.wan_config
    text = batch_text(batch, B, config.text.text_len, wan.text_dim)
    k_sigma, k_noise, k_drop = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 3))(keys), 1, 0)
    drop = jax.vmap(lambda k: jax.random.uniform(k))(k_drop) < config.text.dropout
    text = jnp.where(drop[:, None, None], 0.0, text)
    d = config.diffusion
    sigma = jax.vmap(
        lambda k: sample_sigmas(
            k,
            (),
            distribution=d.distribution,
            logit_mean=d.logit_mean,
            logit_std=d.logit_std,
            shift=d.shift,
            pure_noise_fraction=d.get("pure_noise_fraction", 0.0),
        )
    )(k_sigma)
    noise = jax.vmap(lambda k: jax.random.normal(k, z_tgt.shape[1:], jnp.float32))(k_noise)
    x_t = noisy_sample(z_tgt, noise, sigma)
    target = velocity_target(z_tgt, noise)
    prior = batch_prior(vae, batch)
    gate_weight = d.get("gate_weight", 0.0)
    out = model.forward(
        x_t,
        sigmas_to_timesteps(sigma),
        text,
        z_src,
        cond.source,
        cond.target,
        cond.source_valid,
        cond.target_valid,
        prior_latents=prior,
        return_gate=bool(gate_weight),
    )
    if gate_weight:
        out, gate_logits = out
    v = velocity_from_output(out, x_t, sigma, d.get("prediction", "velocity"))
    # per-example means, then their mean: every example weighs the same in any micro-batch split
    weighting = d.get("weighting", "none")
    per_example = flow_matching_loss(v, target, sigma=sigma, weighting=weighting, reduction="per_example")
    if d.get("edit_weight", 0.0):
        # an object edit changes a few percent of the pixels: in the plain mean its error is outweighed by
        # whole-frame (camera) edits; its mean over the changed latent pixels is not
        region = edit_region(z_src, z_tgt, d.edit_threshold)
        edit = flow_matching_loss(v, target, sigma=sigma, mask=region, weighting=weighting, reduction="per_example")
        per_example = per_example + d.edit_weight * edit
    if d.get("temporal_weight", 0.0):
        # a token draws its frames together and the next token draws its own: the error jumps between
        # frame groups, which the plain mean does not see and frame-to-frame tracking reads as motion
        frames = lambda z: vae.decode_frames(z, clamp=False)  # noqa: E731
        jump = temporal_difference_error(frames(x0_from_velocity(x_t, v, sigma)), frames(z_tgt))
        per_example = per_example + d.temporal_weight * jump
    if gate_weight:
        # the reconstruction error reaches the gate only through (source - warp), a few thousand values of
        # an object edit: this term tells it directly which of the two is right there
        warp = prior[..., : z_src.shape[-1]]
        per_example = per_example + gate_weight * gate_choice_loss(gate_logits, z_src, warp, z_tgt)
    return jnp.mean(per_example), {"sigma_mean": jnp.mean(sigma)}


def example_keys(rng: jax.Array, step: jax.Array, batch_size: int) -> jax.Array:
    """(batch_size, 2) per-example keys of a training step: fold the step into the run's key, then split."""
    return jax.random.split(jax.random.fold_in(rng, step), batch_size)


def make_train_step(
    graphdef: nnx.GraphDef,
    vae_graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: Callable[[int], float],
    config: ConfigDict,
    image_size: tuple[int, int],
    trainable,
) -> Callable:
    """A pure step `(state, frozen, vae_state, batch) -> (state, metrics)`; jit it with shardings.

    `frozen` holds the non-trainable model state (the Wan base in LoRA mode), `vae_state` the VAE.
    With `train.grad_accum = k` the batch is split into k micro-batches whose gradients are averaged
    (one optimiser update per step).
    """
    accum = int(config.train.grad_accum)
    ema_decay = float(config.train.ema_decay)

    def grad_fn(params, frozen, vae_state, micro, keys):
        # nnx.value_and_grad with a DiffState differentiates the trainable part of ONE merged model;
        # (jax.grad over `params` alone would mix trace levels inside the model's nnx.scan/remat).
        # Rebuilding the Variables here ties them to the current trace (inside lax.scan when accumulating).
        params, frozen = jax.tree.map(lambda a: a, (params, frozen))
        model = nnx.merge(graphdef, params, frozen)
        vae = nnx.merge(vae_graphdef, vae_state)
        loss = lambda m: flow_loss(m, vae, micro, keys, config, image_size)  # noqa: E731
        return nnx.value_and_grad(loss, argnums=nnx.DiffState(0, trainable), has_aux=True)(model)

    def step(state: TrainState, frozen, vae_state, batch: dict):
        batch_size = jax.tree.leaves(batch)[0].shape[0]
        keys = example_keys(state.rng, state.step, batch_size)
        if accum == 1:
            (loss, aux), grads = grad_fn(state.params, frozen, vae_state, batch, keys)
        else:
            split = lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:])  # noqa: E731
            micro = jax.tree.map(split, batch)

            def body(carry, xs):
                g_sum, l_sum = carry
                mb, mk = xs
                (l, a), g = grad_fn(state.params, frozen, vae_state, mb, mk)
                return (jax.tree.map(jnp.add, g_sum, g), l_sum + l), a

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (g_sum, l_sum), aux = jax.lax.scan(body, (zeros, 0.0), (micro, split(keys)))
            grads = jax.tree.map(lambda g: g / accum, g_sum)
            loss = l_sum / accum
            aux = jax.tree.map(jnp.mean, aux)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": schedule(state.step),
            **aux,
        }
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng, ema=ema)
        return new, metrics

    return step


def validation_loss(model, vae, batch: dict, key: jax.Array, config: ConfigDict, image_size: tuple[int, int]):
    """The flow loss of a batch with no text dropout and per-example keys split from `key`."""
    cfg = config.copy_and_resolve_references()
    cfg.text.dropout = 0.0
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    return flow_loss(model, vae, batch, jax.random.split(key, batch_size), cfg, image_size)[0]


def make_eval_step(graphdef, vae_graphdef, config: ConfigDict, image_size: tuple[int, int]) -> Callable:
    """`(params, frozen, vae_state, batch, key) -> loss`, `validation_loss` of the merged model."""

    def evaluate(params, frozen, vae_state, batch, key):
        model = nnx.merge(graphdef, params, frozen)
        vae = nnx.merge(vae_graphdef, vae_state)
        return validation_loss(model, vae, batch, key, config, image_size)

    return evaluate
