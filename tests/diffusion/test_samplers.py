"""Samplers against diffusers' FlowMatchEulerDiscreteScheduler / UniPCMultistepScheduler (flow prediction).

The model is the exact velocity field of a Gaussian data distribution N(mu, s0^2 I) under
x_t = (1 - sigma) x0 + sigma eps, evaluated at the timestep each sampler hands the model (so the timestep
convention is checked too). cond / uncond differ in mu, and classifier-free guidance is applied as in
Wan (v_u + g (v_c - v_u)). The torch loop is the diffusers scheduler loop, the reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_reference import HAVE_TORCH, needs_torch

from trackedit_jax.diffusion.samplers import initial_noise, make_schedule, sample

if HAVE_TORCH:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

S0 = 0.5
SHIFT = 5.0


def gaussian_velocity(x, t, mu):
    """E[eps - x0 | x_t = x] for x0 ~ N(mu, S0^2): works for jnp and torch alike. x, mu: (B, D); t: (B,)."""
    sigma = (t / 1000.0)[:, None]
    var = (1 - sigma) ** 2 * S0**2 + sigma**2
    centred = x - (1 - sigma) * mu
    return sigma * centred / var - (mu + (1 - sigma) * S0**2 * centred / var)


def jax_velocity(x, t, cond):
    return gaussian_velocity(x, t, cond["mu"])


def _problem(seed, batch=3, dim=16):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((batch, dim)).astype(np.float32)
    mu = rng.standard_normal((batch, dim)).astype(np.float32)
    mu_uncond = 0.3 * rng.standard_normal((batch, dim)).astype(np.float32)
    return noise, mu, mu_uncond


def _diffusers_loop(scheduler, noise, mu, mu_uncond, guidance, dtype=None):
    dtype = torch.float32 if dtype is None else dtype
    x = torch.tensor(noise, dtype=dtype)
    mu_c, mu_u = torch.tensor(mu, dtype=dtype), torch.tensor(mu_uncond, dtype=dtype)
    for t in scheduler.timesteps:
        tt = t.expand(x.shape[0]).to(dtype)
        v_c = gaussian_velocity(x, tt, mu_c)
        v = v_c if guidance == 1.0 else (lambda v_u: v_u + guidance * (v_c - v_u))(gaussian_velocity(x, tt, mu_u))
        x = scheduler.step(v.to(dtype), t, x).prev_sample
    return x.numpy()


def _ours(solver, schedule, noise, mu, mu_uncond, guidance, **kw):
    return np.asarray(
        sample(
            jax_velocity,
            jnp.asarray(noise),
            {"mu": jnp.asarray(mu)},
            uncond={"mu": jnp.asarray(mu_uncond)},
            guidance=guidance,
            solver=solver,
            schedule=schedule,
            **kw,
        )
    )


def _euler_reference(kind, num_steps):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT)
    if kind == "diffusers_euler":
        sched.set_timesteps(num_steps)
    else:  # official Wan sigmas, given unshifted; diffusers applies the shift once
        sched.set_timesteps(sigmas=list(np.linspace(1.0, 0.0, num_steps + 1)[:num_steps]))
    return sched


def _unipc_reference(kind, num_steps):
    sched = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        solver_order=2,
        prediction_type="flow_prediction",
        solver_type="bh2",
        lower_order_final=True,
        use_flow_sigmas=True,
        flow_shift=SHIFT,
        final_sigmas_type="zero",
    )
    if kind == "diffusers_unipc":
        sched.set_timesteps(num_steps)
    else:  # official Wan UniPC: sigmas = linspace(0.999, 0, n + 1)[:-1], then shifted
        sched.set_timesteps(sigmas=np.linspace(0.999, 0.0, num_steps + 1)[:-1])
    return sched


@needs_torch
@pytest.mark.parametrize("num_steps", [10, 50])
@pytest.mark.parametrize("kind", ["diffusers_euler", "wan"])
def test_euler_matches_diffusers(kind, num_steps):
    noise, mu, mu_u = _problem(num_steps)
    ref_sched = _euler_reference(kind, num_steps)
    ours_sched = make_schedule(num_steps, shift=SHIFT, kind=kind, integer_timesteps=False)
    np.testing.assert_allclose(ours_sched.sigmas, ref_sched.sigmas.numpy(), rtol=0, atol=3e-7)
    # float32 t = 1000 sigma: one ulp of sigma is ~1e-4 in t
    np.testing.assert_allclose(ours_sched.timesteps, ref_sched.timesteps.numpy(), rtol=0, atol=3e-4)
    for guidance in (1.0, 5.0):
        ref = _diffusers_loop(_euler_reference(kind, num_steps), noise, mu, mu_u, guidance)
        ours = _ours("euler", ours_sched, noise, mu, mu_u, guidance)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


@needs_torch
@pytest.mark.parametrize("num_steps", [10, 50])
@pytest.mark.parametrize("kind", ["diffusers_unipc", "wan_unipc"])
def test_unipc_matches_diffusers(kind, num_steps):
    noise, mu, mu_u = _problem(100 + num_steps)
    ref_sched = _unipc_reference(kind, num_steps)
    ours_sched = make_schedule(num_steps, shift=SHIFT, kind=kind)
    np.testing.assert_allclose(ours_sched.sigmas, ref_sched.sigmas.numpy(), rtol=0, atol=3e-7)
    np.testing.assert_array_equal(ours_sched.timesteps, ref_sched.timesteps.numpy().astype(np.float32))
    for guidance in (1.0, 5.0):
        ref = _diffusers_loop(_unipc_reference(kind, num_steps), noise, mu, mu_u, guidance)
        ours = _ours("unipc", ours_sched, noise, mu, mu_u, guidance)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


@needs_torch
def test_float64_matches_diffusers_without_leaking_x64():
    noise, mu, mu_u = _problem(7)
    with jax.enable_x64(True):
        sched = make_schedule(20, shift=SHIFT, kind="wan_unipc")
        ours = sample(
            jax_velocity,
            jnp.asarray(noise, jnp.float64),
            {"mu": jnp.asarray(mu, jnp.float64)},
            uncond={"mu": jnp.asarray(mu_u, jnp.float64)},
            guidance=4.0,
            schedule=sched,
        )
        assert ours.dtype == jnp.float64
    assert jnp.zeros(1).dtype == jnp.float32  # the x64 switch did not leak
    ref = _diffusers_loop(_unipc_reference("wan_unipc", 20), noise, mu, mu_u, 4.0, dtype=torch.float64)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=1e-5)


def test_samplers_reach_the_data_distribution():
    # With the exact velocity the ODE maps eps to mu + S0 eps (the monotone map between the Gaussians).
    noise = np.asarray(initial_noise(0, (4096, 2)))
    mu = np.array([[1.5, -2.0]], np.float32).repeat(4096, 0)

    def error(solver, steps):
        kind = "wan_unipc" if solver == "unipc" else "wan"
        x = _ours(solver, make_schedule(steps, shift=3.0, kind=kind, integer_timesteps=False), noise, mu, mu, 1.0)
        return np.abs(x - (mu + S0 * noise)).max()

    assert error("unipc", 30) < 1e-3
    ratio = error("euler", 60) / error("euler", 120)
    assert 1.8 < ratio < 2.2, ratio  # Euler is first order


def test_chunked_progress_equals_single_jit_and_seeding():
    noise, mu, mu_u = _problem(3)
    kw = dict(solver="unipc", schedule=make_schedule(12, shift=SHIFT))
    one = _ours(noise=noise, mu=mu, mu_uncond=mu_u, guidance=5.0, **kw)
    chunked = _ours(noise=noise, mu=mu, mu_uncond=mu_u, guidance=5.0, progress=True, chunk_size=5, **kw)
    np.testing.assert_array_equal(one, chunked)
    two_calls = _ours(noise=noise, mu=mu, mu_uncond=mu_u, guidance=5.0, batch_cfg=False, **kw)
    np.testing.assert_allclose(one, two_calls, atol=1e-6)
    a, b, c = initial_noise(1, (2, 3)), initial_noise(1, (2, 3)), initial_noise(2, (2, 3))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_velocity_fn_params_are_traced_not_baked():
    # A Partial's bound arrays are jit arguments: new values, same program, new result.
    def fn(x, t, cond, scale):
        return scale * jax_velocity(x, t, cond)

    noise, mu, _ = _problem(4)
    cond = {"mu": jnp.asarray(mu)}
    outs = [
        sample(jax.tree_util.Partial(fn, scale=jnp.float32(s)), jnp.asarray(noise), cond, num_steps=4)
        for s in (1.0, 0.5)
    ]
    assert not np.allclose(outs[0], outs[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        make_schedule(0)
    with pytest.raises(ValueError, match="kind"):
        make_schedule(10, kind="karras")
    with pytest.raises(ValueError, match="solver"):
        sample(jax_velocity, jnp.zeros((1, 2)), {"mu": jnp.zeros((1, 2))}, solver="dpm")
