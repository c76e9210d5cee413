"""Rectified-flow training maths: exact identities, diffusers' SD3 helpers as the reference for the
weighting and the timestep density, and moments of the sampled noise levels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_reference import HAVE_TORCH, needs_torch

from trackedit_jax.diffusion import flow

if HAVE_TORCH:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3


def _pair(seed=0, shape=(3, 5, 4)):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(k1, shape), jax.random.normal(k2, shape)


def test_noisy_sample_endpoints_are_exact():
    x0, eps = _pair()
    np.testing.assert_array_equal(flow.noisy_sample(x0, eps, jnp.zeros(3)), x0)
    np.testing.assert_array_equal(flow.noisy_sample(x0, eps, jnp.ones(3)), eps)
    mixed = flow.noisy_sample(x0, eps, jnp.array([0.0, 1.0, 0.25]))
    np.testing.assert_array_equal(mixed[0], x0[0])
    np.testing.assert_array_equal(mixed[1], eps[1])
    np.testing.assert_allclose(mixed[2], 0.75 * x0[2] + 0.25 * eps[2], rtol=1e-6)


def test_velocity_target_is_the_time_derivative_and_inverts():
    x0, eps = _pair(1)
    sigma = jnp.array([0.1, 0.5, 0.9])
    _, tangent = jax.jvp(lambda s: flow.noisy_sample(x0, eps, s), (sigma,), (jnp.ones(3),))
    target = flow.velocity_target(x0, eps)
    np.testing.assert_allclose(tangent, target, rtol=1e-6, atol=1e-6)
    x_t = flow.noisy_sample(x0, eps, sigma)
    np.testing.assert_allclose(flow.x0_from_velocity(x_t, target, sigma), x0, atol=1e-6)
    np.testing.assert_allclose(flow.noise_from_velocity(x_t, target, sigma), eps, atol=1e-6)


@needs_torch
def test_shift_matches_diffusers_and_scales_the_snr():
    shift = 5.0
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)  # shifts its training table
    unshifted = np.arange(1000, 0, -1, dtype=np.float32) / np.float32(1000)
    np.testing.assert_allclose(flow.shift_sigmas(unshifted, np.float32(shift)), sched.sigmas.numpy(), rtol=1e-6)
    sigma = np.linspace(0.01, 0.99, 50)
    shifted = flow.shift_sigmas(sigma, shift)
    np.testing.assert_allclose((1 - shifted) / shifted, (1 - sigma) / sigma / shift, rtol=1e-12)
    np.testing.assert_allclose(flow.shift_sigmas(shifted, 1 / shift), sigma, rtol=1e-12)
    assert flow.shift_sigmas(0.0, shift) == 0.0 and flow.shift_sigmas(1.0, shift) == 1.0


@needs_torch
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_logit_normal_moments(shift):
    n, mean, std = 200_000, -0.3, 0.8
    sigma = np.asarray(
        flow.sample_sigmas(
            jax.random.PRNGKey(0), (n,), distribution="logit_normal", logit_mean=mean, logit_std=std, shift=shift
        ),
        np.float64,
    )
    logit = np.log(sigma) - np.log1p(-sigma)
    # shifting adds log(shift) to the logit; standard errors of mean and std are ~0.002 here
    assert abs(logit.mean() - (mean + np.log(shift))) < 0.01
    assert abs(logit.std() - std) < 0.01
    # the same density as diffusers' SD3 helper (compared through the first two moments of sigma)
    ref = (
        compute_density_for_timestep_sampling(
            "logit_normal", n, logit_mean=mean, logit_std=std, generator=torch.Generator().manual_seed(0)
        )
        .double()
        .numpy()
    )
    ref = flow.shift_sigmas(ref, shift)
    assert abs(sigma.mean() - ref.mean()) < 0.005 and abs(sigma.std() - ref.std()) < 0.005


def test_uniform_moments_and_range():
    sigma = np.asarray(flow.sample_sigmas(jax.random.PRNGKey(1), (200_000,)), np.float64)
    assert sigma.min() >= 0.0 and sigma.max() < 1.0
    assert abs(sigma.mean() - 0.5) < 0.005 and abs(sigma.var() - 1 / 12) < 0.002


@pytest.mark.parametrize("distribution", ["uniform", "logit_normal"])
def test_pure_noise_fraction_draws_sigma_one_and_otherwise_the_plain_distribution(distribution):
    n, p = 200_000, 0.3
    key = jax.random.PRNGKey(2)
    kw = dict(distribution=distribution, logit_mean=0.8, logit_std=1.0, shift=3.0)
    sigma = np.asarray(flow.sample_sigmas(key, (n,), pure_noise_fraction=p, **kw))
    pure = sigma == 1.0
    assert abs(pure.mean() - p) < 0.005  # binomial standard error ~0.001
    # the rest is the plain draw from the first half of the split key, element for element
    plain = np.asarray(flow.sample_sigmas(jax.random.split(key)[0], (n,), **kw))
    np.testing.assert_array_equal(sigma[~pure], plain[~pure])
    assert plain.max() < 1.0
    # 0 is the plain distribution from the same key (existing runs reproduce bit for bit)
    np.testing.assert_array_equal(
        flow.sample_sigmas(key, (64,), pure_noise_fraction=0.0, **kw), flow.sample_sigmas(key, (64,), **kw)
    )
    # 1 draws every level at pure noise (a model for the one-step estimate only)
    np.testing.assert_array_equal(flow.sample_sigmas(key, (64,), pure_noise_fraction=1.0, **kw), np.ones(64))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="pure_noise_fraction"):
            flow.sample_sigmas(key, (2,), pure_noise_fraction=bad)


@needs_torch
@pytest.mark.parametrize("scheme", ["none", "cosmap", "sigma_sqrt"])
def test_loss_weights_match_diffusers(scheme):
    sigma = np.linspace(0.05, 0.95, 19, dtype=np.float32)
    ref = compute_loss_weighting_for_sd3(scheme, torch.tensor(sigma)).numpy()
    np.testing.assert_allclose(flow.loss_weights(jnp.asarray(sigma), scheme), ref, rtol=1e-5)


def test_masked_weighted_loss_against_numpy():
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((2, 3, 6, 4)).astype(np.float32)
    mask = rng.random((3, 6)) < 0.5
    sigma = np.array([0.2, 0.5, 0.7], np.float32)
    w = 2 / (np.pi * (1 - 2 * sigma + 2 * sigma**2))
    sq = (pred - target) ** 2
    want = (sq * mask[..., None] * w[:, None, None]).sum() / (mask.sum() * 4)
    got = flow.flow_matching_loss(
        jnp.asarray(pred), jnp.asarray(target), jnp.asarray(sigma), mask=jnp.asarray(mask), weighting="cosmap"
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(flow.flow_matching_loss(jnp.asarray(pred), jnp.asarray(target)), sq.mean(), rtol=1e-5)
    custom = flow.flow_matching_loss(
        jnp.asarray(pred), jnp.asarray(target), jnp.asarray(sigma), weighting=lambda s: 1 + s
    )
    np.testing.assert_allclose(custom, (sq * (1 + sigma)[:, None, None]).mean(), rtol=1e-5)


def test_bad_arguments():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="sigma must be"):
        flow.noisy_sample(x, x, jnp.zeros(3))
    with pytest.raises(ValueError, match="distribution"):
        flow.sample_sigmas(jax.random.PRNGKey(0), (2,), distribution="beta")
    with pytest.raises(ValueError, match="prefix"):
        flow.flow_matching_loss(x, x, mask=jnp.ones((3,)))
    with pytest.raises(ValueError, match="sigma is required"):
        flow.flow_matching_loss(x, x, weighting="cosmap")
    with pytest.raises(ValueError, match="shift"):
        flow.shift_sigmas(0.5, 0.0)


def test_sample_prediction_implies_the_exact_velocity_and_a_bounded_one_near_zero():
    import jax
    import jax.numpy as jnp

    from trackedit_jax.diffusion.flow import (
        SIGMA_MIN,
        noisy_sample,
        velocity_from_output,
        velocity_target,
    )

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x0 = jax.random.normal(k1, (3, 4, 5))
    eps = jax.random.normal(k2, (3, 4, 5))
    sigma = jnp.array([0.9, 0.3, 0.01])
    x_t = noisy_sample(x0, eps, sigma)
    v = velocity_from_output(x0, x_t, sigma, "sample")  # a perfect clean-sample prediction
    want = velocity_target(x0, eps)
    np.testing.assert_allclose(np.asarray(v[:2]), np.asarray(want[:2]), rtol=1e-5, atol=1e-5)
    # below SIGMA_MIN the division is by SIGMA_MIN: (x_t - x0) / SIGMA_MIN = sigma / SIGMA_MIN * v
    np.testing.assert_allclose(np.asarray(v[2]), np.asarray(want[2]) * 0.01 / SIGMA_MIN, rtol=1e-4, atol=1e-5)
    assert velocity_from_output(x0, x_t, sigma, "velocity") is x0
    with pytest.raises(ValueError, match="prediction"):
        velocity_from_output(x0, x_t, sigma, "epsilon")


def test_per_example_loss_against_numpy():
    """reduction="per_example": each example's own weighted masked mean; unmasked it is a plain mean."""
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((2, 3, 6, 4)).astype(np.float32)
    mask = rng.random((3, 6)) < 0.5
    mask[1] = False  # an example with nothing selected counts as 0, not NaN
    sigma = np.array([0.2, 0.5, 0.7], np.float32)
    w = 2 / (np.pi * (1 - 2 * sigma + 2 * sigma**2))
    sq = (pred - target) ** 2
    want = (sq * mask[..., None]).sum((1, 2)) * w / np.maximum(mask.sum(1) * 4, 1)
    got = flow.flow_matching_loss(
        jnp.asarray(pred),
        jnp.asarray(target),
        jnp.asarray(sigma),
        mask=jnp.asarray(mask),
        weighting="cosmap",
        reduction="per_example",
    )
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    plain = flow.flow_matching_loss(jnp.asarray(pred), jnp.asarray(target), reduction="per_example")
    np.testing.assert_array_equal(plain, jnp.mean(jnp.square(jnp.asarray(pred) - jnp.asarray(target)), axis=(1, 2)))
    with pytest.raises(ValueError, match="reduction"):
        flow.flow_matching_loss(jnp.asarray(pred), jnp.asarray(target), reduction="sum")


