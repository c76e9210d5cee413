"""`Camera` and `Tracks`: the one camera type and the one track type of the project.

Both are pytrees (they pass through `jax.jit`, `jax.vmap`, `jax.tree.map`) whose leaves may be
numpy or jax arrays. Conventions (ARCHITECTURE.md):
  * OpenCV camera axes: x right, y down, z forward.
  * `extrinsics` are world-to-camera (F, 4, 4); `intrinsics` are pixels (F, 3, 3).
  * Tracks are world coordinates (F, N, 3) with visibility (F, N) bool; point i of a source and a
    target track set is the same physical point.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _is_concrete(x: Any) -> bool:
    return isinstance(x, np.ndarray) or (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Camera:
    """Per-frame pinhole cameras.

    Attributes:
      intrinsics: (F, 3, 3) float, pixels: [[fx, s, cx], [0, fy, cy], [0, 0, 1]].
      extrinsics: (F, 4, 4) float, world-to-camera, OpenCV axes.
      image_size: (H, W) ints, the pixel grid the intrinsics refer to (static, not a leaf).
    """

    intrinsics: Any
    extrinsics: Any
    image_size: tuple[int, int] = dataclasses.field(metadata=dict(static=True), default=(0, 0))

    def __post_init__(self):
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        K, E = self.intrinsics, self.extrinsics
        if not (_is_array(K) and _is_array(E)):
            return  # a pytree transform is rebuilding the node with placeholders
        if K.ndim != 3 or K.shape[1:] != (3, 3):
            raise ValueError(f"Camera intrinsics must have shape (F, 3, 3); got {K.shape}")
        if E.ndim != 3 or E.shape[1:] != (4, 4):
            raise ValueError(f"Camera extrinsics must have shape (F, 4, 4); got {E.shape}")
        if K.shape[0] != E.shape[0]:
            raise ValueError(f"Camera intrinsics and extrinsics disagree on F: {K.shape[0]} vs {E.shape[0]}")
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"Camera image_size must be (H, W) with positive ints; got {self.image_size}")
        if _is_concrete(K) and _is_concrete(E):
            K_np, E_np = np.asarray(K), np.asarray(E)
            if not (np.isfinite(K_np).all() and np.isfinite(E_np).all()):
                raise ValueError("Camera intrinsics/extrinsics contain NaN or inf")
            det = np.linalg.det(E_np[:, :3, :3].astype(np.float64))
            bad = np.flatnonzero(np.abs(det) < 1e-8)
            if bad.size:
                raise ValueError(
                    f"Camera extrinsics are not invertible at frame(s) {bad[:8].tolist()} "
                    f"(det of rotation block {det[bad[0]]:.3g})"
                )

    @property
    def num_frames(self) -> int:
        return int(self.intrinsics.shape[0])

    def replace(self, **kw) -> Camera:
        return dataclasses.replace(self, **kw)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Tracks:
    """N 3D point tracks over F frames, in world coordinates.

    Attributes:
      xyz: (F, N, 3) float world coordinates.
      visibility: (F, N) bool, True where the point is visible in that frame.
      ids: optional (N,) int32: for each point, the index of the source point it came from
        (duplication appends points whose id is the original's); None means ``arange(N)``.
    """

    xyz: Any
    visibility: Any
    ids: Any = None

    def __post_init__(self):
        X, V = self.xyz, self.visibility
        if not (_is_array(X) and _is_array(V)):
            return
        if X.ndim != 3 or X.shape[-1] != 3:
            raise ValueError(f"Tracks xyz must have shape (F, N, 3); got {X.shape}")
        if V.shape != X.shape[:2]:
            raise ValueError(f"Tracks visibility must have shape (F, N) = {X.shape[:2]}; got {V.shape}")
        if X.shape[1] == 0:
            raise ValueError("Tracks need at least one point (N = 0)")
        if self.ids is not None and _is_array(self.ids) and self.ids.shape != (X.shape[1],):
            raise ValueError(f"Tracks ids must have shape (N,) = ({X.shape[1]},); got {self.ids.shape}")
        if _is_concrete(X) and not np.isfinite(np.asarray(X)).all():
            bad = np.argwhere(~np.isfinite(np.asarray(X)))[0]
            raise ValueError(f"Tracks xyz contain NaN or inf (first at frame {bad[0]}, point {bad[1]})")

    @property
    def num_frames(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.xyz.shape[1])

    def replace(self, **kw) -> Tracks:
        return dataclasses.replace(self, **kw)
