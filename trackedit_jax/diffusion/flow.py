"""Rectified-flow (flow-matching) training maths, the convention of Wan 2.1.

Noise level sigma in [0, 1] (sigma = 1 is pure noise, the model timestep is t = 1000 * sigma):

  x_t      = (1 - sigma) * x0 + sigma * eps
  target v = d x_t / d sigma = eps - x0          (what the model predicts)
  x0       = x_t - sigma * v,     eps = x_t + (1 - sigma) * v

What the network outputs (`PREDICTIONS`): "velocity" (Wan: the output is v) or "sample" (the output is a
clean-sample estimate x0_hat, turned into v = (x_t - x0_hat) / sigma; the loss stays on v). A network
whose output passes through a narrow linear head (a pixel-space DiT with large patches) cannot represent
the per-pixel noise a velocity contains, but can represent clean images, which lie on a low-dimensional
manifold; `velocity_from_output` divides by max(sigma, SIGMA_MIN) so the conversion stays bounded.

Terminal noise level: no continuous distribution draws sigma = 1 exactly, yet the first sampling step
starts there from pure noise. A model never trained at sigma = 1 reads the faint signal it learnt to
expect near 1 out of that noise and paints the noise's pattern into its estimate (Lin et al. 2024,
"Common diffusion noise schedules and sample steps are flawed"). `pure_noise_fraction` of the training
samples are drawn at sigma = 1, where the input holds nothing of the target and the best estimate is the
conditional mean, whatever the noise. With a fraction of 1 every sample is drawn there: the model learns
only the one-step estimate, and a multi-step sampler would feed it levels it never saw.

Timestep shift s (Wan/SD3): sigma' = s * sigma / (1 + (s - 1) * sigma), i.e. the signal-to-noise ratio
(1 - sigma) / sigma is divided by s, so s > 1 spends more steps / training samples at high noise.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

NUM_TRAIN_TIMESTEPS = 1000
PREDICTIONS = ("velocity", "sample")
SIGMA_MIN = 0.05  # floor of sigma in the sample -> velocity conversion
DISTRIBUTIONS = ("uniform", "logit_normal")
WEIGHTINGS = ("none", "cosmap", "sigma_sqrt", "x0")


def shift_sigmas(sigma, shift: float):
    """s * sigma / (1 + (s - 1) * sigma); identity for s = 1; works on numpy or jax arrays and floats."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0; got {shift}")
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sigmas_to_timesteps(sigma, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """The model's timestep input, t = num_train_timesteps * sigma (float)."""
    return sigma * num_train_timesteps


def sample_sigmas(
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    distribution: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    pure_noise_fraction: float = 0.0,
) -> jax.Array:
    """Training noise levels, float32 of `shape`.

    "uniform": sigma ~ U[0, 1). "logit_normal" (SD3): sigma = sigmoid(n), n ~ N(logit_mean, logit_std^2).
    The shift is applied afterwards (for logit-normal it adds log(shift) to the logit mean). Then each
    level is replaced by exactly 1 with probability `pure_noise_fraction` (module docstring); with 0 the
    draw is the plain distribution's, from the same key.
    """
    if not 0.0 <= pure_noise_fraction <= 1.0:
        raise ValueError(f"pure_noise_fraction must be in [0, 1]; got {pure_noise_fraction}")
    if pure_noise_fraction > 0.0:
        key, k_pure = jax.random.split(key)
        pure = jax.random.uniform(k_pure, shape) < pure_noise_fraction
        sigma = sample_sigmas(
            key, shape, distribution=distribution, logit_mean=logit_mean, logit_std=logit_std, shift=shift
        )
        return jnp.where(pure, jnp.float32(1.0), sigma)
    if distribution == "uniform":
        sigma = jax.random.uniform(key, shape, jnp.float32)
    elif distribution == "logit_normal":
        if logit_std <= 0:
            raise ValueError(f"logit_std must be > 0; got {logit_std}")
        sigma = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, shape, jnp.float32))
    else:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}; got {distribution!r}")
    return shift_sigmas(sigma, shift) if shift != 1.0 else sigma


