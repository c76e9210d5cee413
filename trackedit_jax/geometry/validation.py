"""Checks of user-supplied tracks, cameras and videos, each failing with a `ValueError` naming the problem.

The commands call `validate_inputs` before doing any work, so a user learns what is wrong with their
files (non-finite coordinates, N = 0, mismatched frame counts, singular or non-rigid extrinsics) instead
of getting NaN videos. All checks run on the host with numpy (they need concrete values).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trackedit_jax.geometry.types import Camera, Tracks

RIGID_TOLERANCE = 1e-2  # max |R^T R - I|: looser than any real tracker's float32 noise


def _np(x) -> np.ndarray:
    return np.asarray(x)


def check_track_array(xyz, name: str = "tracks") -> np.ndarray:
    """(F, N, 3) finite world coordinates with F >= 1 and N >= 1; returns it as numpy."""
    xyz = _np(xyz)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name}: expected xyz of shape (F, N, 3); got {xyz.shape}")
    F, N = xyz.shape[:2]
    if F == 0:
        raise ValueError(f"{name}: F = 0 frames")
    if N == 0:
        raise ValueError(f"{name}: N = 0 points (shape {xyz.shape}); at least one track is needed")
    bad = ~np.isfinite(xyz).all(axis=-1)
    if bad.any():
        f, n = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(xyz[f, n]).any() else "inf"
        raise ValueError(
            f"{name}: {int(bad.sum())} coordinate(s) are NaN or inf (first: {kind} at frame {f}, point {n})"
        )
    return xyz


def check_intrinsics(K, name: str = "intrinsics") -> np.ndarray:
    """(F, 3, 3) finite pixel intrinsics with positive focal lengths; returns numpy."""
    K = _np(K)
    if K.ndim != 3 or K.shape[1:] != (3, 3):
        raise ValueError(f"{name}: expected shape (F, 3, 3); got {K.shape}")
    if not np.isfinite(K).all():
        f = int(np.argwhere(~np.isfinite(K))[0][0])
        raise ValueError(f"{name}: NaN or inf values (first at frame {f})")
    bad = np.flatnonzero((K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0))
    if bad.size:
        raise ValueError(
            f"{name}: focal lengths must be positive; frame {bad[0]} has fx={K[bad[0], 0, 0]:.4g}, "
            f"fy={K[bad[0], 1, 1]:.4g}"
        )
    return K


def check_extrinsics(E, name: str = "extrinsics", *, rigid_tolerance: float = RIGID_TOLERANCE) -> np.ndarray:
    """(F, 4, 4) finite, invertible, rigid world-to-camera matrices; returns numpy.

    Raises a ValueError naming the first offending frame when a matrix is singular (|det R| < 1e-6),
    has a last row other than [0, 0, 0, 1], or its rotation block is not orthonormal (every geometry
    function here inverts extrinsics as [R^T | -R^T t]).
    """
    E = _np(E)
    if E.ndim != 3 or E.shape[1:] != (4, 4):
        raise ValueError(f"{name}: expected shape (F, 4, 4); got {E.shape}")
    if not np.isfinite(E).all():
        f = int(np.argwhere(~np.isfinite(E))[0][0])
        raise ValueError(f"{name}: NaN or inf values (first at frame {f})")
    E64 = E.astype(np.float64)
    det = np.linalg.det(E64[:, :3, :3])
    bad = np.flatnonzero(np.abs(det) < 1e-6)
    if bad.size:
        raise ValueError(
            f"{name}: non-invertible extrinsics at frame(s) {bad[:8].tolist()} "
            f"(det of the rotation block = {det[bad[0]]:.3g})"
        )
    last = np.abs(E64[:, 3, :] - [0.0, 0.0, 0.0, 1.0]).max(axis=-1)
    bad = np.flatnonzero(last > 1e-6)
    if bad.size:
        raise ValueError(f"{name}: last row must be [0, 0, 0, 1]; frame {bad[0]} has {E64[bad[0], 3].tolist()}")
    R = E64[:, :3, :3]
    err = np.abs(np.einsum("fji,fjk->fik", R, R) - np.eye(3)).max(axis=(1, 2))
    bad = np.flatnonzero(err > rigid_tolerance)
    if bad.size:
        raise ValueError(
            f"{name}: not a rigid transform at frame(s) {bad[:8].tolist()} (rotation block not "
            f"orthonormal: max |R^T R - I| = {err[bad[0]]:.3g})"
        )
    if (det < 0).any():
        f = int(np.flatnonzero(det < 0)[0])
        raise ValueError(f"{name}: rotation block is a reflection (det < 0) at frame {f}")
    return E


def check_frame_counts(**counts: int | None) -> int:
    """All given frame counts (None entries skipped) must agree; returns the common F.

    Example: check_frame_counts(tracks=81, camera=81, video=80) raises
    "frame count mismatch: tracks F=81, camera F=81, video F=80".
    """
    given = {k: int(v) for k, v in counts.items() if v is not None}
    if len(set(given.values())) > 1:
        desc = ", ".join(f"{k} F={v}" for k, v in given.items())
        raise ValueError(f"frame count mismatch: {desc}")
    return next(iter(given.values())) if given else 0


def validate_inputs(
    tracks: Tracks | Any,
    camera: Camera,
    *,
    video=None,
    name: str = "tracks",
) -> None:
    """Check a user's track set, camera and (optional) video before any work is done.

    Args:
      tracks: `Tracks` or an (F, N, 3) xyz array.
      camera: `Camera`.
      video: optional (F', H, W, 3) array (only its frame count is checked).
      name: prefix for messages (e.g. the file name).
    Raises:
      ValueError naming the problem: NaN/inf coordinates, N = 0, F mismatch between tracks/camera/video,
      bad intrinsics, non-invertible or non-rigid extrinsics.
    """
    xyz = tracks.xyz if isinstance(tracks, Tracks) else tracks
    xyz = check_track_array(xyz, name)
    if isinstance(tracks, Tracks):
        vis = _np(tracks.visibility)
        if vis.shape != xyz.shape[:2]:
            raise ValueError(f"{name}: visibility must have shape (F, N) = {xyz.shape[:2]}; got {vis.shape}")
    check_intrinsics(camera.intrinsics, f"{name}: camera intrinsics")
    check_extrinsics(camera.extrinsics, f"{name}: camera extrinsics")
    check_frame_counts(
        tracks=xyz.shape[0],
        camera=camera.intrinsics.shape[0],
        video=None if video is None else _np(video).shape[0],
    )
