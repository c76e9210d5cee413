"""Analytic ray casting of the primitives a synthetic scene is made of (numpy, vectorised).

Primitive kinds and their local (object-space) geometry:
  SPHERE    |p| = size[0]
  BOX       |p_i| <= size[i] (half extents)
  CYLINDER  p_x^2 + p_y^2 <= size[0]^2, |p_z| <= size[2] (axis = local z)
  GROUND    the plane z = 0 (world = local); solid below
  DOME      the inside of the sphere |p| = size[0] (world = local); rays from inside hit its far side
Each primitive is placed per frame by a similarity transform x = s R p + t (`Sim`). Rays are
x(t) = o + t d with d not normalised; the parameter t is the same in world and local space.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPHERE, BOX, CYLINDER, GROUND, DOME = 0, 1, 2, 3, 4
KIND_NAMES = {SPHERE: "sphere", BOX: "box", CYLINDER: "cylinder", GROUND: "ground", DOME: "dome"}


@dataclasses.dataclass(frozen=True)
class Sim:
    """Per-frame similarity transforms x = s R p + t: R (F, 3, 3), t (F, 3), s (F,)."""

    R: np.ndarray
    t: np.ndarray
    s: np.ndarray

    @staticmethod
    def identity(F: int) -> Sim:
        return Sim(np.broadcast_to(np.eye(3), (F, 3, 3)).copy(), np.zeros((F, 3)), np.ones(F))

    @staticmethod
    def translation(t: np.ndarray) -> Sim:
        t = np.asarray(t, np.float64)
        F = t.shape[0]
        return Sim(np.broadcast_to(np.eye(3), (F, 3, 3)).copy(), t, np.ones(F))

    @staticmethod
    def rotation(R: np.ndarray) -> Sim:
        R = np.asarray(R, np.float64)
        F = R.shape[0]
        return Sim(R, np.zeros((F, 3)), np.ones(F))

    @staticmethod
    def scale(s: np.ndarray) -> Sim:
        s = np.asarray(s, np.float64)
        F = s.shape[0]
        return Sim(np.broadcast_to(np.eye(3), (F, 3, 3)).copy(), np.zeros((F, 3)), s)

    def __matmul__(self, other: Sim) -> Sim:
        R = np.einsum("fij,fjk->fik", self.R, other.R)
        t = self.s[:, None] * np.einsum("fij,fj->fi", self.R, other.t) + self.t
        return Sim(R, t, self.s * other.s)

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Local points p (N, 3) or (F, N, 3) -> world (F, N, 3)."""
        p = np.asarray(p, np.float64)
        if p.ndim == 2:
            return self.s[:, None, None] * np.einsum("fij,nj->fni", self.R, p) + self.t[:, None, :]
        return self.s[:, None, None] * np.einsum("fij,fnj->fni", self.R, p) + self.t[:, None, :]

    def inverse_apply(self, x: np.ndarray) -> np.ndarray:
        """World points x (F, N, 3) -> local (F, N, 3)."""
        return np.einsum("fji,fnj->fni", self.R, x - self.t[:, None, :]) / self.s[:, None, None]

    def matrices(self) -> np.ndarray:
        """(F, 4, 4) homogeneous matrices."""
        F = self.R.shape[0]
        M = np.zeros((F, 4, 4))
        M[:, :3, :3] = self.s[:, None, None] * self.R
        M[:, :3, 3] = self.t
        M[:, 3, 3] = 1
        return M

    def take(self, idx) -> Sim:
        return Sim(self.R[idx], self.t[idx], self.s[idx])


