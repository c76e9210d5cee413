"""Motion edits: pure functions that turn source `Tracks`/`Camera` into target ones (numpy, host side).

Everything here is an edit of the world-space tracks or of the camera path; the model later sees the
result through `prepare_track_condition` (reprojection). Conventions:

* OpenCV camera axes (x right, y down, z forward); extrinsics are world-to-camera (F, 4, 4).
* Camera moves are expressed in the camera's own frame: pan turns right (+), tilt looks up (+), roll
  turns the camera clockwise as seen from behind it (+); dolly moves forward (+), truck right (+),
  pedestal up (+).
* Ramps: every amount (degrees, distance, offset, factor) is applied with a per-frame weight
  w(t) in [0, 1] from `ramp_weights(F, ease, start, end)`: 0 up to `start`, eased to 1 at `end`,
  1 afterwards; ease "constant" is a step to 1 at `start`. Scaling factors ramp geometrically
  (factor ** w).
* A selection is an (N,) bool mask over the points. Functions that change N (`drop_points`,
  `duplicate`) keep the order of the remaining points and carry `Tracks.ids` (source point index of
  each point) so the target can be paired with the source: source.xyz[:, target.ids] <-> target.xyz.
* Computation is float64; results are cast back to the input dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from trackedit_jax.geometry.projection import (
    camera_centers,
    camera_to_world,
    in_image,
    invert_extrinsics,
    project,
    world_to_camera,
)
from trackedit_jax.geometry.types import Camera, Tracks

EASES = ("linear", "ease_in", "ease_out", "ease_in_out", "constant")


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def ramp_weights(num_frames: int, ease: str = "linear", start: int = 0, end: Optional[int] = None) -> np.ndarray:
    """(F,) float64 weights in [0, 1]: 0 before `start`, eased to 1 at `end` (default F-1), 1 after.

    ease: linear | ease_in (u^2) | ease_out (1-(1-u)^2) | ease_in_out (smoothstep 3u^2-2u^3) |
    constant (a step to 1 at `start`).
    """
    F = int(num_frames)
    end = F - 1 if end is None else int(end)
    start = int(start)
    if ease not in EASES:
        raise ValueError(f"ease must be one of {EASES}; got {ease!r}")
    if not 0 <= start <= end <= max(F - 1, 0):
        raise ValueError(f"ramp frames must satisfy 0 <= start <= end <= F-1 = {F - 1}; got start={start}, end={end}")
    t = np.arange(F, dtype=np.float64)
    if ease == "constant" or end == start:
        return (t >= start).astype(np.float64)
    u = np.clip((t - start) / (end - start), 0.0, 1.0)
    if ease == "ease_in":
        u = u * u
    elif ease == "ease_out":
        u = 1.0 - (1.0 - u) ** 2
    elif ease == "ease_in_out":
        u = u * u * (3.0 - 2.0 * u)
    return u


def _unit(v, name: str = "axis") -> np.ndarray:
    v = np.asarray(v, np.float64).reshape(-1)
    if v.shape != (3,):
        raise ValueError(f"{name} must be a 3-vector; got shape {v.shape}")
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"{name} must be a non-zero finite 3-vector; got {v.tolist()}")
    return v / n


def rotation_matrices(axis, degrees) -> np.ndarray:
    """Rotations about a unit `axis` by `degrees` (scalar -> (3, 3); (F,) -> (F, 3, 3)), right-handed."""
    a = _unit(axis)
    deg = np.asarray(degrees, np.float64)
    rv = np.radians(deg)[..., None] * a
    return Rotation.from_rotvec(rv.reshape(-1, 3)).as_matrix().reshape(*deg.shape, 3, 3)


def _c2w(camera: Camera) -> np.ndarray:
    return invert_extrinsics(np.asarray(camera.extrinsics, np.float64))


def _with_c2w(camera: Camera, c2w: np.ndarray, intrinsics=None) -> Camera:
    dtype = np.asarray(camera.extrinsics).dtype
    E = invert_extrinsics(c2w).astype(dtype)
    K = np.asarray(camera.intrinsics if intrinsics is None else intrinsics).astype(np.asarray(camera.intrinsics).dtype)
    return Camera(K, E, camera.image_size)


def _np_tracks(tracks: Tracks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xyz = np.array(tracks.xyz, np.float64, copy=True)  # edits write into it: never alias the input
    vis = np.array(tracks.visibility, bool, copy=True)
    ids = np.arange(xyz.shape[1], dtype=np.int32) if tracks.ids is None else np.asarray(tracks.ids, np.int32)
    return xyz, vis, ids


def _out_tracks(tracks: Tracks, xyz: np.ndarray, vis=None, ids=None) -> Tracks:
    dtype = np.asarray(tracks.xyz).dtype
    return Tracks(
        xyz.astype(dtype),
        np.asarray(tracks.visibility, bool) if vis is None else vis,
        tracks.ids if ids is None else ids,
    )


def _check_selection(selection, num_points: int) -> np.ndarray:
    sel = np.asarray(selection)
    if sel.dtype != bool:
        raise ValueError(f"selection must be an (N,) bool mask; got dtype {sel.dtype}")
    if sel.shape != (num_points,):
        raise ValueError(f"selection must have shape (N,) = ({num_points},); got {sel.shape}")
    return sel


def _check_frame(frame: int, F: int, name: str = "frame") -> int:
    frame = int(frame)
    if not 0 <= frame < F:
        raise ValueError(f"{name} must be in [0, {F - 1}]; got {frame}")
    return frame


def scene_centroid(tracks: Tracks) -> np.ndarray:
    """(3,) robust scene centre: the per-coordinate median of all points over all frames."""
    return np.median(np.asarray(tracks.xyz, np.float64).reshape(-1, 3), axis=0)


def selection_centroid(tracks: Tracks, selection) -> np.ndarray:
    """(F, 3) per-frame mean of the selected points."""
    xyz, _, _ = _np_tracks(tracks)
    sel = _check_selection(selection, xyz.shape[1])
    if not sel.any():
        raise ValueError("selection is empty; a centroid needs at least one point")
    return xyz[:, sel].mean(axis=1)


def _pivot(pivot, tracks: Optional[Tracks], selection, F: int) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------
# camera edits
# ----------------------------------------------------------------------------------------------
def apply_camera_offset(camera: Camera, rotation: np.ndarray, translation: np.ndarray) -> Camera:
    """Compose every frame's camera with a local offset: c2w' = c2w @ [rotation | translation].

    rotation (F, 3, 3) and translation (F, 3) are in the camera's own frame (translation is applied
    along the original axes: centre' = centre + R_c2w @ translation).
    """
    F = camera.num_frames
    M = np.tile(np.eye(4), (F, 1, 1))
    M[:, :3, :3] = np.broadcast_to(rotation, (F, 3, 3))
    M[:, :3, 3] = np.broadcast_to(translation, (F, 3))
    return _with_c2w(camera, _c2w(camera) @ M)


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
    s = factor ** w
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
    p = _pivot(pivot, None, None, F)
    w = ramp_weights(F, ease, start, end)
    R = rotation_matrices(axis, float(degrees) * w)
    T = np.tile(np.eye(4), (F, 1, 1))
    T[:, :3, :3] = R
    T[:, :3, 3] = p - np.einsum("fij,fj->fi", R, p)  # rotate about p: x -> R (x - p) + p
    return _with_c2w(camera, T @ _c2w(camera))


def _rotations_and_centres(c2w: np.ndarray) -> tuple[Rotation, np.ndarray]:
    return Rotation.from_matrix(c2w[:, :3, :3]), c2w[:, :3, 3].copy()


def _assemble_c2w(rot: Rotation, centres: np.ndarray) -> np.ndarray:
    F = centres.shape[0]
    out = np.tile(np.eye(4), (F, 1, 1))
    out[:, :3, :3] = rot.as_matrix()
    out[:, :3, 3] = centres
    return out


def _local_linear(values: np.ndarray, weights: np.ndarray, t: np.ndarray, t0: float) -> np.ndarray:
    """Intercept at t0 of the weighted least-squares line through values (M, D) at times t (M,)."""
    A = np.stack([np.ones_like(t), t - t0], axis=1)
    Aw = A * weights[:, None]
    coef, *_ = np.linalg.lstsq(Aw.T @ A, Aw.T @ values, rcond=None)
    return coef[0]


def stabilize(camera: Camera, sigma: float = 3.0, *, rotation: bool = True) -> Camera:
    """Smooth the camera path by Gaussian-weighted local linear regression (std `sigma` frames).

    Centres are fitted directly; orientations in the tangent space of each frame (rotation vectors of
    the neighbours relative to it). Local linear (not plain averaging) keeps motion at constant
    velocity exactly, including at the clip's ends, and removes shake. `rotation=False` keeps the
    orientations.
    """
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"stabilize sigma must be > 0 frames; got {sigma}")
    c2w = _c2w(camera)
    rot, c = _rotations_and_centres(c2w)
    F = c.shape[0]
    if F < 3:
        return camera
    radius = max(int(np.ceil(3 * sigma)), 1)
    t = np.arange(F, dtype=np.float64)
    c_s = np.empty_like(c)
    rots = []
    for i in range(F):
        nb = np.arange(max(0, i - radius), min(F, i + radius + 1))
        w = np.exp(-0.5 * ((t[nb] - i) / sigma) ** 2)
        c_s[i] = _local_linear(c[nb], w, t[nb], i)
        if rotation:
            rel = (rot[i].inv() * rot[nb]).as_rotvec()
            rots.append((rot[i] * Rotation.from_rotvec(_local_linear(rel, w, t[nb], i))).as_quat())
    if rotation:
        rot = Rotation.from_quat(np.stack(rots))
    return _with_c2w(camera, _assemble_c2w(rot, c_s))


stabilise = stabilize


def make_static(camera: Camera, frame: int = 0) -> Camera:
    """Freeze the camera (extrinsics and intrinsics) at `frame` for the whole clip."""
    frame = _check_frame(frame, camera.num_frames)
    F = camera.num_frames
    K = np.repeat(np.asarray(camera.intrinsics)[frame : frame + 1], F, axis=0)
    E = np.repeat(np.asarray(camera.extrinsics)[frame : frame + 1], F, axis=0)
    return Camera(K, E, camera.image_size)


def resample_poses(c2w: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Interpolate a (P, 4, 4) camera-to-world path at fractional frame `times` (M,) in [0, P-1]:
    SLERP for orientations, linear for centres."""
    P = c2w.shape[0]
    times = np.clip(np.asarray(times, np.float64), 0, P - 1)
    rot, c = _rotations_and_centres(c2w)
    if P == 1:
        return np.repeat(c2w, len(times), axis=0)
    r = Slerp(np.arange(P, dtype=np.float64), rot)(times)
    cs = np.stack([np.interp(times, np.arange(P), c[:, k]) for k in range(3)], axis=-1)
    return _assemble_c2w(r, cs)


