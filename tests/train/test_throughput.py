"""Step timing over synchronised windows, and MFU against a peak measured on this machine."""

import time

import jax
import jax.numpy as jnp

from trackedit_jax.train.throughput import StepWindow, measure_peak_flops


def _chain(n_matmuls: int):
    @jax.jit
    def step(x, w):
        for _ in range(n_matmuls):
            x = jnp.tanh(x @ w)
        return x

    return step


def _timed_steps(step, x, w, steps: int):
    """Dispatch `steps` chained steps inside a StepWindow; returns (seconds per step, steps, dispatch s/step)."""
    window = StepWindow()
    window.start(0, x)
    t0 = time.perf_counter()
    y = x
    for _ in range(steps):
        y = step(y, w)
    dispatch = (time.perf_counter() - t0) / steps
    per_step, counted, _ = window.lap(steps, y)
    return per_step, counted, dispatch


def test_window_measures_device_work_not_dispatch():
    """Asynchronous steps: dispatch returns at once, the window waits for the last step's outputs."""
    n, k, steps = 768, 12, 6
    step = _chain(k)
    x = jnp.ones((n, n), jnp.float32) * 0.01
    w = jnp.eye(n, dtype=jnp.float32)
    jax.block_until_ready(step(x, w))
    t0 = time.perf_counter()
    jax.block_until_ready(step(x, w))
    one_blocked = time.perf_counter() - t0

    per_step, counted, dispatch = _timed_steps(step, x, w, steps)
    assert counted == steps
    assert per_step > 0.5 * one_blocked  # the whole work of every step is inside the window
    assert per_step > dispatch


def test_mfu_of_a_known_flop_count_is_at_most_one():
    n, k, steps = 1024, 8, 4
    step = _chain(k)
    x = jnp.ones((n, n), jnp.float32) * 0.01
    w = jnp.eye(n, dtype=jnp.float32)
    jax.block_until_ready(step(x, w))
    peak = measure_peak_flops(jnp.float32)
    per_step, _, _ = _timed_steps(step, x, w, steps)
    mfu = 2.0 * n**3 * k / per_step / peak
    assert 0.05 < mfu <= 1.0 + 0.1  # matmul-bound work reaches the probe's rate at most (10% timing noise)