def rotation_matrix(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues: unit axis (3,) or (F, 3), angles (F,) -> (F, 3, 3)."""
    angle = np.asarray(angle, np.float64)
    axis = np.broadcast_to(np.asarray(axis, np.float64), angle.shape + (3,))
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    c, s = np.cos(angle), np.sin(angle)
    C = 1 - c
    return np.stack(
        [
            np.stack([c + x * x * C, x * y * C - z * s, x * z * C + y * s], -1),
            np.stack([y * x * C + z * s, c + y * y * C, y * z * C - x * s], -1),
            np.stack([z * x * C - y * s, z * y * C + x * s, c + z * z * C], -1),
        ],
        -2,
    )


def bounding_radius(kind: int, size: np.ndarray) -> float:
    """Radius of a sphere around the local origin containing the primitive (inf for ground/dome)."""
    if kind == SPHERE:
        return float(size[0])
    if kind == BOX:
        return float(np.linalg.norm(size))
    if kind == CYLINDER:
        return float(np.hypot(size[0], size[2]))
    return float("inf")


def _dot(a, b):
    return np.sum(a * b, axis=-1)


def intersect(kind: int, size: np.ndarray, o: np.ndarray, d: np.ndarray, t_min: float):
    """First hit with t > t_min of rays o + t d (local coordinates; o broadcastable to d, (..., 3)).

    Returns:
      t: (...) hit parameter, inf where the ray misses.
      n: (..., 3) unit local normal at the hit (pointing towards the ray's origin side).
    """
    dt = d.dtype
    inf = np.asarray(np.inf, dt)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind in (SPHERE, DOME):
            r = dt.type(size[0])
            a = _dot(d, d)
            b = _dot(o, d)
            c = _dot(o, o) - r * r
            disc = b * b - a * c
            sq = np.sqrt(np.maximum(disc, 0))
            t0, t1 = (-b - sq) / a, (-b + sq) / a
            if kind == SPHERE:
                t = np.where(t0 > t_min, t0, np.where(t1 > t_min, t1, inf))
            else:
                t = np.where(t1 > t_min, t1, inf)
            t = np.where(disc >= 0, t, inf)
            p = o + np.where(np.isfinite(t), t, 0)[..., None] * d
            n = p / r if kind == SPHERE else -p / r
            return t, n
        if kind == GROUND:
            t = -o[..., 2] / d[..., 2]
            t = np.where((t > t_min) & np.isfinite(t), t, inf)
            n = np.zeros(np.broadcast_shapes(o.shape, d.shape), dt)
            n[..., 2] = 1
            return t, n
        if kind == BOX:
            h = np.asarray(size, dt)
            dd = np.where(d == 0, dt.type(1e-30), d)
            inv = 1.0 / dd
            ta, tb = (-h - o) * inv, (h - o) * inv
            tn = np.max(np.minimum(ta, tb), axis=-1)
            tf = np.min(np.maximum(ta, tb), axis=-1)
            hit = (tf >= tn) & (tf > t_min)
            t = np.where(hit, np.where(tn > t_min, tn, tf), inf)
            p = o + np.where(np.isfinite(t), t, 0)[..., None] * d
            q = np.abs(p) / h
            ax = np.argmax(q, axis=-1)
            n = np.zeros(p.shape, dt)
            np.put_along_axis(n, ax[..., None], np.take_along_axis(np.sign(p), ax[..., None], -1), -1)
            return t, n
        if kind == CYLINDER:
            r, hz = dt.type(size[0]), dt.type(size[2])
            a = d[..., 0] ** 2 + d[..., 1] ** 2
            b = o[..., 0] * d[..., 0] + o[..., 1] * d[..., 1]
            c = o[..., 0] ** 2 + o[..., 1] ** 2 - r * r
            disc = b * b - a * c
            sq = np.sqrt(np.maximum(disc, 0))
            t_best = np.full(np.broadcast_shapes(o.shape, d.shape)[:-1], np.inf, dt)
            for ts in ((-b - sq) / a, (-b + sq) / a):
                z = o[..., 2] + ts * d[..., 2]
                ok = (disc >= 0) & (a > 0) & (ts > t_min) & (np.abs(z) <= hz)
                t_best = np.where(ok & (ts < t_best), ts, t_best)
            for zc in (-hz, hz):
                tc = (zc - o[..., 2]) / d[..., 2]
                x = o[..., 0] + tc * d[..., 0]
                y = o[..., 1] + tc * d[..., 1]
                ok = np.isfinite(tc) & (tc > t_min) & (x * x + y * y <= r * r)
                t_best = np.where(ok & (tc < t_best), tc, t_best)
            p = o + np.where(np.isfinite(t_best), t_best, 0)[..., None] * d
            side = np.abs(np.abs(p[..., 2]) - hz) > 1e-4 * hz  # not on a cap
            n = np.zeros(p.shape, dt)
            rad = np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2)
            rad = np.where(rad > 0, rad, 1)
            n[..., 0] = np.where(side, p[..., 0] / rad, 0)
            n[..., 1] = np.where(side, p[..., 1] / rad, 0)
            n[..., 2] = np.where(side, 0, np.sign(p[..., 2]))
            return t_best, n
    raise ValueError(f"unknown primitive kind {kind}")


def inside(kind: int, size: np.ndarray, p: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(...) bool: local points strictly inside the solid (shrunk by `margin`). Used by tests as an
    occlusion check that does not share code with `intersect`."""
    if kind == SPHERE:
        return np.linalg.norm(p, axis=-1) < size[0] - margin
    if kind == BOX:
        return np.all(np.abs(p) < np.asarray(size) - margin, axis=-1)
    if kind == CYLINDER:
        return (np.hypot(p[..., 0], p[..., 1]) < size[0] - margin) & (np.abs(p[..., 2]) < size[2] - margin)
    if kind == GROUND:
        return p[..., 2] < -margin
    if kind == DOME:
        return np.linalg.norm(p, axis=-1) > size[0] + margin
    raise ValueError(f"unknown primitive kind {kind}")


def sample_surface(kind: int, size: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniformly (by area) on the primitive's surface, local coordinates (n, 3)."""
    if kind == SPHERE:
        v = rng.normal(size=(n, 3))
        return size[0] * v / np.linalg.norm(v, axis=-1, keepdims=True)
    if kind == BOX:
        h = np.asarray(size, np.float64)
        areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]] * 2)
        face = rng.choice(6, size=n, p=areas / areas.sum())
        p = rng.uniform(-1, 1, size=(n, 3)) * h
        ax = face % 3
        sign = np.where(face < 3, 1.0, -1.0)
        p[np.arange(n), ax] = sign * h[ax]
        return p
    if kind == CYLINDER:
        r, hz = float(size[0]), float(size[2])
        side_area, cap_area = 2 * np.pi * r * 2 * hz, np.pi * r * r
        part = rng.choice(3, size=n, p=np.array([side_area, cap_area, cap_area]) / (side_area + 2 * cap_area))
        phi = rng.uniform(0, 2 * np.pi, n)
        rad = np.where(part == 0, r, r * np.sqrt(rng.uniform(size=n)))
        z = np.where(part == 0, rng.uniform(-hz, hz, n), np.where(part == 1, hz, -hz))
        return np.stack([rad * np.cos(phi), rad * np.sin(phi), z], -1)
    raise ValueError(f"surface sampling is defined for objects only; got kind {kind}")