def fit_path_length(extrinsics: np.ndarray, num_frames: int, fit: str = "stretch") -> np.ndarray:
    """A (P, 4, 4) world-to-camera path -> (F, 4, 4).

    fit: "stretch" resamples the whole path uniformly onto F frames (SLERP + linear);
    "trim" takes the first F frames (needs P >= F).
    """
    E = np.asarray(extrinsics, np.float64)
    P, F = E.shape[0], int(num_frames)
    if P == F:
        return E
    if fit == "trim":
        if P < F:
            raise ValueError(f"path has {P} frames, fewer than the clip's {F}; use fit: stretch")
        return E[:F]
    if fit != "stretch":
        raise ValueError(f"fit must be 'stretch' or 'trim'; got {fit!r}")
    times = np.linspace(0.0, P - 1, F)
    return invert_extrinsics(resample_poses(invert_extrinsics(E), times))


def replace_path(
    camera: Camera,
    path: Camera | np.ndarray,
    *,
    fit: str = "stretch",
    align: str = "first",
    scale: float = 1.0,
    intrinsics: str = "keep",
) -> Camera:
    """Replace the camera path by another one (e.g. `load_dycheck_cameras(folder)`).

    Args:
      camera: the current camera (F frames).
      path: a `Camera` or (P, 4, 4) world-to-camera matrices; fitted to F frames with `fit_path_length`.
      align: "first": the path's motion relative to its first frame is applied from the current
        camera's first frame (c2w'_t = c2w_0 @ inv(path_c2w_0) @ path_c2w_t, with the relative
        translations multiplied by `scale` to match world units); "none": the path's world matrices
        are used as they are (they must be in the tracks' world frame).
      intrinsics: "keep" the current ones, or "path" (needs a `Camera` path with the same image size).
    """
    F = camera.num_frames
    E_path = np.asarray(path.extrinsics if isinstance(path, Camera) else path, np.float64)
    if E_path.ndim != 3 or E_path.shape[1:] != (4, 4):
        raise ValueError(f"path extrinsics must be (P, 4, 4); got {E_path.shape}")
    E = fit_path_length(E_path, F, fit)
    C_path = invert_extrinsics(E)
    if align == "first":
        rel = np.einsum("ij,fjk->fik", invert_extrinsics(C_path[:1])[0], C_path)
        rel[:, :3, 3] *= float(scale)
        c2w = np.einsum("ij,fjk->fik", _c2w(camera)[0], rel)
    elif align == "none":
        if scale != 1.0:
            raise ValueError("scale only applies with align: first")
        c2w = C_path
    else:
        raise ValueError(f"align must be 'first' or 'none'; got {align!r}")
    K = None
    if intrinsics == "path":
        if not isinstance(path, Camera):
            raise ValueError("intrinsics: path needs a path with intrinsics (a camera folder or an npz with them)")
        if tuple(path.image_size) != tuple(camera.image_size):
            raise ValueError(
                f"intrinsics: path needs the same image size; path {path.image_size} vs clip {camera.image_size}"
            )
        Kp = np.asarray(path.intrinsics, np.float64)
        K = Kp if Kp.shape[0] == F else Kp[np.round(np.linspace(0, Kp.shape[0] - 1, F)).astype(int)]
    elif intrinsics != "keep":
        raise ValueError(f"intrinsics must be 'keep' or 'path'; got {intrinsics!r}")
    return _with_c2w(camera, c2w, K)


