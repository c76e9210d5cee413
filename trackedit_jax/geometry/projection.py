"""Pinhole projection between world points, camera coordinates and pixels (OpenCV axes).

Functions accept numpy or jax arrays and return the same kind (numpy stays numpy, so the data
pipeline never touches jax; jax arrays and tracers stay jax, so the functions jit).
Pixel convention: OpenCV, the centre of pixel (i, j) is at (x=j, y=i); the image spans
[-0.5, W-0.5] x [-0.5, H-0.5]. Normalised grid units map that span to [-1, 1] (align_corners=False).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from trackedit_jax.geometry.types import Camera

_EPS = 1e-8


def xp_of(*arrays):
    """numpy for numpy inputs, jax.numpy as soon as one input is a jax array or tracer."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _check_points(xyz, camera: Camera):
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"xyz must have shape (F, N, 3); got {xyz.shape}")
    if xyz.shape[0] != camera.intrinsics.shape[0]:
        raise ValueError(f"xyz has F={xyz.shape[0]} frames but the camera has F={camera.intrinsics.shape[0]}")


def world_to_camera(xyz, extrinsics):
    """World points (F, N, 3) -> camera coordinates (F, N, 3) with world-to-camera (F, 4, 4)."""
    xp = xp_of(xyz, extrinsics)
    R, t = extrinsics[:, :3, :3], extrinsics[:, :3, 3]
    return xp.einsum("fij,fnj->fni", R, xyz) + t[:, None, :]


def camera_to_world(xyz_cam, extrinsics):
    """Camera coordinates (F, N, 3) -> world points (F, N, 3); inverse of `world_to_camera`."""
    xp = xp_of(xyz_cam, extrinsics)
    R, t = extrinsics[:, :3, :3], extrinsics[:, :3, 3]
    return xp.einsum("fji,fnj->fni", R, xyz_cam - t[:, None, :])


def invert_extrinsics(extrinsics):
    """Invert rigid (F, 4, 4) transforms (world-to-camera <-> camera-to-world) exactly."""
    xp = xp_of(extrinsics)
    R, t = extrinsics[:, :3, :3], extrinsics[:, :3, 3]
    Rt = xp.swapaxes(R, -1, -2)
    out = xp.zeros_like(extrinsics)
    if xp is np:
        out[:, :3, :3] = Rt
        out[:, :3, 3] = -np.einsum("fij,fj->fi", Rt, t)
        out[:, 3, 3] = 1
        return out
    out = out.at[:, :3, :3].set(Rt)
    out = out.at[:, :3, 3].set(-jnp.einsum("fij,fj->fi", Rt, t))
    return out.at[:, 3, 3].set(1)


def camera_centers(camera: Camera):
    """World positions (F, 3) of the camera centres."""
    xp = xp_of(camera.extrinsics)
    R, t = camera.extrinsics[:, :3, :3], camera.extrinsics[:, :3, 3]
    return -xp.einsum("fji,fj->fi", R, t)


def project(xyz, camera: Camera):
    """Project world points to pixels.

    Args:
      xyz: (F, N, 3) world points.
      camera: `Camera` with F frames.
    Returns:
      uv: (F, N, 2) pixel coordinates (x, y), OpenCV convention. For points with depth <= 0 the
        values are finite but meaningless; mask them with `in_front(depth)`.
      depth: (F, N) camera-space z (positive in front of the camera).
    """
    _check_points(xyz, camera)
    xp = xp_of(xyz, camera.intrinsics, camera.extrinsics)
    cam = world_to_camera(xyz, camera.extrinsics)
    z = cam[..., 2]
    z_safe = xp.where(xp.abs(z) < _EPS, _EPS, z)
    ndc = cam[..., :2] / z_safe[..., None]
    K = camera.intrinsics
    u = K[:, None, 0, 0] * ndc[..., 0] + K[:, None, 0, 1] * ndc[..., 1] + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * ndc[..., 1] + K[:, None, 1, 2]
    return xp.stack([u, v], axis=-1), z


def unproject(uv, depth, camera: Camera):
    """Lift pixels with camera-space depth to world points; inverse of `project` for depth > 0.

    Args:
      uv: (F, N, 2) pixels; depth: (F, N) camera z; camera: `Camera` with F frames.
    Returns:
      (F, N, 3) world points.
    """
    xp = xp_of(uv, depth, camera.intrinsics, camera.extrinsics)
    K = camera.intrinsics
    fx, fy, s = K[:, None, 0, 0], K[:, None, 1, 1], K[:, None, 0, 1]
    cx, cy = K[:, None, 0, 2], K[:, None, 1, 2]
    y_n = (uv[..., 1] - cy) / fy
    x_n = (uv[..., 0] - cx - s * y_n) / fx
    cam = xp.stack([x_n * depth, y_n * depth, depth], axis=-1)
    return camera_to_world(cam, camera.extrinsics)


def in_front(depth, near: float = 1e-3):
    """(F, N) bool: points at least `near` in front of the camera."""
    return depth > near


def in_image(uv, image_size: tuple[int, int]):
    """(F, N) bool: pixel positions inside [-0.5, W-0.5] x [-0.5, H-0.5]."""
    H, W = image_size
    return (uv[..., 0] >= -0.5) & (uv[..., 0] <= W - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] <= H - 0.5)


def pixels_to_grid(uv, image_size: tuple[int, int]):
    """Pixels (..., 2) -> normalised grid units in [-1, 1] (align_corners=False)."""
    xp = xp_of(uv)
    H, W = image_size
    scale = xp.asarray([2.0 / W, 2.0 / H], dtype=uv.dtype)
    return (uv + 0.5) * scale - 1.0


def grid_to_pixels(grid, image_size: tuple[int, int]):
    """Normalised grid units (..., 2) -> pixels; inverse of `pixels_to_grid`."""
    xp = xp_of(grid)
    H, W = image_size
    scale = xp.asarray([W / 2.0, H / 2.0], dtype=grid.dtype)
    return (grid + 1.0) * scale - 0.5
