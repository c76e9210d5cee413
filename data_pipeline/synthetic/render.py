"""Evaluate a scene over a clip's frames and render it by ray casting (numpy).

`evaluate_clip` turns a `Scene` into per-frame primitive poses and cameras (`ClipGeometry`).
`render_clip` casts one ray through every pixel centre (no anti-aliasing) and returns RGB, albedo,
camera-z depth, primitive id and the object-space hit point per pixel: an exact per-pixel depth buffer.
`cast_rays` casts arbitrary rays (float64), used for track visibility and by tests to render the
colour at an exact sub-pixel position.

Shading: Lambertian, colour = albedo * (ambient + (1 - ambient) * max(0, n . light)), one directional
light, no shadows. Textures are functions of the object-space point (see textures.py), so albedo is
identical for a surface point in every frame and both clips; only the shading factor changes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.synthetic.raycast import DOME, GROUND, Sim, bounding_radius, intersect
from data_pipeline.synthetic.scene import Scene, frame_times
from data_pipeline.synthetic.textures import Texture

NEAR = 1e-3  # rays start this far (camera z) in front of the camera
MAX_RAYS_PER_CHUNK = 1 << 20


@dataclasses.dataclass
class Prim:
    kind: int
    size: np.ndarray
    texture: Texture
    pose: Sim  # F frames, local -> world
    object_index: int  # -1 for ground/dome
    part_index: int
    local_radius: float  # bounding radius in local units (inf for ground/dome)


@dataclasses.dataclass
class ClipGeometry:
    """Everything needed to render one clip. prims[i] is None when primitive i is absent in this clip
    (e.g. the duplicate of an object exists only in the target)."""

    prims: list
    intrinsics: np.ndarray  # (F, 3, 3)
    rotations: np.ndarray  # (F, 3, 3) world-to-camera
    centers: np.ndarray  # (F, 3) camera centres
    image_size: tuple
    light_dir: np.ndarray
    ambient: float

    @property
    def num_frames(self) -> int:
        return int(self.centers.shape[0])

    def extrinsics(self) -> np.ndarray:
        """(F, 4, 4) world-to-camera."""
        F = self.num_frames
        E = np.zeros((F, 4, 4))
        E[:, :3, :3] = self.rotations
        E[:, :3, 3] = -np.einsum("fij,fj->fi", self.rotations, self.centers)
        E[:, 3, 3] = 1
        return E


def _offscreen_translation(obj, s, centers, rotations, K, image_size, radius: float) -> np.ndarray:
    """Root positions (F, 3) that keep a sphere of `radius` around the root entirely outside every
    frame's view frustum: beside the right (or left) frustum plane at the object's usual depth."""
    H, W = image_size
    tan_a = W / (2.0 * K[:, 0, 0])  # half-width of the view at z = 1 (pixel edges)
    cos_a = 1.0 / np.sqrt(1.0 + tan_a**2)
    usual = obj.replace(removed=False).path(s)
    depth = np.clip(np.einsum("fij,fj->fi", rotations, usual - centers)[:, 2], 2.0, 12.0)
    side = 1.0 if obj.removal_side >= 0 else -1.0
    x = side * (depth * tan_a + (radius + 0.5) / cos_a)
    cam = np.stack([x, np.zeros_like(x), depth], -1)
    return centers + np.einsum("fji,fj->fi", rotations, cam)


def evaluate_clip(scene: Scene, num_frames: int, image_size: tuple, num_prims: int | None = None) -> ClipGeometry:
    """Per-frame poses of every primitive and the camera of `scene` over `num_frames` frames.

    num_prims: total primitive count of the pair (the target may have extra duplicate objects);
      ids >= this scene's own count are None.
    """
    H, W = (int(v) for v in image_size)
    if H <= 0 or W <= 0:
        raise ValueError(f"image_size must be positive (H, W); got {image_size}")
    s = frame_times(num_frames)
    F = len(s)
    centers, rotations = scene.camera.centers_and_rotations(s)
    K = np.broadcast_to(scene.camera.intrinsics((H, W)), (F, 3, 3)).copy()
    prims: list = [
        Prim(GROUND, np.zeros(3), scene.ground_texture, Sim.identity(F), -1, 0, float("inf")),
        Prim(DOME, np.full(3, scene.dome_radius), scene.dome_texture, Sim.identity(F), -1, 1, float("inf")),
    ]
    for oi, obj in enumerate(scene.objects):
        root = obj.root_pose(s)
        if obj.removed:
            t = _offscreen_translation(obj, s, centers, rotations, K, (H, W), obj.bound_radius())
            root = Sim(root.R, t, root.s)
        for pi, (part, pose) in enumerate(zip(obj.parts, obj.part_poses(s, root))):
            prims.append(
                Prim(
                    part.kind,
                    np.asarray(part.size, np.float64),
                    part.texture,
                    pose,
                    oi,
                    pi,
                    bounding_radius(part.kind, part.size),
                )
            )
    if num_prims is not None:
        if num_prims < len(prims):
            raise ValueError(f"num_prims={num_prims} is smaller than the scene's {len(prims)} primitives")
        prims += [None] * (num_prims - len(prims))
    return ClipGeometry(prims, K, rotations, centers, (H, W), np.asarray(scene.light_dir, np.float64), scene.ambient)


# ----------------------------------------------------------------------------- arbitrary rays
def cast_rays(geom: ClipGeometry, origins: np.ndarray, dirs: np.ndarray, t_min: float = 1e-9):
    """First hit of rays origins + t dirs over all primitives, float64.

    Args:
      origins: (F, 1, 3) or (F, M, 3) world; dirs: (F, M, 3) world (not normalised).
    Returns:
      t (F, M) (inf = no hit), pid (F, M) int32 (-1 = none), local (F, M, 3) object-space hit points,
      normal (F, M, 3) world unit normals.
    """
    origins = np.asarray(origins, np.float64)
    dirs = np.asarray(dirs, np.float64)
    F, M = dirs.shape[:2]
    best_t = np.full((F, M), np.inf)
    pid = np.full((F, M), -1, np.int32)
    local = np.zeros((F, M, 3))
    normal = np.zeros((F, M, 3))
    for i, p in enumerate(geom.prims):
        if p is None:
            continue
        R, t, sc = p.pose.R, p.pose.t, p.pose.s
        # row vectors: local = (x - t) R / s  (i.e. R^T (x - t) / s)
        o = np.matmul(origins - t[:, None, :], R) / sc[:, None, None]
        d = np.matmul(dirs, R) / sc[:, None, None]
        th, n = intersect(p.kind, p.size, o, d, t_min)
        better = th < best_t
        if not better.any():
            continue
        best_t = np.where(better, th, best_t)
        pid = np.where(better, i, pid)
        hit = o + np.where(np.isfinite(th), th, 0)[..., None] * d
        local = np.where(better[..., None], hit, local)
        nw = np.matmul(n, np.swapaxes(R, 1, 2))
        normal = np.where(better[..., None], nw, normal)
    return best_t, pid, local, normal


def pixel_rays(geom: ClipGeometry, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rays through pixel positions uv (F, M, 2): origins (F, 1, 3), dirs (F, M, 3) scaled so
    that t equals the camera-space depth z."""
    uv = np.asarray(uv, np.float64)
    Kinv = np.linalg.inv(geom.intrinsics)
    hom = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], -1)
    d_cam = np.einsum("fij,fmj->fmi", Kinv, hom)
    d_cam = d_cam / d_cam[..., 2:3]
    d_world = np.einsum("fji,fmj->fmi", geom.rotations, d_cam)
    return geom.centers[:, None, :], d_world