def _eased_times(key_frames: np.ndarray, num_frames: int, ease: str) -> np.ndarray:
    """Frame times remapped so each segment between keys is traversed with `ease` (values in key time)."""
    t = np.clip(np.arange(num_frames, dtype=np.float64), key_frames[0], key_frames[-1])
    seg = np.clip(np.searchsorted(key_frames, t, side="right") - 1, 0, max(len(key_frames) - 2, 0))
    if len(key_frames) == 1:
        return t
    a, b = key_frames[seg], key_frames[seg + 1]
    u = (t - a) / (b - a)
    if ease == "constant":
        u = np.where(u >= 1.0, 1.0, 0.0)
    elif ease != "linear":
        u = _ease(u, ease)
    return a + u * (b - a)


def _ease(u: np.ndarray, ease: str) -> np.ndarray:
    if ease == "ease_in":
        return u * u
    if ease == "ease_out":
        return 1.0 - (1.0 - u) ** 2
    if ease == "ease_in_out":
        return u * u * (3.0 - 2.0 * u)
    return u


def interpolate_keyframes(key_frames, key_c2w, num_frames: int, ease: str = "ease_in_out") -> np.ndarray:
    """Camera-to-world poses at keyframes (K,) frames, (K, 4, 4) -> an (F, 4, 4) path.

    Between keys orientations follow SLERP and centres a straight line, both with the segment's
    `ease`; before the first / after the last key the pose is held.
    """
    kf = np.asarray(key_frames, np.float64)
    C = np.asarray(key_c2w, np.float64)
    if kf.ndim != 1 or len(kf) == 0 or C.shape != (len(kf), 4, 4):
        raise ValueError(f"need K keyframes and (K, 4, 4) poses; got {kf.shape} and {C.shape}")
    if np.any(np.diff(kf) <= 0):
        raise ValueError(f"keyframe frames must be strictly increasing; got {kf.astype(int).tolist()}")
    if ease not in EASES:
        raise ValueError(f"ease must be one of {EASES}; got {ease!r}")
    times = _eased_times(kf, num_frames, ease)
    if len(kf) == 1:
        return np.repeat(C, num_frames, axis=0)
    rot, c = _rotations_and_centres(C)
    r = Slerp(kf, rot)(times)
    cs = np.stack([np.interp(times, kf, c[:, k]) for k in range(3)], axis=-1)
    return _assemble_c2w(r, cs)


