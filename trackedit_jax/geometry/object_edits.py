"""Object edits: functions of (tracks, selection, ...) -> tracks that move, deform, remove, copy, retime
or re-drive the selected points. Amounts are ramped with `ramp_weights`; see `geometry.edits`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trackedit_jax.geometry.easing import eased_times, ramp_weights
from trackedit_jax.geometry.edit_common import (
    check_frame,
    check_selection,
    output_tracks,
    pivot_path,
    rotation_matrices,
    tracks_float64,
    unit_vector,
)
from trackedit_jax.geometry.projection import camera_centers, camera_to_world, project, world_to_camera
from trackedit_jax.geometry.selection import kabsch
from trackedit_jax.geometry.types import Camera, Tracks


def translate(tracks: Tracks, selection, offset, *, ease="linear", start=0, end=None) -> Tracks:
    """Move the selected points by `offset` (3,) world units, ramped in over the clip."""
    xyz, _, _ = tracks_float64(tracks)
    sel = check_selection(selection, xyz.shape[1])
    off = np.asarray(offset, np.float64).reshape(-1)
    if off.shape != (3,):
        raise ValueError(f"offset must be [dx, dy, dz]; got {np.asarray(offset).tolist()}")
    w = ramp_weights(xyz.shape[0], ease, start, end)
    xyz[:, sel] += w[:, None, None] * off
    return output_tracks(tracks, xyz)


def follow_path(
    tracks: Tracks, selection, waypoints, frames: Sequence[int] | None = None, *, ease: str = "linear"
) -> Tracks:
    """Move the selection so its per-frame centroid follows a new path.

    waypoints: (K, 3) world positions of the centroid at `frames` (default: spread evenly from 0 to
    F-1); between them the path is linear (eased per segment), held outside. The points keep their
    motion relative to the centroid.
    """
    xyz, _, _ = tracks_float64(tracks)
    F = xyz.shape[0]
    sel = check_selection(selection, xyz.shape[1])
    wp = np.asarray(waypoints, np.float64)
    if wp.ndim != 2 or wp.shape[1] != 3 or len(wp) == 0:
        raise ValueError(f"path must be a list of [x, y, z] waypoints; got shape {wp.shape}")
    if frames is None:
        frames = np.round(np.linspace(0, F - 1, len(wp))) if len(wp) > 1 else np.zeros(1)
    kf = np.asarray(frames, np.float64)
    if kf.shape != (len(wp),):
        raise ValueError(f"path frames must have one entry per waypoint ({len(wp)}); got {kf.shape}")
    for f in kf:
        check_frame(int(f), F, "path frame")
    if np.any(np.diff(kf) <= 0):
        raise ValueError(f"path frames must be strictly increasing; got {kf.astype(int).tolist()}")
    times = eased_times(kf, F, ease)
    target = np.stack([np.interp(times, kf, wp[:, k]) for k in range(3)], axis=-1)
    cen = xyz[:, sel].mean(axis=1)
    xyz[:, sel] += (target - cen)[:, None, :]
    return output_tracks(tracks, xyz)


def _rotate_about(xyz_sel: np.ndarray, R: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.einsum("fij,fnj->fni", R, xyz_sel - p[:, None]) + p[:, None]


def rotate(
    tracks: Tracks,
    selection,
    degrees: float,
    *,
    axis=(0.0, -1.0, 0.0),
    pivot="centroid",
    ease="linear",
    start=0,
    end=None,
) -> Tracks:
    """Rotate the selection about `axis` (world) through `pivot` ('centroid' of the selection per
    frame, or a world point), by degrees * w(t)."""
    xyz, _, _ = tracks_float64(tracks)
    F = xyz.shape[0]
    sel = check_selection(selection, xyz.shape[1])
    p = pivot_path(pivot, tracks, sel, F)
    R = rotation_matrices(axis, float(degrees) * ramp_weights(F, ease, start, end))
    xyz[:, sel] = _rotate_about(xyz[:, sel], R, p)
    return output_tracks(tracks, xyz)


def scale(tracks: Tracks, selection, factor, *, pivot="centroid", ease="linear", start=0, end=None) -> Tracks:
    """Scale the selection about `pivot` by `factor` (scalar or per world axis (3,)), ramped geometrically."""
    xyz, _, _ = tracks_float64(tracks)
    F = xyz.shape[0]
    sel = check_selection(selection, xyz.shape[1])
    fac = np.broadcast_to(np.asarray(factor, np.float64), (3,))
    if not (fac > 0).all():
        raise ValueError(f"scale factor must be > 0; got {np.asarray(factor).tolist()}")
    p = pivot_path(pivot, tracks, sel, F)
    s = fac[None, :] ** ramp_weights(F, ease, start, end)[:, None]  # (F, 3)
    xyz[:, sel] = p[:, None] + s[:, None] * (xyz[:, sel] - p[:, None])
    return output_tracks(tracks, xyz)


def stretch(
    tracks: Tracks, selection, factor: float, *, axis, pivot="centroid", ease="linear", start=0, end=None
) -> Tracks:
    """Scale the selection along one world `axis` only (e.g. stretch a body, extend legs)."""
    xyz, _, _ = tracks_float64(tracks)
    F = xyz.shape[0]
    sel = check_selection(selection, xyz.shape[1])
    if not float(factor) > 0:
        raise ValueError(f"stretch factor must be > 0; got {factor}")
    a = unit_vector(axis)
    p = pivot_path(pivot, tracks, sel, F)
    s = float(factor) ** ramp_weights(F, ease, start, end)  # (F,)
    d = xyz[:, sel] - p[:, None]
    along = d @ a
    xyz[:, sel] = p[:, None] + d + ((s[:, None] - 1.0) * along)[..., None] * a
    return output_tracks(tracks, xyz)


def bend(
    tracks: Tracks, selection, degrees: float, *, axis, direction, pivot="centroid", ease="linear", start=0, end=None
) -> Tracks:
    """Bend the selection: each point rotates about `axis` through `pivot` by degrees * s, where
    s in [0, 1] is its distance along `direction` from the pivot relative to the farthest selected
    point (points behind the pivot stay). E.g. bend a neck from its base."""
    xyz, _, _ = tracks_float64(tracks)
    F = xyz.shape[0]
    sel = check_selection(selection, xyz.shape[1])
    a, dvec = unit_vector(axis), unit_vector(direction, "direction")
    p = pivot_path(pivot, tracks, sel, F)
    pts = xyz[:, sel]
    along = np.einsum("fni,i->fn", pts - p[:, None], dvec)
    L = np.maximum(along.max(axis=1, keepdims=True), 1e-12)
    s = np.clip(along / L, 0.0, 1.0)
    ang = float(degrees) * ramp_weights(F, ease, start, end)[:, None] * s  # (F, n)
    R = rotation_matrices(a, ang)  # (F, n, 3, 3)
    xyz[:, sel] = np.einsum("fnij,fnj->fni", R, pts - p[:, None]) + p[:, None]
    return output_tracks(tracks, xyz)


def move_depth(
    tracks: Tracks,
    selection,
    camera: Camera,
    *,
    factor: float | None = None,
    distance: float | None = None,
    ease="constant",
    start=0,
    end=None,
) -> Tracks:
    """Move the selection in depth as seen by `camera` (to change the occlusion order).

    factor: scale every selected point's offset from the camera centre (same pixels and 2D size,
      depth x factor; < 1 brings it in front of others).
    distance: move the selection along the ray from the camera centre to its centroid by `distance`
      world units (+ away from the camera; it looks smaller/larger).
    """
    if (factor is None) == (distance is None):
        raise ValueError("move_depth needs exactly one of factor or distance")
    xyz, _, _ = tracks_float64(tracks)
    F = xyz.shape[0]
    sel = check_selection(selection, xyz.shape[1])
    w = ramp_weights(F, ease, start, end)
    c = camera_centers(
        Camera(np.asarray(camera.intrinsics, np.float64), np.asarray(camera.extrinsics, np.float64), camera.image_size)
    )
    if factor is not None:
        if not float(factor) > 0:
            raise ValueError(f"depth factor must be > 0; got {factor}")
        s = float(factor) ** w
        xyz[:, sel] = c[:, None] + s[:, None, None] * (xyz[:, sel] - c[:, None])
    else:
        ray = xyz[:, sel].mean(axis=1) - c
        ray /= np.maximum(np.linalg.norm(ray, axis=-1, keepdims=True), 1e-12)
        xyz[:, sel] += (float(distance) * w)[:, None, None] * ray[:, None]
    return output_tracks(tracks, xyz)


def move_off_screen(
    tracks: Tracks, selection, camera: Camera, *, side: str = "auto", margin: float | None = None, near: float = 1e-3
) -> Tracks:
    """Remove an object by moving its points off screen in every frame of `camera`.

    Per frame, the selection is shifted rigidly along the camera's x (side left/right) or y (top/bottom)
    axis just enough that every point in front of the camera projects at least `margin` pixels
    (default a quarter of the image side) beyond that border; points behind the camera stay behind.
    side "auto" picks the side needing the least total movement.
    """
    xyz, _, _ = tracks_float64(tracks)
    sel = check_selection(selection, xyz.shape[1])
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
    return output_tracks(tracks, xyz)


def subset(tracks: Tracks, keep) -> Tracks:
    """The points where `keep` (N,) is True, in their original order (ids carried along)."""
    xyz, vis, ids = tracks_float64(tracks)
    keep = check_selection(keep, xyz.shape[1])
    if not keep.any():
        raise ValueError("no points would be left (N = 0)")
    return Tracks(np.asarray(tracks.xyz)[:, keep], vis[:, keep], ids[keep])


def drop_points(tracks: Tracks, selection) -> Tracks:
    """Remove the selected points (order of the others preserved, ids carried)."""
    sel = check_selection(selection, np.asarray(tracks.xyz).shape[1])
    return subset(tracks, ~sel)


def duplicate(tracks: Tracks, selection, offset=(0.0, 0.0, 0.0), *, ease="constant", start=0, end=None) -> Tracks:
    """Append a copy of the selected points moved by `offset` (default: present from frame 0).

    The copies come after all existing points, in selection order; their ids are the originals' ids.
    """
    xyz, vis, ids = tracks_float64(tracks)
    sel = check_selection(selection, xyz.shape[1])
    off = np.asarray(offset, np.float64).reshape(3)
    w = ramp_weights(xyz.shape[0], ease, start, end)
    copy = xyz[:, sel] + w[:, None, None] * off
    dtype = np.asarray(tracks.xyz).dtype
    return Tracks(
        np.concatenate([xyz, copy], axis=1).astype(dtype),
        np.concatenate([vis, vis[:, sel]], axis=1),
        np.concatenate([ids, ids[sel]]),
    )


def retime_map(
    num_frames: int,
    *,
    speed: float | None = None,
    anchor: int = 0,
    freeze: int | None = None,
    reverse: bool = False,
    remap: Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
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
        tau = np.minimum(t, check_frame(freeze, F, "freeze"))
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
    xyz, vis, _ = tracks_float64(tracks)
    F = xyz.shape[0]
    sel = check_selection(selection, xyz.shape[1])
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
    return output_tracks(tracks, xyz, vis)


def transfer_motion(
    tracks: Tracks, selection, driver_xyz, *, mode: str = "auto", frame: int = 0, scale: float = 1.0
) -> Tracks:
    """Give the selection the motion of a driver track set (F, M, 3), from reference `frame` on.

    mode "points" (M == selected count): x_i(t) = x_i(r) + scale * (d_i(t) - d_i(r));
    "translation": the driver's centroid displacement; "rigid": the driver's per-frame rigid motion
    (Kabsch from frame r) applied about the selection's reference centroid, plus the centroid
    displacement; "auto": points when the counts match, else rigid.
    Transferring a track set's own motion onto itself is the identity (exactly for points; for rigid
    motion with rigid).
    """
    xyz, _, _ = tracks_float64(tracks)
    F = xyz.shape[0]
    sel = check_selection(selection, xyz.shape[1])
    D = np.asarray(driver_xyz, np.float64)
    if D.ndim != 3 or D.shape[-1] != 3 or D.shape[0] != F:
        raise ValueError(f"driver tracks must be (F, M, 3) with F={F}; got {D.shape}")
    r = check_frame(frame, F, "frame")
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
        R, _ = kabsch(np.broadcast_to(D[r], D.shape), D)
        cd = D.mean(axis=1)
        cs = X[r].mean(axis=0)
        xyz[:, sel] = np.einsum("fij,nj->fni", R, X[r] - cs) + cs + scale * (cd - cd[r])[:, None]
    else:
        raise ValueError(f"transfer mode must be auto, points, translation or rigid; got {mode!r}")
    return output_tracks(tracks, xyz)
