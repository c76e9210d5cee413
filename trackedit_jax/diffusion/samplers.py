"""Flow-matching samplers: Euler and UniPC (order 2, bh2, flow prediction), classifier-free guidance.

The model enters as a pure function `velocity_fn(x_t, t, cond) -> v`: x_t (B, ...) in the state dtype, t (B,)
float32 model timesteps (1000 * sigma, truncated to integers for the Wan schedules as the official code
does) and `cond` any pytree of arrays. To keep model weights as jit *arguments* (not constants baked into
the program), pass a `jax.tree_util.Partial(fn, params, ...)`: its bound arrays are traced.

The whole loop is one jitted program (a `lax.fori_loop` over steps). Per-step coefficients are computed on
the host in float64 from the float32 sigma table and enter the program as arrays, so the schedule never
forces a recompile (only the number of steps does). With `progress=True` the same program is called on
chunks of steps and a tqdm bar advances between chunks (no host callbacks inside the loop).

Schedules (`make_schedule(num_steps, shift, kind)`), sigma_0 > ... > sigma_{n-1} > sigma_n = 0:
  "wan_unipc"        official Wan 2.1 UniPC: shift(linspace(0.999, 0, n+1)[:-1]), integer timesteps.
  "wan"              official Wan 2.1 `get_sampling_sigmas`: shift(linspace(1, 0, n+1)[:n]), integer timesteps.
  "diffusers_unipc"  diffusers UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=s) default.
  "diffusers_euler"  diffusers FlowMatchEulerDiscreteScheduler(shift=s) default (float timesteps).

Classifier-free guidance (Wan): v = v_uncond + guidance * (v_cond - v_uncond), on a batch that stacks
cond and uncond (one model call of batch 2B) unless `batch_cfg=False`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trackedit_jax.diffusion.flow import NUM_TRAIN_TIMESTEPS, shift_sigmas

SOLVERS = ("euler", "unipc")
SCHEDULES = ("wan_unipc", "wan", "diffusers_unipc", "diffusers_euler")

VelocityFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


# ----------------------------------------------------------------------------- schedules


@dataclasses.dataclass(frozen=True)
class Schedule:
    """sigmas: (n+1,) float32, decreasing, sigmas[n] = 0. timesteps: (n,) float32 model inputs."""

    sigmas: np.ndarray
    timesteps: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])


def make_schedule(
    num_steps: int,
    *,
    shift: float = 5.0,
    kind: str = "wan_unipc",
    integer_timesteps: bool | None = None,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> Schedule:
    """Sigma schedule of `kind` (see the module docstring) with the timestep shift s*sigma/(1+(s-1)*sigma).

    integer_timesteps: truncate model timesteps to integers; default True for the Wan and diffusers-UniPC
      schedules (both hand the model int64 timesteps) and False for "diffusers_euler".
    """
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int; got {num_steps!r}")
    if kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {SCHEDULES}; got {kind!r}")
    n, big_t = int(num_steps), num_train_timesteps
    if kind == "wan_unipc":
        sigma_max = float(np.float32(1.0 - 1.0 / big_t))  # official: sigmas = 1 - linspace(1, 1/T, T)[::-1]
        sigmas = shift_sigmas(np.linspace(sigma_max, 0.0, n + 1)[:-1], shift)
    elif kind == "wan":
        sigmas = shift_sigmas(np.linspace(1.0, 0.0, n + 1)[:n], shift)
    elif kind == "diffusers_unipc":
        sigmas = shift_sigmas(np.linspace(1.0, 1.0 / big_t, n + 1)[:-1], shift)
        if abs(sigmas[0] - 1.0) < 1e-6:
            sigmas[0] -= 1e-6  # as diffusers: keeps log(alpha/sigma) finite at the first step
    else:  # diffusers_euler: its training table is shifted once at construction, then again here
        train = shift_sigmas(np.arange(big_t, 0, -1, dtype=np.float32) / np.float32(big_t), np.float32(shift))
        sigma_max, sigma_min = float(train[0]), float(train[-1])
        sigmas = shift_sigmas(np.linspace(sigma_max * big_t, sigma_min * big_t, n) / big_t, shift)
    sigmas = np.asarray(sigmas, np.float32)
    if integer_timesteps is None:
        integer_timesteps = kind != "diffusers_euler"
    timesteps = sigmas * np.float32(big_t)
    if integer_timesteps:
        timesteps = np.trunc(timesteps)
    return Schedule(sigmas=np.concatenate([sigmas, np.zeros(1, np.float32)]), timesteps=timesteps.astype(np.float32))


# ----------------------------------------------------------------------------- per-step coefficients


def _euler_coefficients(schedule: Schedule) -> dict[str, np.ndarray]:
    s = schedule.sigmas
    return {"dt": (s[1:] - s[:-1]).astype(np.float32)}


def _unipc_coefficients(schedule: Schedule) -> dict[str, np.ndarray]:
    """UniPC-bh2 (order 2, data prediction, lower order at the first and last step) as linear weights.

    Step i evaluates m_i = x_i - sigma_i v(x_i), corrects x_i (i >= 1, UniC of the previous predictor's
    order) and predicts x_{i+1} (UniP):
      xc_i    = E x_i + A x_{i-1}^c + B m_{i-1} + C (m_{i-2} - m_{i-1}) + D (m_i - m_{i-1})
      x_{i+1} = P xc_i + Q m_i + R (m_{i-1} - m_i)
    with alpha = 1 - sigma, lambda = log(alpha / sigma), h = lambda_to - lambda_from, B_h = expm1(-h).
    """
    n = schedule.num_steps
    sig = schedule.sigmas.astype(np.float64)
    with np.errstate(divide="ignore"):
        lam = np.log1p(-sig) - np.log(sig)  # +inf at sigma = 0
    alpha = 1.0 - sig
    order = np.array([1 if (i == 0 or i == n - 1) else 2 for i in range(n)])
    c = {name: np.zeros(n) for name in "EABCDPQR"}
    for i in range(n):
        # UniP: from sigma_i to sigma_{i+1}.
        h = lam[i + 1] - lam[i]
        phi1 = np.expm1(-h)  # = B_h for bh2; -1 when sigma_{i+1} = 0
        c["P"][i] = sig[i + 1] / sig[i]
        c["Q"][i] = -alpha[i + 1] * phi1
        if order[i] == 2:
            rk = (lam[i - 1] - lam[i]) / h
            c["R"][i] = -alpha[i + 1] * phi1 * 0.5 / rk
        # UniC: corrects x_i with the order of the previous predictor.
        if i == 0:
            c["E"][i] = 1.0
            continue
        h = lam[i] - lam[i - 1]
        hh = -h
        phi1 = np.expm1(hh)
        c["A"][i] = sig[i] / sig[i - 1]
        c["B"][i] = -alpha[i] * phi1
        if order[i - 1] == 1:
            rhos = np.array([0.5])
        else:
            rk = (lam[i - 2] - lam[i - 1]) / h
            b1 = (phi1 / hh - 1.0) / phi1
            b2 = ((phi1 / hh - 1.0) / hh - 0.5) * 2.0 / phi1
            rhos = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), np.array([b1, b2]))
            c["C"][i] = -alpha[i] * phi1 * rhos[0] / rk
        c["D"][i] = -alpha[i] * phi1 * rhos[-1]
    return {k: v.astype(np.float32) for k, v in c.items()}


# ----------------------------------------------------------------------------- the loop


def _model_velocity(velocity_fn, x, t, cond, uncond, guidance, batch_cfg):
    t = jnp.full((x.shape[0],), t, jnp.float32)
    if uncond is None or guidance == 1.0:
        return velocity_fn(x, t, cond).astype(x.dtype)
    if batch_cfg:
        both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), cond, uncond)
        v = velocity_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), both).astype(x.dtype)
        v_cond, v_uncond = jnp.split(v, 2, axis=0)
    else:
        v_cond = velocity_fn(x, t, cond).astype(x.dtype)
        v_uncond = velocity_fn(x, t, uncond).astype(x.dtype)
    return v_uncond + guidance * (v_cond - v_uncond)


def _init_state(solver, noise):
    if solver == "euler":
        return (noise,)
    zeros = jnp.zeros_like(noise)
    return (noise, zeros, zeros, zeros)  # x_i, corrected x_{i-1}, m_{i-1}, m_{i-2}


def _run_steps(velocity_fn, state, cond, uncond, tables, start, stop, *, solver, guidance, batch_cfg):
    """Steps [start, stop) of the sampler; jitted once per (solver, guidance, batch_cfg, shapes)."""

    def velocity(x, i):
        return _model_velocity(velocity_fn, x, tables["t"][i], cond, uncond, guidance, batch_cfg)

    def euler_step(i, st):
        (x,) = st
        return (x + tables["dt"][i].astype(x.dtype) * velocity(x, i),)

    def unipc_step(i, st):
        x, x_prev, m1, m2 = st
        w = {k: tables[k][i].astype(x.dtype) for k in "EABCDPQR"}
        m = x - tables["sigma"][i].astype(x.dtype) * velocity(x, i)
        xc = w["E"] * x + w["A"] * x_prev + w["B"] * m1 + w["C"] * (m2 - m1) + w["D"] * (m - m1)
        x_next = w["P"] * xc + w["Q"] * m + w["R"] * (m1 - m)
        return (x_next, xc, m, m1)

    return jax.lax.fori_loop(start, stop, euler_step if solver == "euler" else unipc_step, state)


_run_steps_jit = jax.jit(_run_steps, static_argnames=("solver", "guidance", "batch_cfg"))


def initial_noise(seed: int | jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normal starting point x_T of `shape`, from an int seed or a PRNG key."""
    key = jax.random.PRNGKey(seed) if isinstance(seed, (int, np.integer)) else seed
    return jax.random.normal(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class SamplingProgram:
    """The jitted sampling loop with everything but the state bound: `program(state, start, stop)` runs
    steps [start, stop) (traced bounds: one compiled program for any range), `program.lower(...)` lowers
    it without running (the planner compiles it on abstract arguments). Built by `sampling_program`."""

    velocity_fn: Any
    cond: Any
    uncond: Any
    tables: dict
    solver: str
    guidance: float
    batch_cfg: bool
    num_steps: int

    def init_state(self, noise: jax.Array) -> tuple:
        """The loop state at sigma = 1: (x,) for Euler, (x, x_prev, m_1, m_2) for UniPC."""
        return _init_state(self.solver, noise)

    def _args(self, state, start, stop):
        return (self.velocity_fn, state, self.cond, self.uncond, self.tables, jnp.int32(start), jnp.int32(stop))

    def _static(self) -> dict:
        return dict(solver=self.solver, guidance=float(self.guidance), batch_cfg=self.batch_cfg)

    def __call__(self, state, start, stop):
        return _run_steps_jit(*self._args(state, start, stop), **self._static())

    def lower(self, state, start=0, stop=1):
        """`jax.stages.Lowered` of the loop for `state` (arrays or `jax.ShapeDtypeStruct`s)."""
        return _run_steps_jit.lower(*self._args(state, start, stop), **self._static())


def sampling_program(
    velocity_fn: VelocityFn,
    cond: Any,
    *,
    uncond: Any = None,
    guidance: float = 1.0,
    solver: str = "unipc",
    num_steps: int = 50,
    shift: float = 5.0,
    schedule: Schedule | None = None,
    batch_cfg: bool = True,
) -> SamplingProgram:
    """The `SamplingProgram` `sample` runs (arguments as there)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}")
    if schedule is None:
        schedule = make_schedule(num_steps, shift=shift, kind="wan_unipc" if solver == "unipc" else "wan")
    tables = _euler_coefficients(schedule) if solver == "euler" else _unipc_coefficients(schedule)
    tables = {k: jnp.asarray(v) for k, v in tables.items()}
    tables["t"] = jnp.asarray(schedule.timesteps)
    tables["sigma"] = jnp.asarray(schedule.sigmas[:-1])
    if not isinstance(velocity_fn, jax.tree_util.Partial):
        velocity_fn = jax.tree_util.Partial(velocity_fn)
    return SamplingProgram(
        velocity_fn, cond, uncond, tables, solver, float(guidance), batch_cfg, int(schedule.num_steps)
    )


def sample(
    velocity_fn: VelocityFn,
    noise: jax.Array,
    cond: Any,
    *,
    uncond: Any = None,
    guidance: float = 1.0,
    solver: str = "unipc",
    num_steps: int = 50,
    shift: float = 5.0,
    schedule: Schedule | None = None,
    batch_cfg: bool = True,
    progress: bool | Callable[[int, int], None] = False,
    chunk_size: int | None = None,
) -> jax.Array:
    """Integrates the flow ODE from `noise` (sigma = 1) to a sample (sigma = 0).

    Args:
      velocity_fn: pure `(x_t (B, ...), t (B,) float32, cond) -> v (B, ...)`; a plain function or a
        `jax.tree_util.Partial` (whose bound arrays become traced arguments).
      noise: (B, ...) float starting point, e.g. `initial_noise(seed, shape)`; its dtype is the state dtype.
      cond: pytree of conditioning arrays with batch axis 0 (text embedding, tracks, source latents...).
      uncond: the same pytree for the unconditional branch (e.g. the empty-prompt embedding); used when
        guidance != 1.
      guidance: classifier-free guidance scale (static: each value compiles once).
      solver: "unipc" (order 2, bh2) or "euler".
      num_steps, shift: build `make_schedule(num_steps, shift=shift, kind="wan_unipc" for unipc, "wan" for
        euler)` unless `schedule` is given.
      batch_cfg: evaluate cond and uncond in one call of batch 2B (else two calls).
      progress: run the same jitted loop in chunks of `chunk_size` steps (default ~10% of the steps) and
        show a tqdm bar between chunks. The default (False) runs the whole loop in one call. A callable
        `progress(done, total)` is called instead of the bar: once before the first step and after each
        chunk (default 1 step); an exception it raises stops the sampling (cancellation).
    Returns:
      (B, ...) the sample at sigma = 0, in noise's dtype.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}")
    if not jnp.issubdtype(noise.dtype, jnp.floating) or noise.ndim < 1:
        raise ValueError(f"noise must be a floating (B, ...) array; got {noise.dtype}{noise.shape}")
    run = sampling_program(
        velocity_fn,
        cond,
        uncond=uncond,
        guidance=guidance,
        solver=solver,
        num_steps=num_steps,
        shift=shift,
        schedule=schedule,
        batch_cfg=batch_cfg,
    )
    n = run.num_steps
    state = run.init_state(noise)
    if not progress:
        return run(state, 0, n)[0]
    if callable(progress):
        chunk = chunk_size or 1
        progress(0, n)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            state = jax.block_until_ready(run(state, start, stop))
            progress(stop, n)
        return state[0]

    from tqdm.auto import tqdm

    chunk = chunk_size or max(1, math.ceil(n / 10))
    with tqdm(total=n, desc=f"{solver} sampling", unit="step") as bar:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            state = jax.block_until_ready(run(state, start, stop))
            bar.update(stop - start)
    return state[0]