def local_offset(pan=0.0, tilt=0.0, roll=0.0, dolly=0.0, truck=0.0, pedestal=0.0) -> np.ndarray:
    """(4, 4) camera-frame offset: move (dolly/truck/pedestal) then turn (pan, tilt, roll in that order)."""
    R = rotation_matrices(_LOCAL_AXES["pan"], pan) @ rotation_matrices(_LOCAL_AXES["tilt"], tilt)
    R = R @ rotation_matrices(_LOCAL_AXES["roll"], roll)
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = (
        dolly * np.asarray(_LOCAL_MOVES["dolly"]) + truck * np.asarray(_LOCAL_MOVES["truck"])
        + pedestal * np.asarray(_LOCAL_MOVES["pedestal"])
    )
    return M


def keyframes(
    camera: Camera,
    keys: Sequence[dict],
    *,
    mode: str = "absolute",
    ease: str = "ease_in_out",
) -> Camera:
    """Keyframed camera path.

    Each key is a dict with `frame` and either `extrinsics` (4x4 world-to-camera) or local offsets
    `pan`, `tilt`, `roll` (degrees), `dolly`, `truck`, `pedestal` (world units) applied to the current
    camera at that frame. mode "absolute": the path is the SLERP/linear interpolation of the key poses
    (held before the first and after the last key); mode "offset": the key offsets are interpolated and
    applied to every frame of the current path (its own motion is kept).
    """
    F = camera.num_frames
    if not keys:
        raise ValueError("keyframes need at least one key")
    frames = np.array([_check_frame(k["frame"], F, "keyframe frame") for k in keys], np.float64)
    order = np.argsort(frames, kind="stable")
    c2w = _c2w(camera)
    offsets, poses = [], []
    for k in keys:
        off = local_offset(**{n: float(k.get(n, 0.0)) for n in ("pan", "tilt", "roll", "dolly", "truck", "pedestal")})
        if k.get("extrinsics") is not None:
            if mode == "offset":
                raise ValueError("keyframes: 'extrinsics' keys need mode: absolute")
            E = np.asarray(k["extrinsics"], np.float64)
            if E.shape != (4, 4):
                raise ValueError(f"keyframe extrinsics must be 4x4; got {E.shape}")
            base = invert_extrinsics(E[None])[0]
        else:
            base = c2w[int(k["frame"])]
        offsets.append(off)
        poses.append(base @ off)
    frames, offsets, poses = frames[order], np.stack(offsets)[order], np.stack(poses)[order]
    if mode == "absolute":
        return _with_c2w(camera, interpolate_keyframes(frames, poses, F, ease))
    if mode == "offset":
        M = interpolate_keyframes(frames, offsets, F, ease)
        return _with_c2w(camera, c2w @ M)
    raise ValueError(f"keyframes mode must be 'absolute' or 'offset'; got {mode!r}")


