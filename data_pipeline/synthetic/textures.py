"""Procedural textures defined in object space, so a surface point has one albedo in every frame and clip.

albedo(p) = c1 + (c2 - c1) * sigmoid(sharpness * pattern(p)) then * (1 + detail * sin(w_d . p + phi_d))
  pattern(p) = sum_k a_k sin(w_k . p + phi_k)                         (mode "waves": blobs/stripes)
             = prod_{axis in axes} sin(freq * p_axis + phi_axis)      (mode "checker": soft checkerboard)
Textures are smooth (band-limited, sigmoid edges), so `lipschitz()` bounds how fast albedo can change
with the object-space position; tests use it to bound sub-pixel sampling differences.
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

COLOUR_NAMES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "blue", "purple", "magenta", "pink")


@dataclasses.dataclass(frozen=True)
class Texture:
    c1: np.ndarray  # (3,) float in [0, 1]
    c2: np.ndarray  # (3,)
    mode: str  # "waves" | "checker"
    freqs: np.ndarray  # waves: (K, 3) spatial frequencies; checker: (3,) (0 = axis unused)
    phases: np.ndarray  # (K,) or (3,)
    amps: np.ndarray  # (K,) (waves) or (1,) (checker)
    sharpness: float
    detail_freq: np.ndarray  # (3,)
    detail_phase: float
    detail_amp: float

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """Albedo of object-space points p (..., 3) -> (..., 3) float in [0, 1], same dtype as p."""
        p = np.asarray(p)
        dt = p.dtype if p.dtype in (np.float32, np.float64) else np.float64
        if self.mode == "waves":
            arg = p @ self.freqs.T.astype(dt) + self.phases.astype(dt)  # (..., K)
            pat = np.sin(arg) @ self.amps.astype(dt)
        else:
            pat = np.ones(p.shape[:-1], dt)
            for ax in range(3):
                if self.freqs[ax] != 0:
                    pat = pat * np.sin(dt.type(self.freqs[ax]) * p[..., ax] + dt.type(self.phases[ax]))
            pat = pat * dt.type(self.amps[0])
        mix = 1.0 / (1.0 + np.exp(-dt.type(self.sharpness) * pat))
        c1, c2 = self.c1.astype(dt), self.c2.astype(dt)
        col = c1 + (c2 - c1) * mix[..., None]
        mod = 1.0 + dt.type(self.detail_amp) * np.sin(p @ self.detail_freq.astype(dt) + dt.type(self.detail_phase))
        return np.clip(col * mod[..., None], 0.0, 1.0)

    def lipschitz(self) -> float:
        """Upper bound of |d albedo / d p| (per colour channel, Euclidean in p)."""
        if self.mode == "waves":
            g_pat = float(np.sum(np.abs(self.amps) * np.linalg.norm(self.freqs, axis=-1)))
        else:
            g_pat = float(abs(self.amps[0]) * np.linalg.norm(self.freqs))
        g_mix = self.sharpness / 4.0 * g_pat
        span = float(np.max(np.abs(self.c2 - self.c1)))
        cmax = float(max(self.c1.max(), self.c2.max()))
        return (span * g_mix) * (1 + self.detail_amp) + cmax * self.detail_amp * float(np.linalg.norm(self.detail_freq))

    def colour_name(self) -> str:
        """A rough English name of the dominant hue (for prompts)."""
        c = self.c1
        h, l, s = colorsys.rgb_to_hls(*[float(v) for v in c])
        if s < 0.18:
            return "white" if l > 0.7 else "grey" if l > 0.3 else "black"
        return COLOUR_NAMES[int(round(h * len(COLOUR_NAMES))) % len(COLOUR_NAMES)]


def _random_colour(rng: np.random.Generator, sat=(0.45, 0.95), val=(0.45, 0.95)) -> np.ndarray:
    h = rng.uniform()
    return np.asarray(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)))


def random_texture(rng: np.random.Generator, feature_size: float, *, muted: bool = False) -> Texture:
    """A random texture whose features are about `feature_size` world units across."""
    base = 2 * np.pi / max(feature_size, 1e-6)
    sat = (0.1, 0.45) if muted else (0.45, 0.95)
    c1 = _random_colour(rng, sat=sat)
    # the second colour: a contrasting hue or brightness so features are trackable
    c2 = (
        _random_colour(rng, sat=sat, val=(0.2, 0.6))
        if rng.uniform() < 0.5
        else np.clip(1.0 - c1 * rng.uniform(0.3, 0.9), 0, 1)
    )
    if rng.uniform() < 0.6:
        K = int(rng.integers(2, 5))
        dirs = rng.normal(size=(K, 3))
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        freqs = dirs * base * rng.uniform(0.6, 1.6, size=(K, 1))
        mode, phases, amps = "waves", rng.uniform(0, 2 * np.pi, K), rng.uniform(0.4, 1.0, K)
    else:
        freqs = base * rng.uniform(0.7, 1.3) * (rng.uniform(size=3) < 0.8)
        if not freqs.any():
            freqs[int(rng.integers(3))] = base
        mode, phases, amps = "checker", rng.uniform(0, 2 * np.pi, 3), np.array([1.0])
    ddir = rng.normal(size=3)
    ddir /= np.linalg.norm(ddir)
    return Texture(
        c1=c1,
        c2=c2,
        mode=mode,
        freqs=freqs,
        phases=phases,
        amps=amps,
        sharpness=float(rng.uniform(2.0, 6.0)),
        detail_freq=ddir * base * rng.uniform(2.0, 4.0),
        detail_phase=float(rng.uniform(0, 2 * np.pi)),
        detail_amp=float(rng.uniform(0.05, 0.15)),
    )
