"""Model-input preprocessing of the 3D tracks (paper section 1.2), in jax.numpy so it jits and vmaps.

Source tracks are projected with the source camera and target tracks with the target camera; each
projected point becomes (x, y, z):

* (x, y): pixels mapped to normalised grid units with `pixels_to_grid` (align_corners=False: the
  image spans [-1, 1]), then clamped to [-xy_limit, xy_limit] (default 2, i.e. half an image width
  beyond each border). Points moved far off screen (removal edits) therefore reach the model pinned on
  that box with |x| or |y| > 1 and stay finite, whatever the projection gave.
* z: disparity (1 / camera depth) normalised to [0, 1] with ONE scale shared by source and target:

      d   = 1 / depth                                  for valid points
      lo  = P_lo(d), hi = P_hi(d)                      percentiles over the valid points of BOTH
                                                       sides on the f latent frames (default 2, 98)
      z   = clip((d - lo) / (hi - lo), 0, 1)           if hi - lo > 1e-6 * hi
      z   = 0.5                                        otherwise (no depth variation in the clip)

  so z = 1 is near and z = 0 is far; outliers beyond the percentiles saturate instead of squashing
  everyone else's range.
* Invalid points get the defined value (x, y, z) = (0, 0, 0) and False in the side's `valid` mask:
  padded points (`point_mask` False), points behind the camera (depth <= near) and points whose
  coordinates are not finite. No NaN or inf ever comes out, even when every point is invalid.

Temporal resampling: the Wan VAE maps F = 4k + 1 frames to f = k + 1 latent frames; latent frame 0
holds frame 0 and latent frame j > 0 covers frames 4j-3 .. 4j. We take the LAST frame of each group,
frame 4j, as its representative (nearest-neighbour resampling on the uniform grid linspace(0, F-1, f),
and the newest frame the causal encoder has seen for that latent frame).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trackedit_jax.geometry.projection import pixels_to_grid, project
from trackedit_jax.geometry.types import Camera, Tracks

VAE_TEMPORAL_STRIDE = 4
DEFAULT_PERCENTILES = (2.0, 98.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrackCondition:
    """Projected, normalised and resampled track pair, the track input of the model.

    Attributes:
      source: (f, N, 3) float32, (x, y) grid units in [-xy_limit, xy_limit], z normalised disparity.
      target: (f, N, 3) float32, same for the target tracks and camera.
      source_valid: (f, N) bool, False for padded points, points behind the source camera, non-finite.
      target_valid: (f, N) bool, the same for the target side.
      point_mask: (N,) bool, False for padding points.
    """

    source: Any
    target: Any
    source_valid: Any
    target_valid: Any
    point_mask: Any


def latent_frame_count(num_frames: int) -> int:
    """Latent frame count f of the Wan VAE for F = num_frames = 4k + 1 video frames (f = k + 1)."""
    num_frames = int(num_frames)
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL_STRIDE:
        raise ValueError(f"num_frames must be 4k+1 (1, 5, 9, ..., 81) for the Wan VAE; got F={num_frames}")
    return (num_frames - 1) // VAE_TEMPORAL_STRIDE + 1


def latent_frame_indices(num_frames: int) -> np.ndarray:
    """(f,) int32 indices of the video frame representing each latent frame: [0, 4, 8, ..., F-1].

    Latent frame 0 is frame 0; latent frame j > 0 covers frames 4j-3 .. 4j and is represented by its
    last frame 4j. Static (numpy), so it can index inside jit.
    """
    f = latent_frame_count(num_frames)
    return (np.arange(f) * VAE_TEMPORAL_STRIDE).astype(np.int32)


def resample_to_latent_frames(x, num_frames: int | None = None, axis: int = 0):
    """Nearest-neighbour resampling of an array with F = 4k+1 frames on `axis` to its f latent frames."""
    F = x.shape[axis] if num_frames is None else num_frames
    if x.shape[axis] != F:
        raise ValueError(f"x has {x.shape[axis]} frames on axis {axis}; expected {F}")
    idx = latent_frame_indices(F)
    return jnp.take(x, idx, axis=axis) if isinstance(x, jax.Array) else np.take(x, idx, axis=axis)


def masked_quantile(values, mask, q: float, default: float = 0.0):
    """Quantile q in [0, 1] of `values[mask]` (linear interpolation, like np.quantile); jit-safe.

    Args:
      values: any shape, float. mask: same shape, bool. q: python float.
      default: returned when the mask selects nothing.
    Returns:
      a float32 scalar; never NaN.
    """
    v = jnp.ravel(jnp.asarray(values, jnp.float32))
    m = jnp.ravel(jnp.asarray(mask, bool)) & jnp.isfinite(v)
    srt = jnp.sort(jnp.where(m, v, jnp.inf))  # valid values first, in order
    n = jnp.sum(m)
    pos = q * (jnp.maximum(n, 1) - 1).astype(jnp.float32)
    i0 = jnp.floor(pos).astype(jnp.int32)
    i1 = jnp.minimum(i0 + 1, jnp.maximum(n, 1) - 1)
    frac = pos - i0.astype(jnp.float32)
    a = jnp.where(n > 0, srt[i0], 0.0)
    b = jnp.where(n > 0, srt[i1], 0.0)
    return jnp.where(n > 0, a + (b - a) * frac, jnp.float32(default))


def disparity_range(
    depths: Sequence[Any],
    valids: Sequence[Any],
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
):
    """Shared disparity range (lo, hi) over the valid points of several depth arrays.

    Args:
      depths: arrays of camera depth (any shapes), e.g. [source (f, N), target (f, N)].
      valids: bool arrays of the same shapes; only True entries count.
      percentiles: (p_lo, p_hi) in [0, 100].
    Returns:
      (lo, hi) float32 scalars: the percentiles of 1/depth over all valid entries; (0, 0) if none.
    """
    p_lo, p_hi = percentiles
    if not 0.0 <= p_lo <= p_hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lo <= hi <= 100; got {percentiles}")
    d = jnp.concatenate([jnp.ravel(1.0 / jnp.where(v, z, 1.0)) for z, v in zip(depths, valids)])
    m = jnp.concatenate([jnp.ravel(v) for v in valids])
    return masked_quantile(d, m, p_lo / 100.0), masked_quantile(d, m, p_hi / 100.0)


def normalize_disparity(depth, valid, lo, hi):
    """Camera depth (any shape) -> z in [0, 1] (1 = near) given the shared disparity range (lo, hi).

    z = clip((1/depth - lo) / (hi - lo), 0, 1); 0.5 when hi - lo <= 1e-6 * hi; 0 where not `valid`.
    """
    d = 1.0 / jnp.where(valid, depth, 1.0)
    span = hi - lo
    flat = span <= 1e-6 * jnp.abs(hi)
    z = jnp.clip((d - lo) / jnp.where(flat, 1.0, span), 0.0, 1.0)
    z = jnp.where(flat, 0.5, z)
    return jnp.where(valid, z, 0.0).astype(jnp.float32)


def _xyz_of(tracks) -> jax.Array:
    xyz = tracks.xyz if isinstance(tracks, Tracks) else tracks
    return jnp.asarray(xyz, jnp.float32)


def _project_side(xyz, camera: Camera, point_mask, near: float, xy_limit: float):
    cam = camera
    finite = jnp.all(jnp.isfinite(xyz), axis=-1)
    xyz = jnp.where(finite[..., None], xyz, 0.0)
    uv, depth = project(xyz, cam)
    valid = point_mask[None, :] & finite & (depth > near)
    grid = pixels_to_grid(uv, camera.image_size)
    grid = jnp.clip(jnp.nan_to_num(grid, nan=0.0, posinf=xy_limit, neginf=-xy_limit), -xy_limit, xy_limit)
    grid = jnp.where(valid[..., None], grid, 0.0)
    return grid, depth, valid


def prepare_track_condition(
    source_tracks,
    source_camera: Camera,
    target_tracks,
    target_camera: Camera,
    *,
    num_latent_frames: int | None = None,
    point_mask=None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    near: float = 1e-3,
    xy_limit: float = 2.0,
) -> TrackCondition:
    """Project, resample and normalise a source/target track pair for the model (module docstring).

    Args:
      source_tracks, target_tracks: `Tracks` or world xyz arrays (F, N, 3); point i is the same physical
        point on both sides. F = 4k + 1.
      source_camera, target_camera: `Camera` with F frames; both must share image_size (the video grid).
      num_latent_frames: f; must equal (F - 1) / 4 + 1 when given (a consistency check).
      point_mask: optional (N,) bool, False for padding points (their values never influence others').
      percentiles: disparity percentiles defining the shared [0, 1] range.
      near: points with camera depth <= near are invalid ("behind the camera").
      xy_limit: grid coordinates are clamped to [-xy_limit, xy_limit].
    Returns:
      `TrackCondition` with source/target (f, N, 3) float32, *_valid (f, N) bool, point_mask (N,) bool.
    Works eagerly, under `jax.jit` (image_size and F are static) and under `jax.vmap` (map over a batch
    with `prepare_track_condition_batch`).
    """
    src, tgt = _xyz_of(source_tracks), _xyz_of(target_tracks)
    if src.ndim != 3 or src.shape[-1] != 3:
        raise ValueError(f"source_tracks must have shape (F, N, 3); got {src.shape}")
    if tgt.shape != src.shape:
        raise ValueError(f"target_tracks must have the source's shape {src.shape}; got {tgt.shape}")
    F, N = src.shape[:2]
    if N == 0:
        raise ValueError("source_tracks have N = 0 points; at least one is needed")
    f = latent_frame_count(F)
    if num_latent_frames is not None and int(num_latent_frames) != f:
        raise ValueError(f"num_latent_frames={num_latent_frames} does not match F={F} (expected f={f})")
    for name, cam in (("source_camera", source_camera), ("target_camera", target_camera)):
        if cam.intrinsics.shape[0] != F:
            raise ValueError(f"{name} has F={cam.intrinsics.shape[0]} frames but the tracks have F={F}")
    if tuple(source_camera.image_size) != tuple(target_camera.image_size):
        raise ValueError(
            f"source and target cameras must share image_size; got {source_camera.image_size} "
            f"and {target_camera.image_size}"
        )
    if point_mask is None:
        point_mask = jnp.ones((N,), bool)
    point_mask = jnp.asarray(point_mask)
    if point_mask.shape != (N,):
        raise ValueError(f"point_mask must have shape (N,) = ({N},); got {point_mask.shape}")
    point_mask = point_mask.astype(bool)

    return _prepare(
        src,
        jnp.asarray(source_camera.intrinsics, jnp.float32),
        jnp.asarray(source_camera.extrinsics, jnp.float32),
        tgt,
        jnp.asarray(target_camera.intrinsics, jnp.float32),
        jnp.asarray(target_camera.extrinsics, jnp.float32),
        point_mask,
        image_size=tuple(source_camera.image_size),
        percentiles=tuple(float(p) for p in percentiles),
        near=float(near),
        xy_limit=float(xy_limit),
    )


@functools.partial(jax.jit, static_argnames=("image_size", "percentiles", "near", "xy_limit"))
def _prepare(src, K_s, E_s, tgt, K_t, E_t, point_mask, *, image_size, percentiles, near, xy_limit):
    # One compiled program (also when called eagerly); nested inside the caller's jit/vmap otherwise.
    idx = latent_frame_indices(src.shape[0])

    def side(xyz, K, E):
        return _project_side(xyz[idx], Camera(K[idx], E[idx], image_size), point_mask, near, xy_limit)

    g_src, z_src, v_src = side(src, K_s, E_s)
    g_tgt, z_tgt, v_tgt = side(tgt, K_t, E_t)
    lo, hi = disparity_range([z_src, z_tgt], [v_src, v_tgt], percentiles)
    n_src = normalize_disparity(z_src, v_src, lo, hi)
    n_tgt = normalize_disparity(z_tgt, v_tgt, lo, hi)
    return TrackCondition(
        source=jnp.concatenate([g_src, n_src[..., None]], axis=-1).astype(jnp.float32),
        target=jnp.concatenate([g_tgt, n_tgt[..., None]], axis=-1).astype(jnp.float32),
        source_valid=v_src,
        target_valid=v_tgt,
        point_mask=point_mask,
    )


def prepare_track_condition_batch(
    source_xyz,
    source_intrinsics,
    source_extrinsics,
    target_xyz,
    target_intrinsics,
    target_extrinsics,
    *,
    image_size: tuple[int, int],
    point_mask=None,
    **kwargs,
) -> TrackCondition:
    """`prepare_track_condition` vmapped over a leading batch axis B (for the train step).

    Args:
      *_xyz: (B, F, N, 3); *_intrinsics: (B, F, 3, 3); *_extrinsics: (B, F, 4, 4); image_size (H, W)
      shared by the batch; point_mask: (B, N) bool or None; kwargs: as `prepare_track_condition`.
    Returns:
      `TrackCondition` whose leaves carry the leading batch axis B.
    """
    B, F, N = source_xyz.shape[:3]
    if point_mask is None:
        point_mask = jnp.ones((B, N), bool)

    def one(sx, sk, se, tx, tk, te, m):
        return prepare_track_condition(
            sx, Camera(sk, se, image_size), tx, Camera(tk, te, image_size), point_mask=m, **kwargs
        )

    return jax.vmap(one)(
        jnp.asarray(source_xyz),
        jnp.asarray(source_intrinsics),
        jnp.asarray(source_extrinsics),
        jnp.asarray(target_xyz),
        jnp.asarray(target_intrinsics),
        jnp.asarray(target_extrinsics),
        jnp.asarray(point_mask),
    )
