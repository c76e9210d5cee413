"""Metrics of a generated clip against its ground-truth target clip.

Videos are (F, H, W, 3) uint8 or float in [0, 1]; masks are (F, H, W) bool.

* `psnr`, `ssim`: dm-pix on [0, 1] frames (PSNR of the whole clip's mean squared error; SSIM averaged
  over frames).
* `masked_psnr`: PSNR over the pixels of a mask (e.g. surface visible in both clips).
* `edit_region`: where the ground-truth target differs from the source clip (any channel by more than
  0.05 in [0, 1]), dilated by 1 px: the pixels where an edit is right or wrong. `masked_psnr` over it
  is the edit-region PSNR.
* `track_epe`: re-track points through a video with OpenCV's pyramidal Lucas-Kanade from their frame-0
  positions and compare with where they should be, at the frames where they are visible.
"""

from __future__ import annotations

import numpy as np

MAX_PSNR = 100.0  # identical clips: a finite value so means stay finite


def as_unit(video) -> np.ndarray:
    """uint8 -> float32 in [0, 1]; float input is returned as float32."""
    video = np.asarray(video)
    if video.dtype == np.uint8:
        return video.astype(np.float32) / 255.0
    return video.astype(np.float32)


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_unit(a), as_unit(b)
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"videos must both be (F, H, W, 3); got {a.shape} and {b.shape}")
    return a, b


def _psnr_of_mse(mse: float) -> float:
    return MAX_PSNR if mse <= 10 ** (-MAX_PSNR / 10) else float(-10.0 * np.log10(mse))


def psnr(video, reference) -> float:
    """PSNR in dB of the whole clip (one mean squared error over every frame; dm-pix)."""
    import dm_pix as pix

    a, b = _check_pair(video, reference)
    mse = float(np.mean(np.asarray(pix.mse(a.reshape(1, -1, a.shape[2], 3), b.reshape(1, -1, b.shape[2], 3)))))
    return _psnr_of_mse(mse)


def ssim(video, reference) -> float:
    """Mean SSIM over frames (dm-pix: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03)."""
    import dm_pix as pix

    a, b = _check_pair(video, reference)
    return float(np.mean(np.asarray(pix.ssim(a, b))))


def masked_psnr(video, reference, mask) -> float:
    """PSNR in dB over the pixels where `mask` (F, H, W) is True (every channel); NaN for an empty mask."""
    a, b = _check_pair(video, reference)
    mask = np.asarray(mask, bool)
    if mask.shape != a.shape[:3]:
        raise ValueError(f"mask must be {a.shape[:3]}; got {mask.shape}")
    if not mask.any():
        return float("nan")
    return _psnr_of_mse(float(np.mean(np.square(a[mask] - b[mask]))))


def edit_region(source, target, *, threshold: float = 0.05, dilate: int = 1) -> np.ndarray:
    """(F, H, W) bool: pixels where `target` differs from `source` in any channel by more than
    `threshold` (in [0, 1]), dilated by `dilate` pixels (a (2 dilate + 1)^2 square)."""
    import cv2

    s, t = _check_pair(source, target)
    region = np.any(np.abs(t - s) > threshold, axis=-1)
    if dilate > 0:
        kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
        region = np.stack([cv2.dilate(r.astype(np.uint8), kernel) for r in region]).astype(bool)
    return region


def lucas_kanade(video, points0: np.ndarray, *, window: int = 9, levels: int = 2) -> np.ndarray:
    """Track `points0` (N, 2) pixel positions (x, y) of frame 0 through `video` frame to frame with
    OpenCV's pyramidal Lucas-Kanade. Returns (F, N, 2) float32; a point LK loses keeps its last position."""
    import cv2

    frames = np.asarray(video)
    if frames.dtype != np.uint8:
        frames = np.clip(np.round(as_unit(frames) * 255), 0, 255).astype(np.uint8)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    pts = np.asarray(points0, np.float32).reshape(-1, 1, 2)
    out = np.empty((len(gray), pts.shape[0], 2), np.float32)
    out[0] = pts[:, 0]
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    for f in range(1, len(gray)):
        if pts.shape[0]:
            nxt, status, _ = cv2.calcOpticalFlowPyrLK(
                gray[f - 1], gray[f], pts, None, winSize=(window, window), maxLevel=levels, criteria=criteria
            )
            ok = (status[:, 0] == 1) & np.all(np.isfinite(nxt[:, 0]), axis=-1)
            pts = np.where(ok[:, None, None], nxt, pts).astype(np.float32)
        out[f] = pts[:, 0]
    return out


def track_epe(video, uv: np.ndarray, visible: np.ndarray, **lk) -> float:
    """Mean end-point error in pixels of Lucas-Kanade tracks through `video` against the expected
    positions `uv` (F, N, 2), over the points visible at frame 0 and the frames f >= 1 where they are
    `visible` (F, N). NaN when no point qualifies."""
    uv, visible = np.asarray(uv, np.float32), np.asarray(visible, bool)
    start = visible[0]
    if not start.any():
        return float("nan")
    tracked = lucas_kanade(video, uv[0, start], **lk)
    want, vis = uv[1:, start], visible[1:, start]
    if not vis.any():
        return float("nan")
    return float(np.mean(np.linalg.norm(tracked[1:] - want, axis=-1)[vis]))
