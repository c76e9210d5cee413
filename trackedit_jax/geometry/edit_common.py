"""Helpers shared by the edit modules: axes and rotations, camera-to-world poses, float64 track copies,
selection/frame checks, centroids and pivots. See `geometry.edits` for the conventions.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from trackedit_jax.geometry.projection import invert_extrinsics
from trackedit_jax.geometry.types import Camera, Tracks


def unit_vector(v, name: str = "axis") -> np.ndarray:
    """(3,) float64 unit vector along `v`; ValueError naming `name` if it is not a non-zero finite 3-vector."""
    v = np.asarray(v, np.float64).reshape(-1)
    if v.shape != (3,):
        raise ValueError(f"{name} must be a 3-vector; got shape {v.shape}")
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"{name} must be a non-zero finite 3-vector; got {v.tolist()}")
    return v / n


def rotation_matrices(axis, degrees) -> np.ndarray:
    """Rotations about a unit `axis` by `degrees` (scalar -> (3, 3); (F,) -> (F, 3, 3)), right-handed."""
    a = unit_vector(axis)
    deg = np.asarray(degrees, np.float64)
    rv = np.radians(deg)[..., None] * a
    return Rotation.from_rotvec(rv.reshape(-1, 3)).as_matrix().reshape(*deg.shape, 3, 3)


def camera_c2w(camera: Camera) -> np.ndarray:
    """(F, 4, 4) float64 camera-to-world poses of `camera`."""
    return invert_extrinsics(np.asarray(camera.extrinsics, np.float64))


def with_c2w(camera: Camera, c2w: np.ndarray, intrinsics=None) -> Camera:
    """`camera` with new (F, 4, 4) camera-to-world poses (and optionally (F, 3, 3) intrinsics), input dtypes kept."""
    dtype = np.asarray(camera.extrinsics).dtype
    E = invert_extrinsics(c2w).astype(dtype)
    K = np.asarray(camera.intrinsics if intrinsics is None else intrinsics).astype(np.asarray(camera.intrinsics).dtype)
    return Camera(K, E, camera.image_size)


def tracks_float64(tracks: Tracks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh copies: xyz (F, N, 3) float64, visibility (F, N) bool, ids (N,) int32 (arange when unset)."""
    xyz = np.array(tracks.xyz, np.float64, copy=True)  # edits write into it: never alias the input
    vis = np.array(tracks.visibility, bool, copy=True)
    ids = np.arange(xyz.shape[1], dtype=np.int32) if tracks.ids is None else np.asarray(tracks.ids, np.int32)
    return xyz, vis, ids


def output_tracks(tracks: Tracks, xyz: np.ndarray, vis=None, ids=None) -> Tracks:
    """Edited (F, N, 3) `xyz` cast back to the dtype of `tracks`; visibility and ids kept unless given."""
    dtype = np.asarray(tracks.xyz).dtype
    return Tracks(
        xyz.astype(dtype),
        np.asarray(tracks.visibility, bool) if vis is None else vis,
        tracks.ids if ids is None else ids,
    )


def check_selection(selection, num_points: int) -> np.ndarray:
    """`selection` as an (N,) bool array; ValueError on another dtype or shape."""
    sel = np.asarray(selection)
    if sel.dtype != bool:
        raise ValueError(f"selection must be an (N,) bool mask; got dtype {sel.dtype}")
    if sel.shape != (num_points,):
        raise ValueError(f"selection must have shape (N,) = ({num_points},); got {sel.shape}")
    return sel


def check_frame(frame: int, F: int, name: str = "frame") -> int:
    """`frame` as an int in [0, F-1]; ValueError naming `name` otherwise."""
    frame = int(frame)
    if not 0 <= frame < F:
        raise ValueError(f"{name} must be in [0, {F - 1}]; got {frame}")
    return frame


def scene_centroid(tracks: Tracks) -> np.ndarray:
    """(3,) robust scene centre: the per-coordinate median of all points over all frames."""
    return np.median(np.asarray(tracks.xyz, np.float64).reshape(-1, 3), axis=0)


def selection_centroid(tracks: Tracks, selection) -> np.ndarray:
    """(F, 3) per-frame mean of the selected points."""
    xyz, _, _ = tracks_float64(tracks)
    sel = check_selection(selection, xyz.shape[1])
    if not sel.any():
        raise ValueError("selection is empty; a centroid needs at least one point")
    return xyz[:, sel].mean(axis=1)


def pivot_path(pivot, tracks: Tracks | None, selection, F: int) -> np.ndarray:
    """Pivot spec -> (F, 3): 'centroid' (of the selection, per frame; of the scene without one),
    'scene' (scene centroid), a (3,) point or an (F, 3) path."""
    if isinstance(pivot, str):
        if pivot == "centroid" and selection is not None:
            return selection_centroid(tracks, selection)
        if pivot in ("centroid", "scene"):
            if tracks is None:
                raise ValueError("pivot 'centroid' needs the tracks")
            return np.broadcast_to(scene_centroid(tracks), (F, 3)).copy()
        raise ValueError(f"pivot must be 'centroid', 'scene', [x, y, z] or (F, 3); got {pivot!r}")
    p = np.asarray(pivot, np.float64)
    if p.shape == (3,):
        return np.broadcast_to(p, (F, 3)).copy()
    if p.shape == (F, 3):
        return p
    raise ValueError(f"pivot must be (3,) or (F, 3) = ({F}, 3); got shape {p.shape}")