def camera_path_jerk(camera: Camera) -> float:
    """Mean norm of the third finite difference of the camera centres (world units / frame^3)."""
    c = camera_centers(Camera(np.asarray(camera.intrinsics, np.float64), np.asarray(camera.extrinsics, np.float64), camera.image_size))
    if c.shape[0] < 4:
        return 0.0
    return float(np.linalg.norm(np.diff(c, n=3, axis=0), axis=-1).mean())


# ----------------------------------------------------------------------------------------------
# selections
# ----------------------------------------------------------------------------------------------
def _project_frame(tracks: Tracks, camera: Camera, frame: int):
    xyz = np.asarray(tracks.xyz, np.float64)
    F = xyz.shape[0]
    if camera.num_frames != F:
        raise ValueError(f"tracks have F={F} frames but the camera has F={camera.num_frames}")
    frame = _check_frame(frame, F)
    cam = Camera(np.asarray(camera.intrinsics, np.float64)[frame : frame + 1],
                 np.asarray(camera.extrinsics, np.float64)[frame : frame + 1], camera.image_size)
    uv, depth = project(xyz[frame : frame + 1], cam)
    return uv[0], depth[0], frame


def select_box(tracks: Tracks, camera: Camera, box, frame: int = 0, *, visible_only: bool = False,
               near: float = 1e-3) -> np.ndarray:
    """(N,) bool: points in front of the camera whose projection at `frame` lies in the pixel box
    [x0, x1] x [y0, y1] (inclusive); `visible_only` also requires visibility at that frame."""
    b = np.asarray(box, np.float64).reshape(-1)
    if b.shape != (4,) or not (b[0] <= b[2] and b[1] <= b[3]):
        raise ValueError(f"box must be [x0, y0, x1, y1] with x0 <= x1, y0 <= y1 (pixels); got {np.asarray(box).tolist()}")
    uv, depth, frame = _project_frame(tracks, camera, frame)
    sel = (depth > near) & (uv[:, 0] >= b[0]) & (uv[:, 0] <= b[2]) & (uv[:, 1] >= b[1]) & (uv[:, 1] <= b[3])
    if visible_only:
        sel &= np.asarray(tracks.visibility, bool)[frame]
    return sel


def select_mask(tracks: Tracks, camera: Camera, mask, frame: int = 0, *, visible_only: bool = False,
                near: float = 1e-3) -> np.ndarray:
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


def _kabsch(P: np.ndarray, Q: np.ndarray, w: Optional[np.ndarray] = None):
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
    threshold: Optional[float] = None,
    min_size: Optional[int] = None,
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
            R, t = _kabsch(P, Q)
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
            R, t = _kabsch(np.broadcast_to(Xr[0][best], (F,) + Xr[0][best].shape), Xr[:, best])
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


# ----------------------------------------------------------------------------------------------
# object edits (on a selection)
# ----------------------------------------------------------------------------------------------
def translate(tracks: Tracks, selection, offset, *, ease="linear", start=0, end=None) -> Tracks:
    """Move the selected points by `offset` (3,) world units, ramped in over the clip."""
    xyz, _, _ = _np_tracks(tracks)
    sel = _check_selection(selection, xyz.shape[1])
    off = np.asarray(offset, np.float64).reshape(-1)
    if off.shape != (3,):
        raise ValueError(f"offset must be [dx, dy, dz]; got {np.asarray(offset).tolist()}")
    w = ramp_weights(xyz.shape[0], ease, start, end)
    xyz[:, sel] += w[:, None, None] * off
    return _out_tracks(tracks, xyz)


def follow_path(tracks: Tracks, selection, waypoints, frames: Optional[Sequence[int]] = None, *,
                ease: str = "linear") -> Tracks:
    """Move the selection so its per-frame centroid follows a new path.

    waypoints: (K, 3) world positions of the centroid at `frames` (default: spread evenly from 0 to
    F-1); between them the path is linear (eased per segment), held outside. The points keep their
    motion relative to the centroid.
    """
    xyz, _, _ = _np_tracks(tracks)
    F = xyz.shape[0]
    sel = _check_selection(selection, xyz.shape[1])
    wp = np.asarray(waypoints, np.float64)
    if wp.ndim != 2 or wp.shape[1] != 3 or len(wp) == 0:
        raise ValueError(f"path must be a list of [x, y, z] waypoints; got shape {wp.shape}")
    if frames is None:
        frames = np.round(np.linspace(0, F - 1, len(wp))) if len(wp) > 1 else np.zeros(1)
    kf = np.asarray(frames, np.float64)
    if kf.shape != (len(wp),):
        raise ValueError(f"path frames must have one entry per waypoint ({len(wp)}); got {kf.shape}")
    for f in kf:
        _check_frame(int(f), F, "path frame")
    if np.any(np.diff(kf) <= 0):
        raise ValueError(f"path frames must be strictly increasing; got {kf.astype(int).tolist()}")
    times = _eased_times(kf, F, ease)
    target = np.stack([np.interp(times, kf, wp[:, k]) for k in range(3)], axis=-1)
    cen = xyz[:, sel].mean(axis=1)
    xyz[:, sel] += (target - cen)[:, None, :]
    return _out_tracks(tracks, xyz)


