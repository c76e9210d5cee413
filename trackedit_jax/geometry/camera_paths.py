"""Whole-path camera edits: stabilize (smoothing), make_static, replace_path (a path from a file) and
keyframes (SLERP + eased positions between key poses), plus the path jerk used to check smoothness.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from trackedit_jax.geometry.camera_edits import local_offset
from trackedit_jax.geometry.easing import check_ease, eased_times
from trackedit_jax.geometry.edit_common import camera_c2w, check_frame, with_c2w
from trackedit_jax.geometry.projection import camera_centers, invert_extrinsics
from trackedit_jax.geometry.types import Camera


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
    c2w = camera_c2w(camera)
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
    return with_c2w(camera, _assemble_c2w(rot, c_s))


stabilise = stabilize


def make_static(camera: Camera, frame: int = 0) -> Camera:
    """Freeze the camera (extrinsics and intrinsics) at `frame` for the whole clip."""
    frame = check_frame(frame, camera.num_frames)
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
        c2w = np.einsum("ij,fjk->fik", camera_c2w(camera)[0], rel)
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
    return with_c2w(camera, c2w, K)


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
    check_ease(ease)
    times = eased_times(kf, num_frames, ease)
    if len(kf) == 1:
        return np.repeat(C, num_frames, axis=0)
    rot, c = _rotations_and_centres(C)
    r = Slerp(kf, rot)(times)
    cs = np.stack([np.interp(times, kf, c[:, k]) for k in range(3)], axis=-1)
    return _assemble_c2w(r, cs)


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
    frames = np.array([check_frame(k["frame"], F, "keyframe frame") for k in keys], np.float64)
    order = np.argsort(frames, kind="stable")
    c2w = camera_c2w(camera)
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
        return with_c2w(camera, interpolate_keyframes(frames, poses, F, ease))
    if mode == "offset":
        M = interpolate_keyframes(frames, offsets, F, ease)
        return with_c2w(camera, c2w @ M)
    raise ValueError(f"keyframes mode must be 'absolute' or 'offset'; got {mode!r}")


def camera_path_jerk(camera: Camera) -> float:
    """Mean norm of the third finite difference of the camera centres (world units / frame^3)."""
    c = camera_centers(
        Camera(np.asarray(camera.intrinsics, np.float64), np.asarray(camera.extrinsics, np.float64), camera.image_size)
    )
    if c.shape[0] < 4:
        return 0.0
    return float(np.linalg.norm(np.diff(c, n=3, axis=0), axis=-1).mean())
