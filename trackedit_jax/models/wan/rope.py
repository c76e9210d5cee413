"""3D rotary position embedding of Wan 2.1.

Each attention head of width d is split into a frame part of d - 4*(d//6) channels and row / column
parts of 2*(d//6) channels each; channel pairs (2i, 2i+1) of a part are rotated by
position * theta^(-2i / part_width) along that part's axis (frame, row or column).

The angle tables are computed once in float64 numpy and rounded to float32 (exactly what the
reference does), then gathered by integer positions, so positions may be traced values (e.g. target
frames placed after the source frames) without losing precision to float32 angle arithmetic.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def axis_widths(head_dim: int) -> tuple[int, int, int]:
    """Channels of a head given to (frame, row, column)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


@functools.lru_cache(maxsize=16)
def _tables(head_dim: int, max_len: int, theta: float) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Per axis: (cos, sin) float32 tables of shape (max_len, width // 2)."""
    out = []
    for width in axis_widths(head_dim):
        inv_freq = 1.0 / theta ** (np.arange(0, width, 2, dtype=np.float64) / width)
        angles = np.outer(np.arange(max_len, dtype=np.float64), inv_freq)
        out.append((np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)))
    return tuple(out)


def grid_positions(frames: int, height: int, width: int, frame_offset: int = 0) -> np.ndarray:
    """(frames*height*width, 3) int32 (frame, row, col) of a token grid in row-major (f, h, w) order,
    frames numbered from `frame_offset` (the order `WanDiT.patchify` emits tokens in)."""
    if min(frames, height, width) < 1 or frame_offset < 0:
        raise ValueError(
            f"grid sizes must be positive and frame_offset >= 0; got {(frames, height, width)}, {frame_offset}"
        )
    f, h, w = np.meshgrid(np.arange(frames) + frame_offset, np.arange(height), np.arange(width), indexing="ij")
    return np.stack([f.ravel(), h.ravel(), w.ravel()], axis=-1).astype(np.int32)


def rope_frequencies(
    positions, head_dim: int, max_len: int = 1024, theta: float = 10000.0
) -> tuple[jax.Array, jax.Array]:
    """cos and sin, each (L, head_dim // 2) float32, for integer positions (L, 3) = (frame, row, col).

    Concrete (numpy) positions are range-checked; traced positions outside [0, max_len) give NaN.
    """
    if isinstance(positions, np.ndarray) or not isinstance(positions, jax.core.Tracer):
        pos_np = np.asarray(positions)
        if pos_np.ndim != 2 or pos_np.shape[1] != 3:
            raise ValueError(f"positions must be (L, 3) integer (frame, row, col); got shape {pos_np.shape}")
        if pos_np.size and (pos_np.min() < 0 or pos_np.max() >= max_len):
            raise ValueError(
                f"RoPE positions must lie in [0, {max_len}) (rope_max_seq_len); "
                f"got range [{pos_np.min()}, {pos_np.max()}]"
            )
    elif positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must be (L, 3) integer (frame, row, col); got shape {positions.shape}")
    positions = jnp.asarray(positions, jnp.int32)
    cos, sin = [], []
    for axis, (c, s) in enumerate(_tables(head_dim, max_len, float(theta))):
        idx = positions[:, axis]
        cos.append(jnp.take(jnp.asarray(c), idx, axis=0, mode="fill", fill_value=jnp.nan))
        sin.append(jnp.take(jnp.asarray(s), idx, axis=0, mode="fill", fill_value=jnp.nan))
    return jnp.concatenate(cos, axis=-1), jnp.concatenate(sin, axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate channel pairs of x (B, L, H, D) by the angles of cos, sin (L, D // 2); float32 maths,
    result in x.dtype."""
    dtype = x.dtype
    x = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    x0, x1 = x[..., 0], x[..., 1]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out.reshape(out.shape[:-2] + (-1,)).astype(dtype)