def test_x0_weighting_gives_the_clean_sample_error():
    """weighting "x0" on the velocity implied by an x0 prediction is |x0_hat - x0|^2 per example (sigma >=
    SIGMA_MIN), an exact identity: v_hat - v = (x0 - x0_hat) / sigma."""
    rng = np.random.default_rng(7)
    x0, x0_hat, eps = (jnp.asarray(a, jnp.float32) for a in rng.standard_normal((3, 4, 5, 6)))
    sigma = jnp.asarray([0.05, 0.3, 0.7, 0.98], jnp.float32)
    x_t = flow.noisy_sample(x0, eps, sigma)
    v_hat = flow.velocity_from_output(x0_hat, x_t, sigma, "sample")
    got = flow.flow_matching_loss(v_hat, flow.velocity_target(x0, eps), sigma, weighting="x0", reduction="per_example")
    want = np.mean((np.asarray(x0_hat) - np.asarray(x0)) ** 2, axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_edit_region_marks_latent_pixels_with_any_channel_past_the_threshold():
    r = np.random.default_rng(0)
    src = r.normal(size=(2, 3, 4, 5, 6)).astype(np.float32)
    tgt = src.copy()
    tgt[0, 1, 2, 3, 4] += 0.3  # one channel past 0.2: the latent pixel counts
    tgt[1, 0, 0, 0, :] += 0.1  # every channel changed, none past 0.2: it does not
    region = np.asarray(flow.edit_region(jnp.asarray(src), jnp.asarray(tgt), 0.2))
    expected = np.zeros((2, 3, 4, 5), bool)
    expected[0, 1, 2, 3] = True
    np.testing.assert_array_equal(region, expected)
    with pytest.raises(ValueError, match="one shape"):
        flow.edit_region(jnp.asarray(src), jnp.asarray(tgt[..., :3]), 0.2)


def test_temporal_difference_error_is_the_mean_squared_jump_of_the_error():
    """Against an explicit loop over frames, and the identity it exists for: an error that is the same in
    every frame costs nothing, one that jumps between frames costs the jump."""
    r = np.random.default_rng(3)
    pred, target = r.normal(size=(2, 2, 5, 4, 3, 3)).astype(np.float32)
    err = pred - target
    want = np.array([np.mean([np.mean((err[b, f] - err[b, f - 1]) ** 2) for f in range(1, 5)]) for b in range(2)])
    got = flow.temporal_difference_error(jnp.asarray(pred), jnp.asarray(target))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    still = target + r.normal(size=(2, 1, 4, 3, 3)).astype(np.float32)  # the same error in every frame
    np.testing.assert_allclose(flow.temporal_difference_error(jnp.asarray(still), jnp.asarray(target)), 0, atol=1e-10)
    jumped = target.copy()
    jumped[:, 3:] += 1.0  # an error of 1 from frame 3 on: one jump of 1 in 4 transitions
    np.testing.assert_allclose(flow.temporal_difference_error(jnp.asarray(jumped), jnp.asarray(target)), 0.25)
    with pytest.raises(ValueError, match="F >= 2"):
        flow.temporal_difference_error(jnp.asarray(pred[:, :1]), jnp.asarray(target[:, :1]))


def test_gate_choice_loss_is_optax_cross_entropy_weighted_by_the_disagreement():
    """Against optax's sigmoid cross-entropy, averaged per example with weights |source - warp|; a gate
    that saturates towards the nearer input costs (almost) nothing, the opposite choice costs its logit."""
    import optax

    r = np.random.default_rng(4)
    logits, src, warp, tgt = r.normal(size=(4, 2, 3, 4, 5, 6)).astype(np.float32)
    nearer_source = (np.abs(src - tgt) < np.abs(warp - tgt)).astype(np.float32)
    weight = np.abs(src - warp)
    ce = np.asarray(optax.sigmoid_binary_cross_entropy(jnp.asarray(logits), jnp.asarray(nearer_source)))
    want = (weight * ce).sum(axis=(1, 2, 3, 4)) / weight.sum(axis=(1, 2, 3, 4))
    got = flow.gate_choice_loss(*map(jnp.asarray, (logits, src, warp, tgt)))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    right = np.where(nearer_source > 0, 30.0, -30.0).astype(np.float32)
    np.testing.assert_allclose(flow.gate_choice_loss(*map(jnp.asarray, (right, src, warp, tgt))), 0, atol=1e-10)
    np.testing.assert_allclose(flow.gate_choice_loss(*map(jnp.asarray, (-right, src, warp, tgt))), 30, rtol=1e-6)
    np.testing.assert_allclose(flow.gate_choice_loss(*map(jnp.asarray, (logits, src, src, tgt))), 0)  # no choice
    with pytest.raises(ValueError, match="one shape"):
        flow.gate_choice_loss(*map(jnp.asarray, (logits[..., :3], src, warp, tgt)))
