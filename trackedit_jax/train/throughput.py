"""Honest training throughput: a measured matmul peak, and step times over synchronised windows.

A jitted step returns before its work is done; timing at dispatch measures the host, not the device.
`StepWindow` therefore ends every window by waiting for the last step's outputs, and reports the
window's wall time divided by its steps. MFU is model FLOPs per second over `measure_peak_flops`,
a matmul probe run on this machine at start-up (or a peak the user gives).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def measure_peak_flops(dtype=jnp.float32, *, size: int = 2048, repeats: int = 4) -> float:
    """FLOP/s of one device on a (size x size) @ (size x size) matmul in `dtype`: the best of `repeats`
    synchronised runs after a warm-up. On a CPU the device is the whole host (every core)."""
    device = jax.devices()[0]
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    b = jax.device_put(jnp.full((size, size), 0.5, dtype), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


class StepWindow:
    """Wall time per step over windows that end when a step's outputs exist.

    window = StepWindow()
    window.start(step, outputs)       # waits for `outputs`, then starts the clock
    ... run steps ...
    seconds_per_step, steps = window.lap(step, outputs)   # waits, reads the clock, restarts it
    """

    def __init__(self):
        self._t = None
        self._step = None
        self.data_seconds = 0.0

    def start(self, step: int, outputs=None) -> None:
        if outputs is not None:
            jax.block_until_ready(outputs)
        self._t, self._step, self.data_seconds = time.perf_counter(), int(step), 0.0

    @property
    def started(self) -> bool:
        return self._t is not None

    def steps_to(self, step: int) -> int:
        """Steps between the window's start and `step`."""
        return int(step) - self._step

    def add_data_time(self, seconds: float) -> None:
        self.data_seconds += seconds

    def lap(self, step: int, outputs) -> tuple[float, int, float]:
        """(seconds per step, steps in the window, host data seconds per step); restarts the window."""
        jax.block_until_ready(outputs)
        now = time.perf_counter()
        steps = max(int(step) - self._step, 1)
        per_step, data = (now - self._t) / steps, self.data_seconds / steps
        self._t, self._step, self.data_seconds = now, int(step), 0.0
        return per_step, steps, data
