"""Test images with a known structure."""

import numpy as np


def smooth_texture(H: int, W: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1]: a smooth random texture (sums of sinusoids), trackable by Lucas-Kanade,
    with no aliasing."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W, 3))
    for _ in range(12):
        fx, fy = rng.uniform(0.02, 0.08, 2) * rng.choice([-1, 1], 2)
        img += rng.uniform(0.2, 1.0, 3) * np.sin(2 * np.pi * (fx * xs + fy * ys) + rng.uniform(0, 6.3))[..., None]
    return (img - img.min()) / (img.max() - img.min())
