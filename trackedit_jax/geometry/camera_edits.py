"""Camera moves relative to the current path: pan/tilt/roll, dolly/truck/pedestal, zoom and arc (orbit).

Each amount is ramped in with `ramp_weights` and applied in the camera's own frame (arc: about a world
axis). Whole-path edits (stabilize, static, replace, keyframes) are in `geometry.camera_paths`.
"""

from __future__ import annotations

import numpy as np

from trackedit_jax.geometry.easing import ramp_weights
from trackedit_jax.geometry.edit_common import camera_c2w, pivot_path, rotation_matrices, with_c2w
from trackedit_jax.geometry.types import Camera


def apply_camera_offset(camera: Camera, rotation: np.ndarray, translation: np.ndarray) -> Camera:
    """Compose every frame's camera with a local offset: c2w' = c2w @ [rotation | translation].

    rotation (F, 3, 3) and translation (F, 3) are in the camera's own frame (translation is applied
    along the original axes: centre' = centre + R_c2w @ translation).
    """
    F = camera.num_frames
    M = np.tile(np.eye(4), (F, 1, 1))
    M[:, :3, :3] = np.broadcast_to(rotation, (F, 3, 3))
    M[:, :3, 3] = np.broadcast_to(translation, (F, 3))
    return with_c2w(camera, camera_c2w(camera) @ M)


_LOCAL_AXES = {"pan": (0, 1, 0), "tilt": (1, 0, 0), "roll": (0, 0, 1)}
_LOCAL_MOVES = {"dolly": (0, 0, 1), "truck": (1, 0, 0), "pedestal": (0, -1, 0)}


def rotate_camera(camera: Camera, kind: str, degrees: float, *, ease="linear", start=0, end=None) -> Camera:
    """Pan (turn right +), tilt (look up +) or roll (clockwise +) the camera about its own centre."""
    if kind not in _LOCAL_AXES:
        raise ValueError(f"kind must be one of {sorted(_LOCAL_AXES)}; got {kind!r}")
    w = ramp_weights(camera.num_frames, ease, start, end)
    R = rotation_matrices(_LOCAL_AXES[kind], float(degrees) * w)
    return apply_camera_offset(camera, R, np.zeros(3))


def pan(camera: Camera, degrees: float, **ramp) -> Camera:
    return rotate_camera(camera, "pan", degrees, **ramp)


def tilt(camera: Camera, degrees: float, **ramp) -> Camera:
    return rotate_camera(camera, "tilt", degrees, **ramp)


def roll(camera: Camera, degrees: float, **ramp) -> Camera:
    return rotate_camera(camera, "roll", degrees, **ramp)


def move_camera(camera: Camera, kind: str, distance: float, *, ease="linear", start=0, end=None) -> Camera:
    """Dolly (forward +), truck (right +) or pedestal (up +) by `distance` world units, ramped."""
    if kind not in _LOCAL_MOVES:
        raise ValueError(f"kind must be one of {sorted(_LOCAL_MOVES)}; got {kind!r}")
    w = ramp_weights(camera.num_frames, ease, start, end)
    t = float(distance) * w[:, None] * np.asarray(_LOCAL_MOVES[kind], np.float64)
    return apply_camera_offset(camera, np.eye(3), t)


def dolly(camera: Camera, distance: float, **ramp) -> Camera:
    return move_camera(camera, "dolly", distance, **ramp)


def truck(camera: Camera, distance: float, **ramp) -> Camera:
    return move_camera(camera, "truck", distance, **ramp)


def pedestal(camera: Camera, distance: float, **ramp) -> Camera:
    return move_camera(camera, "pedestal", distance, **ramp)


def zoom(camera: Camera, factor: float, *, ease="linear", start=0, end=None) -> Camera:
    """Multiply the focal lengths by `factor` (ramped geometrically); principal point kept."""
    factor = float(factor)
    if not factor > 0:
        raise ValueError(f"zoom factor must be > 0; got {factor}")
    w = ramp_weights(camera.num_frames, ease, start, end)
    K = np.asarray(camera.intrinsics, np.float64).copy()
    s = factor**w
    K[:, 0, 0] *= s
    K[:, 0, 1] *= s
    K[:, 1, 1] *= s
    return Camera(K.astype(np.asarray(camera.intrinsics).dtype), camera.extrinsics, camera.image_size)


def arc(
    camera: Camera,
    degrees: float,
    *,
    axis=(0.0, -1.0, 0.0),
    pivot=None,
    ease="linear",
    start=0,
    end=None,
) -> Camera:
    """Orbit the camera about a world `axis` through `pivot` ((3,) or per-frame (F, 3)).

    Each frame's camera is rotated rigidly about the pivot (centre and orientation), so its distance
    to the pivot is unchanged and a point at the pivot stays at the same pixel. Positive degrees are a
    right-handed rotation about `axis`; with the default axis, world "up" [0, -1, 0] in OpenCV axes, an
    upright camera moves to its right around the pivot (counter-clockwise seen from above).
    """
    F = camera.num_frames
    if pivot is None:
        raise ValueError("arc needs a pivot: a (3,) world point or an (F, 3) path (e.g. scene_centroid(tracks))")
    p = pivot_path(pivot, None, None, F)
    w = ramp_weights(F, ease, start, end)
    R = rotation_matrices(axis, float(degrees) * w)
    T = np.tile(np.eye(4), (F, 1, 1))
    T[:, :3, :3] = R
    T[:, :3, 3] = p - np.einsum("fij,fj->fi", R, p)  # rotate about p: x -> R (x - p) + p
    return with_c2w(camera, T @ camera_c2w(camera))


def local_offset(pan=0.0, tilt=0.0, roll=0.0, dolly=0.0, truck=0.0, pedestal=0.0) -> np.ndarray:
    """(4, 4) camera-frame offset: move (dolly/truck/pedestal) then turn (pan, tilt, roll in that order)."""
    R = rotation_matrices(_LOCAL_AXES["pan"], pan) @ rotation_matrices(_LOCAL_AXES["tilt"], tilt)
    R = R @ rotation_matrices(_LOCAL_AXES["roll"], roll)
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = (
        dolly * np.asarray(_LOCAL_MOVES["dolly"])
        + truck * np.asarray(_LOCAL_MOVES["truck"])
        + pedestal * np.asarray(_LOCAL_MOVES["pedestal"])
    )
    return M