def _per_sample(sigma: jax.Array, like: jax.Array) -> jax.Array:
    """Broadcasts a (B,) noise level over a (B, ...) array."""
    sigma = jnp.asarray(sigma, like.dtype)
    if sigma.ndim == 0:
        return sigma
    if sigma.ndim != 1 or sigma.shape[0] != like.shape[0]:
        raise ValueError(f"sigma must be a scalar or (B,) = ({like.shape[0]},); got {sigma.shape}")
    return sigma.reshape((-1,) + (1,) * (like.ndim - 1))


def noisy_sample(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
    """x_t = (1 - sigma) x0 + sigma eps. x0, noise: (B, ...); sigma: scalar or (B,)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have one shape; got {x0.shape} and {noise.shape}")
    s = _per_sample(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    """The regression target v = eps - x0 (= d x_t / d sigma)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have one shape; got {x0.shape} and {noise.shape}")
    return noise - x0


def x0_from_velocity(x_t: jax.Array, velocity: jax.Array, sigma: jax.Array) -> jax.Array:
    """Clean-sample estimate x0 = x_t - sigma v."""
    return x_t - _per_sample(sigma, x_t) * velocity


def noise_from_velocity(x_t: jax.Array, velocity: jax.Array, sigma: jax.Array) -> jax.Array:
    """Noise estimate eps = x_t + (1 - sigma) v."""
    return x_t + (1.0 - _per_sample(sigma, x_t)) * velocity


def velocity_from_output(output: jax.Array, x_t: jax.Array, sigma: jax.Array, prediction: str = "velocity"):
    """The velocity implied by a network output (module docstring). output, x_t: (B, ...); sigma: scalar or (B,).

    "velocity": the output itself. "sample": (x_t - output) / max(sigma, SIGMA_MIN), float32.
    """
    if prediction == "velocity":
        return output
    if prediction == "sample":
        s = jnp.maximum(_per_sample(jnp.asarray(sigma, jnp.float32), x_t.astype(jnp.float32)), SIGMA_MIN)
        return (x_t.astype(jnp.float32) - output.astype(jnp.float32)) / s
    raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")


def loss_weights(sigma: jax.Array, weighting: str | Callable[[jax.Array], jax.Array] = "none") -> jax.Array:
    """Per-sample loss weights (SD3 schemes): "none" = 1, "cosmap" = 2 / (pi (1 - 2 sigma + 2 sigma^2)),
    "sigma_sqrt" = sigma^-2; "x0" = sigma^2, which turns the velocity error of an x0-predicting model into
    its clean-sample error |x0_hat - x0|^2 (for sigma >= SIGMA_MIN); or any callable sigma -> weight."""
    sigma = jnp.asarray(sigma, jnp.float32)
    if callable(weighting):
        return jnp.asarray(weighting(sigma), jnp.float32)
    if weighting == "none":
        return jnp.ones_like(sigma)
    if weighting == "cosmap":
        return 2.0 / (jnp.pi * (1.0 - 2.0 * sigma + 2.0 * sigma**2))
    if weighting == "sigma_sqrt":
        return sigma**-2.0
    if weighting == "x0":
        return sigma**2
    raise ValueError(f"weighting must be one of {WEIGHTINGS} or a callable; got {weighting!r}")


REDUCTIONS = ("mean", "per_example")


def edit_region(source: jax.Array, target: jax.Array, threshold: float) -> jax.Array:
    """(B, f, h, w) bool: the latent pixels where any channel of the target latents differs from the
    source latents (both (B, f, h, w, C), normalised) by more than `threshold`: where an edit changes the
    clip. With the space-to-depth autoencoder a latent pixel is a 4x4-pixel block of up to 4 frames and its
    channels are the pixels themselves, so threshold 0.2 is `trackedit eval`'s 0.05 in [0, 1] per channel."""
    if source.shape != target.shape:
        raise ValueError(f"source and target latents must have one shape; got {source.shape} and {target.shape}")
    diff = jnp.abs(target.astype(jnp.float32) - source.astype(jnp.float32))
    return jnp.any(diff > threshold, axis=-1)


def gate_choice_loss(gate_logits: jax.Array, source: jax.Array, warp: jax.Array, target: jax.Array) -> jax.Array:
    """(B,) float32: the cross-entropy of a source gate's choice against the better of its two inputs.

    gate_logits, source, warp, target: (B, f, h, w, C) (logits; normalised latents). The gate should be 1
    where the source is nearer the target than the warp is, and 0 where the warp is nearer; each value weighs
    |source - warp|, so a choice between equal inputs costs nothing. The mean per example is weighted by
    that, so the few values of a small object edit where the source is stale teach the gate directly instead
    of only through the reconstruction error, which reaches the gate through (source - warp) alone."""
    shapes = {a.shape for a in (gate_logits, source, warp, target)}
    if len(shapes) != 1:
        raise ValueError(f"gate logits, source, warp and target must have one shape; got {sorted(shapes)}")
    x, s, w, t = (a.astype(jnp.float32) for a in (gate_logits, source, warp, target))
    choose_source = (jnp.abs(s - t) < jnp.abs(w - t)).astype(jnp.float32)
    weight = jnp.abs(s - w)
    cross_entropy = jax.nn.softplus(x) - x * choose_source  # -y log sigmoid(x) - (1 - y) log(1 - sigmoid(x))
    axes = tuple(range(1, x.ndim))
    return jnp.sum(weight * cross_entropy, axes) / jnp.maximum(jnp.sum(weight, axes), 1e-6)


def temporal_difference_error(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """(B,) float32: the mean over frames 1.. of |(p_f - p_{f-1}) - (t_f - t_{f-1})|^2, for videos (B, F, ...).

    An error that is the same in every frame costs nothing here; one that changes from frame to frame (a
    token that redraws its frames differently from the next token's) costs its jump. Lucas-Kanade tracks
    frame to frame, so it reads such jumps as motion."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have one shape; got {prediction.shape} and {target.shape}")
    if prediction.ndim < 3 or prediction.shape[1] < 2:
        raise ValueError(f"videos must be (B, F >= 2, ...); got {prediction.shape}")
    err = prediction.astype(jnp.float32) - target.astype(jnp.float32)
    jump = err[:, 1:] - err[:, :-1]
    return jnp.mean(jnp.square(jump), axis=tuple(range(1, jump.ndim)))


def flow_matching_loss(
    prediction: jax.Array,
    target: jax.Array,
    sigma: jax.Array | None = None,
    *,
    mask: jax.Array | None = None,
    weighting: str | Callable[[jax.Array], jax.Array] = "none",
    reduction: str = "mean",
) -> jax.Array:
    """Weighted mean squared error over the selected elements, float32.

    Args:
      prediction, target: (B, ...) model velocity and `velocity_target`.
      sigma: (B,) noise levels (needed unless weighting == "none").
      mask: optional bool/0-1 array of shape (B, ...) that is a prefix of prediction's shape, e.g. (B, L)
        for (B, L, D) tokens; the loss averages only over selected elements (the target tokens).
      weighting: see `loss_weights`.
      reduction: "mean": one scalar over the whole batch; "per_example": a (B,) loss per example (the
        training step averages these, so every example weighs the same whatever its mask).
    Returns:
      "mean": () sum(w_b * m * (prediction - target)^2) / sum(m), with m broadcast over the trailing axes;
      "per_example": (B,) the same sums and counts taken over each example's own elements.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have one shape; got {prediction.shape} and {target.shape}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    err = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    selected = _selection(mask, err)
    weighted = err if selected is None else err * selected
    if weighting != "none":
        if sigma is None:
            raise ValueError("sigma is required for a loss weighting other than 'none'")
        weighted = weighted * _per_sample(loss_weights(sigma, weighting), err)
    if reduction == "per_example":
        axes = tuple(range(1, err.ndim))
        if selected is None:  # every element counts: a plain mean (the training step's exact numerics)
            return jnp.mean(weighted, axis=axes)
        return jnp.sum(weighted, axis=axes) / jnp.maximum(jnp.sum(selected, axis=axes), 1.0)
    count = max(err.size, 1) if selected is None else jnp.maximum(jnp.sum(selected), 1.0)
    return jnp.sum(weighted) / count


def _selection(mask: jax.Array | None, err: jax.Array) -> jax.Array | None:
    """A (B, ...) prefix mask broadcast to float32 of `err`'s shape; None (select everything) for no mask."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(err.shape[: mask.ndim]):
        raise ValueError(f"mask shape must be a prefix of {err.shape}; got {tuple(mask.shape)}")
    trailing = (1,) * (err.ndim - mask.ndim)
    return jnp.broadcast_to(mask.astype(jnp.float32).reshape(mask.shape + trailing), err.shape)
