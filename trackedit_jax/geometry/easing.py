"""Easing: the one place that turns a linear progress u in [0, 1] into an eased one.

Every edit that ramps an amount in over the clip (`ramp_weights`) and every keyframed path
(`eased_times`) goes through `ease_curve`, so an ease name means the same curve everywhere.
"""

from __future__ import annotations

import numpy as np

EASES = ("linear", "ease_in", "ease_out", "ease_in_out", "constant")


def check_ease(ease: str) -> str:
    """`ease` if it is one of `EASES`; otherwise a ValueError naming the choices."""
    if ease not in EASES:
        raise ValueError(f"ease must be one of {EASES}; got {ease!r}")
    return ease


def ease_curve(u: np.ndarray, ease: str) -> np.ndarray:
    """Eased progress, same shape as `u` (float64 in [0, 1]).

    ease: linear (u) | ease_in (u^2) | ease_out (1-(1-u)^2) | ease_in_out (smoothstep 3u^2-2u^3) |
    constant (0 until the end of the segment, then 1: hold, then jump). Callers validate the name
    with `check_ease` (`follow_path` has always read an unknown name as linear, and still does).
    """
    if ease == "ease_in":
        return u * u
    if ease == "ease_out":
        return 1.0 - (1.0 - u) ** 2
    if ease == "ease_in_out":
        return u * u * (3.0 - 2.0 * u)
    if ease == "constant":
        return np.where(u >= 1.0, 1.0, 0.0)
    return u


def ramp_weights(num_frames: int, ease: str = "linear", start: int = 0, end: int | None = None) -> np.ndarray:
    """(F,) float64 weights in [0, 1]: 0 before `start`, eased to 1 at `end` (default F-1), 1 after.

    ease: one of `EASES` (see `ease_curve`); "constant" is a step to 1 at `start` (a ramp of zero
    length, so the amount is fully there from `start` on).
    """
    F = int(num_frames)
    end = F - 1 if end is None else int(end)
    start = int(start)
    check_ease(ease)
    if not 0 <= start <= end <= max(F - 1, 0):
        raise ValueError(f"ramp frames must satisfy 0 <= start <= end <= F-1 = {F - 1}; got start={start}, end={end}")
    t = np.arange(F, dtype=np.float64)
    if ease == "constant" or end == start:
        return (t >= start).astype(np.float64)
    return ease_curve(np.clip((t - start) / (end - start), 0.0, 1.0), ease)


def eased_times(key_frames: np.ndarray, num_frames: int, ease: str) -> np.ndarray:
    """(F,) frame times remapped so each segment between sorted `key_frames` (K,) is traversed with
    `ease` (values in key time; held before the first and after the last key)."""
    t = np.clip(np.arange(num_frames, dtype=np.float64), key_frames[0], key_frames[-1])
    if len(key_frames) == 1:
        return t
    seg = np.clip(np.searchsorted(key_frames, t, side="right") - 1, 0, len(key_frames) - 2)
    a, b = key_frames[seg], key_frames[seg + 1]
    return a + ease_curve((t - a) / (b - a), ease) * (b - a)
