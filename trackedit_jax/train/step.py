"""The training step: rectified flow on the target latents of a (source, target) pair.

  z_src, z_tgt = normalise(VAE.encode(video))      frozen VAE, or precomputed latents in the batch
  cond         = prepare_track_condition(tracks, cameras)       projected, resampled, normalised
  sigma ~ timestep distribution (uniform / logit-normal, shifted); eps ~ N(0, I)
  x_t = (1 - sigma) z_tgt + sigma eps;  v = eps - z_tgt
  loss = mean over target tokens of |model(x_t, 1000 sigma, text, z_src, cond) - v|^2

Text embeddings are replaced by the null (all-zero) embedding with probability `text.dropout`
(classifier-free guidance). Gradients flow only into the trainable parameters; the step is
jitted once with explicit shardings and donates the old state.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from ml_collections import ConfigDict

from trackedit_jax.diffusion.flow import noisy_sample, sample_sigmas, sigmas_to_timesteps, velocity_target
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


def batch_condition(batch: dict, image_size: tuple[int, int]):
    return prepare_track_condition_batch(
        batch["source_xyz"], batch["source_intrinsics"], batch["source_extrinsics"],
        batch["target_xyz"], batch["target_intrinsics"], batch["target_extrinsics"],
        image_size=image_size, point_mask=batch["point_mask"],
    )


def batch_text(batch: dict, batch_size: int, text_len: int, text_dim: int) -> jax.Array:
    if "text_embedding" in batch:
        return batch["text_embedding"].astype(jnp.float32)
    return jnp.zeros((batch_size, text_len, text_dim), jnp.float32)


def flow_loss(model, vae, batch: dict, key: jax.Array, config: ConfigDict, image_size: tuple[int, int]):
    """Mean squared velocity error on the target latents of one (micro)batch; returns (loss, aux)."""
    z_src, z_tgt = batch_latents(vae, batch)
    B = z_tgt.shape[0]
    cond = batch_condition(batch, image_size)
    wan = model.wan_config
    text = batch_text(batch, B, config.text.text_len, wan.text_dim)
    k_sigma, k_noise, k_drop = jax.random.split(key, 3)
    drop = jax.random.uniform(k_drop, (B,)) < config.text.dropout
    text = jnp.where(drop[:, None, None], 0.0, text)
    d = config.diffusion
    sigma = sample_sigmas(
        k_sigma, (B,), distribution=d.distribution, logit_mean=d.logit_mean, logit_std=d.logit_std, shift=d.shift
    )
    noise = jax.random.normal(k_noise, z_tgt.shape, jnp.float32)
    x_t = noisy_sample(z_tgt, noise, sigma)
    target = velocity_target(z_tgt, noise)
    v = model.forward(
        x_t, sigmas_to_timesteps(sigma), text, z_src, cond.source, cond.target, cond.source_valid, cond.target_valid
    )
    per_example = jnp.mean(jnp.square(v.astype(jnp.float32) - target), axis=(1, 2, 3, 4))
    return jnp.mean(per_example), {"sigma_mean": jnp.mean(sigma)}


def make_train_step(
    graphdef: nnx.GraphDef,
    vae_graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: Callable[[int], float],
    config: ConfigDict,
    image_size: tuple[int, int],
) -> Callable:
    """A pure step `(state, frozen, vae_state, batch) -> (state, metrics)`; jit it with shardings.

    `frozen` holds the non-trainable model state (the Wan base in LoRA mode), `vae_state` the VAE.
    With `train.grad_accum = k` the batch is split into k micro-batches whose gradients are averaged
    (one optimiser update per step).
    """
    accum = int(config.train.grad_accum)
    ema_decay = float(config.train.ema_decay)

    def loss_of(params, frozen, vae_state, micro, key):
        # `frozen` enters from the jit trace, `params` from the grad trace: rebuild the frozen Variables in
        # the current trace, or the NNX transforms inside the model (scanned blocks) refuse the mix
        # (LoRA mode, where the frozen Wan base is not empty).
        frozen = jax.tree.map(lambda a: a, frozen)
        model = nnx.merge(graphdef, params, frozen)
        vae = nnx.merge(vae_graphdef, vae_state)
        return flow_loss(model, vae, micro, key, config, image_size)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def step(state: TrainState, frozen, vae_state, batch: dict):
        key = jax.random.fold_in(state.rng, state.step)
        if accum == 1:
            (loss, aux), grads = grad_fn(state.params, frozen, vae_state, batch, key)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

            def body(carry, xs):
                g_sum, l_sum = carry
                i, mb = xs
                (l, a), g = grad_fn(state.params, frozen, vae_state, mb, jax.random.fold_in(key, i))
                return (jax.tree.map(jnp.add, g_sum, g), l_sum + l), a

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (g_sum, l_sum), aux = jax.lax.scan(body, (zeros, 0.0), (jnp.arange(accum), micro))
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
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(params),
            "learning_rate": schedule(state.step),
            **aux,
        }
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng, ema=ema)
        return new, metrics

    return step


def make_eval_step(graphdef, vae_graphdef, config: ConfigDict, image_size: tuple[int, int]) -> Callable:
    """`(params, frozen, vae_state, batch, key) -> loss`, the validation loss with a fixed key."""

    def evaluate(params, frozen, vae_state, batch, key):
        model = nnx.merge(graphdef, params, frozen)
        vae = nnx.merge(vae_graphdef, vae_state)
        cfg = config.copy_and_resolve_references()
        cfg.text.dropout = 0.0
        return flow_loss(model, vae, batch, key, cfg, image_size)[0]

    return evaluate