def _rotate_about(xyz_sel: np.ndarray, R: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.einsum("fij,fnj->fni", R, xyz_sel - p[:, None]) + p[:, None]


def rotate(tracks: Tracks, selection, degrees: float, *, axis=(0.0, -1.0, 0.0), pivot="centroid",
           ease="linear", start=0, end=None) -> Tracks:
    """Rotate the selection about `axis` (world) through `pivot` ('centroid' of the selection per
    frame, or a world point), by degrees * w(t)."""
    xyz, _, _ = _np_tracks(tracks)
    F = xyz.shape[0]
    sel = _check_selection(selection, xyz.shape[1])
    p = _pivot(pivot, tracks, sel, F)
    R = rotation_matrices(axis, float(degrees) * ramp_weights(F, ease, start, end))
    xyz[:, sel] = _rotate_about(xyz[:, sel], R, p)
    return _out_tracks(tracks, xyz)


def scale(tracks: Tracks, selection, factor, *, pivot="centroid", ease="linear", start=0, end=None) -> Tracks:
    """Scale the selection about `pivot` by `factor` (scalar or per world axis (3,)), ramped geometrically."""
    xyz, _, _ = _np_tracks(tracks)
    F = xyz.shape[0]
    sel = _check_selection(selection, xyz.shape[1])
    fac = np.broadcast_to(np.asarray(factor, np.float64), (3,))
    if not (fac > 0).all():
        raise ValueError(f"scale factor must be > 0; got {np.asarray(factor).tolist()}")
    p = _pivot(pivot, tracks, sel, F)
    s = fac[None, :] ** ramp_weights(F, ease, start, end)[:, None]  # (F, 3)
    xyz[:, sel] = p[:, None] + s[:, None] * (xyz[:, sel] - p[:, None])
    return _out_tracks(tracks, xyz)


def stretch(tracks: Tracks, selection, factor: float, *, axis, pivot="centroid", ease="linear", start=0,
            end=None) -> Tracks:
    """Scale the selection along one world `axis` only (e.g. stretch a body, extend legs)."""
    xyz, _, _ = _np_tracks(tracks)
    F = xyz.shape[0]
    sel = _check_selection(selection, xyz.shape[1])
    if not float(factor) > 0:
        raise ValueError(f"stretch factor must be > 0; got {factor}")
    a = _unit(axis)
    p = _pivot(pivot, tracks, sel, F)
    s = float(factor) ** ramp_weights(F, ease, start, end)  # (F,)
    d = xyz[:, sel] - p[:, None]
    along = d @ a
    xyz[:, sel] = p[:, None] + d + ((s[:, None] - 1.0) * along)[..., None] * a
    return _out_tracks(tracks, xyz)


def bend(tracks: Tracks, selection, degrees: float, *, axis, direction, pivot="centroid", ease="linear",
         start=0, end=None) -> Tracks:
    """Bend the selection: each point rotates about `axis` through `pivot` by degrees * s, where
    s in [0, 1] is its distance along `direction` from the pivot relative to the farthest selected
    point (points behind the pivot stay). E.g. bend a neck from its base."""
    xyz, _, _ = _np_tracks(tracks)
    F = xyz.shape[0]
    sel = _check_selection(selection, xyz.shape[1])
    a, dvec = _unit(axis), _unit(direction, "direction")
    p = _pivot(pivot, tracks, sel, F)
    pts = xyz[:, sel]
    along = np.einsum("fni,i->fn", pts - p[:, None], dvec)
    L = np.maximum(along.max(axis=1, keepdims=True), 1e-12)
    s = np.clip(along / L, 0.0, 1.0)
    ang = float(degrees) * ramp_weights(F, ease, start, end)[:, None] * s  # (F, n)
    R = rotation_matrices(a, ang)  # (F, n, 3, 3)
    xyz[:, sel] = np.einsum("fnij,fnj->fni", R, pts - p[:, None]) + p[:, None]
    return _out_tracks(tracks, xyz)


def move_depth(tracks: Tracks, selection, camera: Camera, *, factor: Optional[float] = None,
               distance: Optional[float] = None, ease="constant", start=0, end=None) -> Tracks:
    """Move the selection in depth as seen by `camera` (to change the occlusion order).

    factor: scale every selected point's offset from the camera centre (same pixels and 2D size,
      depth x factor; < 1 brings it in front of others).
    distance: move the selection along the ray from the camera centre to its centroid by `distance`
      world units (+ away from the camera; it looks smaller/larger).
    """
    if (factor is None) == (distance is None):
        raise ValueError("move_depth needs exactly one of factor or distance")
    xyz, _, _ = _np_tracks(tracks)
    F = xyz.shape[0]
    sel = _check_selection(selection, xyz.shape[1])
    w = ramp_weights(F, ease, start, end)
    c = camera_centers(Camera(np.asarray(camera.intrinsics, np.float64), np.asarray(camera.extrinsics, np.float64), camera.image_size))
    if factor is not None:
        if not float(factor) > 0:
            raise ValueError(f"depth factor must be > 0; got {factor}")
        s = float(factor) ** w
        xyz[:, sel] = c[:, None] + s[:, None, None] * (xyz[:, sel] - c[:, None])
    else:
        ray = xyz[:, sel].mean(axis=1) - c
        ray /= np.maximum(np.linalg.norm(ray, axis=-1, keepdims=True), 1e-12)
        xyz[:, sel] += (float(distance) * w)[:, None, None] * ray[:, None]
    return _out_tracks(tracks, xyz)


def move_off_screen(tracks: Tracks, selection, camera: Camera, *, side: str = "auto",
                    margin: Optional[float] = None, near: float = 1e-3) -> Tracks:
    """Remove an object by moving its points off screen in every frame of `camera`.

    Per frame, the selection is shifted rigidly along the camera's x (side left/right) or y (top/bottom)
    axis just enough that every point in front of the camera projects at least `margin` pixels
    (default a quarter of the image side) beyond that border; points behind the camera stay behind.
    side "auto" picks the side needing the least total movement.
    """
    xyz, _, _ = _np_tracks(tracks)
    sel = _check_selection(selection, xyz.shape[1])
    if not sel.any():
        return tracks
    E = np.asarray(camera.extrinsics, np.float64)
    K = np.asarray(camera.intrinsics, np.float64)
    H, W = camera.image_size
    cam = world_to_camera(xyz[:, sel], E)
    uv, z = project(xyz[:, sel], Camera(K, E, camera.image_size))
    front = z > near
    zs = np.where(front, z, 0.0)
    fx, fy = K[:, 0, 0][:, None], K[:, 1, 1][:, None]
    shifts = {}
    for name, axis_i, coord, focal, limit, sign in (
        ("right", 0, uv[..., 0], fx, W - 0.5, 1.0),
        ("left", 0, uv[..., 0], fx, -0.5, -1.0),
        ("bottom", 1, uv[..., 1], fy, H - 0.5, 1.0),
        ("top", 1, uv[..., 1], fy, -0.5, -1.0),
    ):
        m = (0.25 * (W if axis_i == 0 else H)) if margin is None else float(margin)
        need = (limit + sign * m - coord) * zs / focal  # shift (camera units) putting each point at the limit
        if sign > 0:
            s = np.maximum(np.max(np.where(front, need, -np.inf), axis=1), 0.0)
        else:
            s = np.minimum(np.min(np.where(front, need, np.inf), axis=1), 0.0)
        s = np.where(np.isfinite(s), s, 0.0)
        shifts[name] = (axis_i, s)
    if side == "auto":
        side = min(shifts, key=lambda n: np.abs(shifts[n][1]).sum())
    if side not in shifts:
        raise ValueError(f"side must be 'auto', 'left', 'right', 'top' or 'bottom'; got {side!r}")
    axis_i, s = shifts[side]
    cam[..., axis_i] += s[:, None]
    xyz[:, sel] = camera_to_world(cam, E)
    return _out_tracks(tracks, xyz)


def subset(tracks: Tracks, keep) -> Tracks:
    """The points where `keep` (N,) is True, in their original order (ids carried along)."""
    xyz, vis, ids = _np_tracks(tracks)
    keep = _check_selection(keep, xyz.shape[1])
    if not keep.any():
        raise ValueError("no points would be left (N = 0)")
    return Tracks(np.asarray(tracks.xyz)[:, keep], vis[:, keep], ids[keep])


def drop_points(tracks: Tracks, selection) -> Tracks:
    """Remove the selected points (order of the others preserved, ids carried)."""
    sel = _check_selection(selection, np.asarray(tracks.xyz).shape[1])
    return subset(tracks, ~sel)


def duplicate(tracks: Tracks, selection, offset=(0.0, 0.0, 0.0), *, ease="constant", start=0, end=None) -> Tracks:
    """Append a copy of the selected points moved by `offset` (default: present from frame 0).

    The copies come after all existing points, in selection order; their ids are the originals' ids.
    """
    xyz, vis, ids = _np_tracks(tracks)
    sel = _check_selection(selection, xyz.shape[1])
    off = np.asarray(offset, np.float64).reshape(3)
    w = ramp_weights(xyz.shape[0], ease, start, end)
    copy = xyz[:, sel] + w[:, None, None] * off
    dtype = np.asarray(tracks.xyz).dtype
    return Tracks(
        np.concatenate([xyz, copy], axis=1).astype(dtype),
        np.concatenate([vis, vis[:, sel]], axis=1),
        np.concatenate([ids, ids[sel]]),
    )


def retime_map(num_frames: int, *, speed: Optional[float] = None, anchor: int = 0, freeze: Optional[int] = None,
               reverse: bool = False, remap: Optional[Sequence[Sequence[float]]] = None) -> np.ndarray:
    """(F,) source time for every output frame (clamped to [0, F-1]). Exactly one mode:

    speed: tau(t) = anchor + speed * (t - anchor);  freeze: tau(t) = min(t, freeze) (stops at that
    frame);  reverse: tau(t) = F-1-t;  remap: [[t_out, t_in], ...] piecewise linear (held outside).
    """
    F = int(num_frames)
    modes = [speed is not None, freeze is not None, bool(reverse), remap is not None]
    if sum(modes) != 1:
        raise ValueError("retime needs exactly one of speed, freeze, reverse, remap")
    t = np.arange(F, dtype=np.float64)
    if speed is not None:
        tau = anchor + float(speed) * (t - anchor)
    elif freeze is not None:
        tau = np.minimum(t, _check_frame(freeze, F, "freeze"))
    elif reverse:
        tau = F - 1 - t
    else:
        r = np.asarray(remap, np.float64)
        if r.ndim != 2 or r.shape[1] != 2 or len(r) == 0:
            raise ValueError(f"remap must be a list of [t_out, t_in] pairs; got shape {r.shape}")
        if np.any(np.diff(r[:, 0]) <= 0):
            raise ValueError("remap t_out values must be strictly increasing")
        tau = np.interp(t, r[:, 0], r[:, 1])
    return np.clip(tau, 0.0, F - 1.0)


def retime(tracks: Tracks, selection, tau) -> Tracks:
    """Play the selection's motion on a new clock: frame t shows the selection at source time tau[t]
    (linear interpolation between frames; visibility from the nearest frame). tau=arange(F) is the identity."""
    xyz, vis, _ = _np_tracks(tracks)
    F = xyz.shape[0]
    sel = _check_selection(selection, xyz.shape[1])
    tau = np.clip(np.asarray(tau, np.float64), 0, F - 1)
    if tau.shape != (F,):
        raise ValueError(f"tau must have shape (F,) = ({F},); got {tau.shape}")
    i0 = np.floor(tau).astype(int)
    i1 = np.minimum(i0 + 1, F - 1)
    a = (tau - i0)[:, None, None]
    pts = xyz[:, sel]
    xyz[:, sel] = pts[i0] * (1.0 - a) + pts[i1] * a
    vis = vis.copy()
    vis[:, sel] = vis[np.round(tau).astype(int)][:, sel]
    return _out_tracks(tracks, xyz, vis)


def transfer_motion(tracks: Tracks, selection, driver_xyz, *, mode: str = "auto", frame: int = 0,
                    scale: float = 1.0) -> Tracks:
    """Give the selection the motion of a driver track set (F, M, 3), from reference `frame` on.

    mode "points" (M == selected count): x_i(t) = x_i(r) + scale * (d_i(t) - d_i(r));
    "translation": the driver's centroid displacement; "rigid": the driver's per-frame rigid motion
    (Kabsch from frame r) applied about the selection's reference centroid, plus the centroid
    displacement; "auto": points when the counts match, else rigid.
    Transferring a track set's own motion onto itself is the identity (exactly for points; for rigid
    motion with rigid).
    """
    xyz, _, _ = _np_tracks(tracks)
    F = xyz.shape[0]
    sel = _check_selection(selection, xyz.shape[1])
    D = np.asarray(driver_xyz, np.float64)
    if D.ndim != 3 or D.shape[-1] != 3 or D.shape[0] != F:
        raise ValueError(f"driver tracks must be (F, M, 3) with F={F}; got {D.shape}")
    r = _check_frame(frame, F, "frame")
    n = int(sel.sum())
    if mode == "auto":
        mode = "points" if D.shape[1] == n else "rigid"
    X = xyz[:, sel]
    if mode == "points":
        if D.shape[1] != n:
            raise ValueError(f"mode points needs as many driver tracks as selected points: {D.shape[1]} vs {n}")
        xyz[:, sel] = X[r][None] + scale * (D - D[r][None])
    elif mode == "translation":
        cd = D.mean(axis=1)
        xyz[:, sel] = X[r][None] + scale * (cd - cd[r])[:, None]
    elif mode == "rigid":
        R, _ = _kabsch(np.broadcast_to(D[r], D.shape), D)
        cd = D.mean(axis=1)
        cs = X[r].mean(axis=0)
        xyz[:, sel] = np.einsum("fij,nj->fni", R, X[r] - cs) + cs + scale * (cd - cd[r])[:, None]
    else:
        raise ValueError(f"transfer mode must be auto, points, translation or rigid; got {mode!r}")
    return _out_tracks(tracks, xyz)
