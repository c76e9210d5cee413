"""Selections ((N,) bool masks over the points, evaluated on one frame) and rigid grouping.

select_box / select_mask / select_depth project the tracks with the camera at `frame`; select_ids picks
point indices. rigid_groups labels rigidly moving parts by sequential RANSAC over Kabsch fits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trackedit_jax.geometry.edit_common import check_frame
from trackedit_jax.geometry.projection import project
from trackedit_jax.geometry.types import Camera, Tracks


def _project_frame(tracks: Tracks, camera: Camera, frame: int):
    xyz = np.asarray(tracks.xyz, np.float64)
    F = xyz.shape[0]
    if camera.num_frames != F:
        raise ValueError(f"tracks have F={F} frames but the camera has F={camera.num_frames}")
    frame = check_frame(frame, F)
    cam = Camera(
        np.asarray(camera.intrinsics, np.float64)[frame : frame + 1],
        np.asarray(camera.extrinsics, np.float64)[frame : frame + 1],
        camera.image_size,
    )
    uv, depth = project(xyz[frame : frame + 1], cam)
    return uv[0], depth[0], frame


def select_box(
    tracks: Tracks, camera: Camera, box, frame: int = 0, *, visible_only: bool = False, near: float = 1e-3
) -> np.ndarray:
    """(N,) bool: points in front of the camera whose projection at `frame` lies in the pixel box
    [x0, x1] x [y0, y1] (inclusive); `visible_only` also requires visibility at that frame."""
    b = np.asarray(box, np.float64).reshape(-1)
    if b.shape != (4,) or not (b[0] <= b[2] and b[1] <= b[3]):
        raise ValueError(
            f"box must be [x0, y0, x1, y1] with x0 <= x1, y0 <= y1 (pixels); got {np.asarray(box).tolist()}"
        )
    uv, depth, frame = _project_frame(tracks, camera, frame)
    sel = (depth > near) & (uv[:, 0] >= b[0]) & (uv[:, 0] <= b[2]) & (uv[:, 1] >= b[1]) & (uv[:, 1] <= b[3])
    if visible_only:
        sel &= np.asarray(tracks.visibility, bool)[frame]
    return sel


def select_mask(
    tracks: Tracks, camera: Camera, mask, frame: int = 0, *, visible_only: bool = False, near: float = 1e-3
) -> np.ndarray:
    """(N,) bool: points in front whose projection at `frame` falls on a True pixel of `mask`.

    mask: (h, w) bool/0-1 array. If (h, w) differs from the camera's image size, the projection is
    scaled to the mask grid (pixel centres kept aligned). Pixel (i, j) covers [j-0.5, j+0.5) x [i-0.5, i+0.5).
    """
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0] if m.shape[-1] in (1, 3, 4) else m
    if m.ndim != 2:
        raise ValueError(f"mask must be a 2-D image (H, W); got shape {np.asarray(mask).shape}")
    m = m > (0.5 if m.dtype != bool else 0)
    uv, depth, frame = _project_frame(tracks, camera, frame)
    H, W = camera.image_size
    h, w = m.shape
    x = (uv[:, 0] + 0.5) * (w / W) - 0.5
    y = (uv[:, 1] + 0.5) * (h / H) - 0.5
    col = np.floor(x + 0.5)
    row = np.floor(y + 0.5)
    inside = (depth > near) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    sel = np.zeros(uv.shape[0], bool)
    sel[inside] = m[row[inside].astype(int), col[inside].astype(int)]
    if visible_only:
        sel &= np.asarray(tracks.visibility, bool)[frame]
    return sel


def select_depth(tracks: Tracks, camera: Camera, near: float, far: float, frame: int = 0) -> np.ndarray:
    """(N,) bool: points whose camera depth at `frame` lies in [near, far]."""
    if not near <= far:
        raise ValueError(f"depth range must have near <= far; got [{near}, {far}]")
    _, depth, _ = _project_frame(tracks, camera, frame)
    return (depth >= near) & (depth <= far)


def select_ids(num_points: int, ids: Sequence[int]) -> np.ndarray:
    """(N,) bool with True at the given point indices (0-based, into the source point order)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    bad = ids[(ids < 0) | (ids >= num_points)]
    if bad.size:
        raise ValueError(f"ids must be in [0, {num_points - 1}]; got {bad[:8].tolist()}")
    sel = np.zeros(num_points, bool)
    sel[ids] = True
    return sel