def shade(geom: ClipGeometry, albedo: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Lambertian colour from albedo (..., 3) and world normals (..., 3)."""
    lam = np.clip(np.sum(normal * geom.light_dir.astype(normal.dtype), axis=-1), 0, None)
    return albedo * (geom.ambient + (1.0 - geom.ambient) * lam)[..., None]


def surface_colour(geom: ClipGeometry, pid: np.ndarray, local: np.ndarray, normal: np.ndarray | None = None):
    """Albedo (and shaded colour if normals are given) of object-space points on primitives pid."""
    shape = pid.shape
    pid_f = pid.reshape(-1)
    loc_f = local.reshape(-1, 3)
    albedo = np.zeros(loc_f.shape, local.dtype)
    order = np.argsort(pid_f, kind="stable")
    ids, starts = np.unique(pid_f[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    for i, a, b in zip(ids, starts, ends):
        if i < 0 or geom.prims[i] is None:
            continue
        sel = order[a:b]
        albedo[sel] = geom.prims[i].texture(loc_f[sel])
    albedo = albedo.reshape(shape + (3,))
    return albedo if normal is None else (albedo, shade(geom, albedo, normal))


# ----------------------------------------------------------------------------- raster
def _sphere_rect(center_cam: np.ndarray, r: float, K: np.ndarray, H: int, W: int):
    """Pixel rows/cols (r0, r1, c0, c1) (end-exclusive) that can see a sphere; None if none can."""
    x, y, z = center_cam
    if z + r <= NEAR:
        return None
    if z - r <= NEAR:
        return 0, H, 0, W
    corners = np.array([[x + a, y + b, z + c] for a in (-r, r) for b in (-r, r) for c in (-r, r)])
    u = (K[0, 0] * corners[:, 0] + K[0, 1] * corners[:, 1]) / corners[:, 2] + K[0, 2]
    v = K[1, 1] * corners[:, 1] / corners[:, 2] + K[1, 2]
    c0, c1 = int(np.floor(u.min())), int(np.ceil(u.max())) + 1
    r0, r1 = int(np.floor(v.min())), int(np.ceil(v.max())) + 1
    c0, c1, r0, r1 = max(c0, 0), min(c1, W), max(r0, 0), min(r1, H)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def render_clip(geom: ClipGeometry, dtype=np.float32) -> dict:
    """Render every frame.

    Returns a dict of
      rgb (F, H, W, 3) uint8 (shaded), albedo (F, H, W, 3) float in [0, 1] (unshaded),
      depth (F, H, W) camera z (dtype), pid (F, H, W) int16 primitive id (-1 = nothing),
      local (F, H, W, 3) object-space hit point (dtype), normal (F, H, W, 3) world normal.
    """
    H, W = geom.image_size
    F = geom.num_frames
    dt = np.dtype(dtype)
    ground, dome = geom.prims[0], geom.prims[1]
    if ground.kind != GROUND or dome.kind != DOME:
        raise ValueError("primitives 0 and 1 must be the ground and the dome")
    R_dome = dt.type(dome.size[0])
    jj, ii = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    pix = np.stack([jj, ii, np.ones_like(jj)], -1).reshape(1, H * W, 3)  # pixel centres (x = col, y = row)
    out = {
        "depth": np.empty((F, H, W), dt),
        "pid": np.empty((F, H, W), np.int16),
        "local": np.empty((F, H, W, 3), dt),
        "normal": np.empty((F, H, W, 3), dt),
        "albedo": np.empty((F, H, W, 3), dt),
        "rgb": np.empty((F, H, W, 3), np.uint8),
    }
    chunk = max(1, MAX_RAYS_PER_CHUNK // (H * W))
    for f0 in range(0, F, chunk):
        fs = slice(f0, min(F, f0 + chunk))
        Fc = fs.stop - fs.start
        Kinv = np.linalg.inv(geom.intrinsics[fs])
        # A maps a homogeneous pixel to the world ray direction with camera z = 1 (so t = depth)
        A = np.einsum("fji,fjk->fik", geom.rotations[fs], Kinv)
        dirs = np.matmul(pix, np.swapaxes(A, 1, 2)).reshape(Fc, H, W, 3).astype(dt)
        org = geom.centers[fs].astype(dt)[:, None, None, :]
        # background: the ground plane and the dome (local = world); every ray hits one of them
        t_g, _ = intersect(GROUND, ground.size, org, dirs, NEAR)
        t_d, _ = intersect(DOME, dome.size, org, dirs, NEAR)
        on_ground = t_g <= t_d
        depth = np.minimum(t_g, t_d)
        pidb = np.where(on_ground, 0, 1).astype(np.int16)
        localb = org + depth[..., None] * dirs
        normb = -localb / R_dome
        normb[on_ground] = (0, 0, 1)
        for k in range(Fc):
            f = fs.start + k
            Rc, c = geom.rotations[f], geom.centers[f]
            for i, p in enumerate(geom.prims):
                if p is None or not np.isfinite(p.local_radius):
                    continue
                R, t, sc = p.pose.R[f], p.pose.t[f], p.pose.s[f]
                rect = _sphere_rect(Rc @ (t - c), sc * p.local_radius * 1.001, geom.intrinsics[f], H, W)
                if rect is None:
                    continue
                r0, r1, c0, c1 = rect
                o_loc = (R.T @ (c - t) / sc).astype(dt)
                d_loc = dirs[k, r0:r1, c0:c1] @ (R / sc).astype(dt)
                th, n = intersect(p.kind, p.size, o_loc, d_loc, NEAR)
                dview = depth[k, r0:r1, c0:c1]
                better = th < dview
                if not better.any():
                    continue
                dview[better] = th[better]
                pidb[k, r0:r1, c0:c1][better] = i
                hit = o_loc + th[better][:, None] * d_loc[better]
                localb[k, r0:r1, c0:c1][better] = hit
                normb[k, r0:r1, c0:c1][better] = n[better] @ R.T.astype(dt)
        albedo = surface_colour(geom, pidb, localb)
        colour = shade(geom, albedo, normb)
        out["depth"][fs], out["pid"][fs], out["local"][fs], out["normal"][fs] = depth, pidb, localb, normb
        out["albedo"][fs] = albedo
        np.clip(colour * 255.0 + 0.5, 0, 255, out=colour)
        out["rgb"][fs] = colour.astype(np.uint8)
    return out