def snap_to_surface(kind: int, size: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Move local points p (N, 3) that lie (numerically) near the surface exactly onto it (float64).

    Track points come from the float32 raster; snapping makes them surface points of the analytic
    shape, so every frame's world position is exactly on the surface."""
    p = np.array(p, np.float64)
    if kind in (SPHERE, DOME):
        return p * (size[0] / np.linalg.norm(p, axis=-1, keepdims=True))
    if kind == GROUND:
        p[..., 2] = 0.0
        return p
    if kind == BOX:
        h = np.asarray(size, np.float64)
        ax = np.argmax(np.abs(p) / h, axis=-1)
        rows = np.arange(len(p))
        p[rows, ax] = np.sign(p[rows, ax]) * h[ax]
        return np.clip(p, -h, h)
    if kind == CYLINDER:
        r, hz = float(size[0]), float(size[2])
        rad = np.hypot(p[:, 0], p[:, 1])
        on_side = (np.abs(rad - r) / r) <= (np.abs(np.abs(p[:, 2]) - hz) / hz)
        scale = np.where(on_side, r / np.maximum(rad, 1e-300), np.minimum(1.0, r / np.maximum(rad, 1e-300)))
        p[:, 0] *= scale
        p[:, 1] *= scale
        p[:, 2] = np.where(on_side, np.clip(p[:, 2], -hz, hz), np.sign(p[:, 2]) * hz)
        return p
    raise ValueError(f"unknown primitive kind {kind}")