def kabsch(P: np.ndarray, Q: np.ndarray, w: np.ndarray | None = None):
    """Least-squares rigid transforms mapping P -> Q over the last-but-one axis.

    P, Q: (..., M, 3). Returns R (..., 3, 3), t (..., 3) with Q ~ P @ R^T + t.
    """
    if w is None:
        w = np.ones(P.shape[:-1])
    w = w / np.maximum(w.sum(axis=-1, keepdims=True), 1e-12)
    cp = np.einsum("...m,...mi->...i", w, P)
    cq = np.einsum("...m,...mi->...i", w, Q)
    Pc, Qc = P - cp[..., None, :], Q - cq[..., None, :]
    Hm = np.einsum("...m,...mi,...mj->...ij", w, Pc, Qc)
    U, _, Vt = np.linalg.svd(Hm)
    d = np.sign(np.linalg.det(np.einsum("...ji,...kj->...ik", Vt, U)))
    D = np.zeros(Hm.shape)
    D[..., 0, 0] = 1.0
    D[..., 1, 1] = 1.0
    D[..., 2, 2] = np.where(d == 0, 1.0, d)
    R = np.einsum("...ji,...jk,...lk->...il", Vt, D, U)  # V D U^T
    t = cq - np.einsum("...ij,...j->...i", R, cp)
    return R, t


def _rigid_residuals(X: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """RMS over frames of |R_t X_0 + t_t - X_t| for points X (F, M, 3), transforms R (..., F, 3, 3)."""
    pred = np.einsum("...fij,mj->...fmi", R, X[0]) + t[..., :, None, :]
    return np.sqrt(((pred - X) ** 2).sum(-1).mean(-2))


def rigid_groups(
    tracks: Tracks,
    *,
    threshold: float | None = None,
    min_size: int | None = None,
    num_hypotheses: int = 128,
    neighbours: int = 12,
    max_groups: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """Group tracks into rigidly moving parts by sequential RANSAC on rigid motions.

    A hypothesis is the per-frame rigid motion (Kabsch, frame 0 -> frame t) of 3 points sampled
    locally (a seed point and 2 of its nearest neighbours at frame 0). Points whose RMS residual over
    the clip is below `threshold` are its inliers; the best hypothesis is refitted on its inliers twice,
    its inliers become a group and are removed; repeat until fewer than `min_size` points are left.

    Args:
      threshold: inlier RMS distance (world units); default 2% of the scene's median spread.
      min_size: smallest group; default max(3, N // 100).
    Returns:
      (N,) int32 labels: 0 for the largest group, 1 for the next, ...; -1 for points in no group.
    """
    X = np.asarray(tracks.xyz, np.float64)
    F, N, _ = X.shape
    if threshold is None:
        spread = np.median(np.linalg.norm(X[0] - np.median(X[0], axis=0), axis=-1))
        threshold = 0.02 * max(spread, 1e-9)
    min_size = max(3, N // 100) if min_size is None else int(min_size)
    rng = np.random.default_rng(seed)
    labels = -np.ones(N, np.int32)
    remaining = np.arange(N)
    groups = []
    while len(remaining) >= max(min_size, 3) and len(groups) < max_groups:
        Xr = X[:, remaining]
        M = len(remaining)
        k = min(neighbours, M - 1)
        seeds = rng.integers(0, M, size=num_hypotheses)
        d0 = np.linalg.norm(Xr[0][seeds][:, None] - Xr[0][None], axis=-1)  # (H, M)
        nn = np.argsort(d0, axis=1)[:, 1 : k + 1]
        pick = np.stack([rng.choice(k, size=2, replace=False) for _ in range(num_hypotheses)])
        trip = np.concatenate([seeds[:, None], np.take_along_axis(nn, pick, axis=1)], axis=1)  # (H, 3)
        best_count, best = -1, None
        for h0 in range(0, num_hypotheses, 16):
            tr = trip[h0 : h0 + 16]
            P = np.broadcast_to(Xr[0][tr][:, None], (len(tr), F, 3, 3))
            Q = np.transpose(Xr[:, tr], (1, 0, 2, 3))  # (h, F, 3, 3)
            R, t = kabsch(P, Q)
            res = _rigid_residuals(Xr, R, t)  # (h, M)
            inl = res < threshold
            counts = inl.sum(axis=1)
            score = counts - res.clip(max=threshold).mean(axis=1) / threshold  # ties: tighter fit
            j = int(np.argmax(score))
            if counts[j] > best_count:
                best_count, best = counts[j], inl[j]
        for _ in range(2):  # refit on the inliers
            if best.sum() < 3:
                break
            R, t = kabsch(np.broadcast_to(Xr[0][best], (F,) + Xr[0][best].shape), Xr[:, best])
            best = _rigid_residuals(Xr, R, t) < threshold
        if best.sum() < min_size:
            break
        groups.append(remaining[best])
        remaining = remaining[~best]
    for g, members in enumerate(sorted(groups, key=len, reverse=True)):
        labels[members] = g
    return labels


def group_at_pixel(tracks: Tracks, camera: Camera, labels: np.ndarray, xy, frame: int = 0) -> int:
    """Label of the grouped point (label >= 0, in front) projecting nearest to pixel `xy` at `frame`."""
    uv, depth, _ = _project_frame(tracks, camera, frame)
    ok = (depth > 1e-3) & (np.asarray(labels) >= 0)
    if not ok.any():
        raise ValueError("no grouped point is in front of the camera at that frame")
    d = np.linalg.norm(uv - np.asarray(xy, np.float64), axis=-1)
    d[~ok] = np.inf
    return int(labels[int(np.argmin(d))])
