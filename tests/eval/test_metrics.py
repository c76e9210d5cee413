"""Evaluation metrics against independent references."""

import numpy as np
import pytest
from textures import smooth_texture

from trackedit_jax.eval import metrics as M


def test_psnr_matches_the_formula_and_masked_psnr_uses_only_the_mask():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    mse = np.mean((a / 255.0 - b / 255.0) ** 2)
    assert M.psnr(a, b) == pytest.approx(10 * np.log10(1.0 / mse), abs=1e-3)
    mask = np.zeros(a.shape[:3], bool)
    mask[:, :8] = True
    c = b.copy()
    c[~mask] = 0  # outside the mask anything goes
    mse_m = np.mean((a[mask] / 255.0 - b[mask] / 255.0) ** 2)
    assert M.masked_psnr(a, c, mask) == pytest.approx(10 * np.log10(1.0 / mse_m), abs=1e-3)
    assert np.isnan(M.masked_psnr(a, b, np.zeros_like(mask)))
    assert M.psnr(a, a) == M.MAX_PSNR


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(2)
    a = (smooth_texture(32, 40, seed=3) * 255).astype(np.uint8)[None].repeat(2, 0)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    ref = np.mean(
        [
            skm.structural_similarity(
                x / 255.0,
                y / 255.0,
                channel_axis=-1,
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for x, y in zip(a, b)
        ]
    )
    assert M.ssim(a, b) == pytest.approx(ref, abs=2e-3)


def test_edit_region_threshold_and_dilation():
    src = np.zeros((1, 9, 9, 3), np.float32)
    tgt = src.copy()
    tgt[0, 4, 4, 1] = 0.06  # above the 0.05 threshold in one channel
    tgt[0, 0, 0, 0] = 0.04  # below
    region = M.edit_region(src, tgt)
    want = np.zeros((1, 9, 9), bool)
    want[0, 3:6, 3:6] = True
    np.testing.assert_array_equal(region, want)


def test_lucas_kanade_epe_on_a_known_translation():
    H, W, F = 48, 56, 6
    big = smooth_texture(H + 20, W + 20, seed=4)
    shifts = np.array([[0.7 * f, -0.4 * f] for f in range(F)])  # (dx, dy) per frame, sub-pixel
    import cv2

    frames = []
    for dx, dy in shifts:
        M_ = np.float32([[1, 0, dx], [0, 1, dy]])
        moved = cv2.warpAffine(big.astype(np.float32), M_, (W + 20, H + 20), flags=cv2.INTER_CUBIC)
        frames.append(moved[10 : 10 + H, 10 : 10 + W])
    video = (np.clip(np.stack(frames), 0, 1) * 255).round().astype(np.uint8)
    ys, xs = np.mgrid[12 : H - 12 : 6, 12 : W - 12 : 6]
    p0 = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)
    uv = p0[None] + shifts[:, None, :].astype(np.float32)
    vis = np.ones(uv.shape[:2], bool)
    assert M.track_epe(video, uv, vis) < 0.15
    wrong = uv + np.array([2.0, 0.0], np.float32)  # tracks that say the content went 2 px further
    wrong[0] = uv[0]
    assert M.track_epe(video, wrong, vis) == pytest.approx(2.0, abs=0.2)
