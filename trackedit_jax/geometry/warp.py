"""The classical baseline: move every source pixel with the 3D motion of the tracks around it.

For each target frame f:
  1. lift every pixel of source frame f to a world point with the source depth (or, without depth,
     with the depth of the nearest visible source track on screen);
  2. its displacement is the inverse-distance-weighted mean of the displacements
     target_xyz[f, k] - source_xyz[f, ids[k]] of its K nearest source tracks (in 3D with depth, on screen
     without); a pixel whose neighbours were duplicated is drawn a second time with their copies'
     displacements (mostly-duplicated neighbourhoods only);
  3. project the moved points into the target camera and splat them, nearest depth wins, each point
     covering the pixels of its bilinear footprint; a pixel reads its colour bilinearly from the source
     frame, at its point's source pixel plus the pixel's offset from the point mapped back through the
     local inverse Jacobian (at most half a pixel), so rounding points to pixels does not shift texture;
  4. pixels nothing landed on are filled from the other source frames, nearest in time first: a pixel
     of source frame s moves by target_xyz[f, k] - source_xyz[s, ids[k]] of its neighbours at time s
     (what an object uncovers at frame f is often in view at another time, as is what the camera
     turns towards);
  5. what is still empty is filled with OpenCV inpainting (Telea).
"""

from __future__ import annotations

import numpy as np

from trackedit_jax.geometry.projection import project, unproject
from trackedit_jax.geometry.types import Camera, Tracks

# where a warped pixel's colour came from (`warp_video(return_coverage=True)`)
COVERED, FROM_OTHER_FRAME, INPAINTED = 0, 1, 2
# `warp_video(return_displacement=True)` counts in eighths of a pixel; 255 (31.9 px) saturates: beyond a
# few object sizes at 64x64 the distance no longer tells one edit from another
DISPLACEMENT_STEPS_PER_PIXEL = 8


def _pixel_grid(H: int, W: int) -> np.ndarray:
    ys, xs = np.mgrid[0:H, 0:W]
    return np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)


def _idw(dist: np.ndarray, eps: float) -> np.ndarray:
    w = 1.0 / np.maximum(dist, eps) ** 2
    return w / w.sum(axis=-1, keepdims=True)


def _splat(
    uv: np.ndarray, z: np.ndarray, src_xy: np.ndarray, jinv: np.ndarray, zbuf: np.ndarray, coords: np.ndarray
) -> None:
    """Nearest-depth splat of points into zbuf (H, W) and coords (H, W, 2) in place.

    A point (uv (n, 2) target pixel position, z (n,) depth) lands on its nearest pixel; pixels left empty
    then take the nearest point whose bilinear footprint covers them (so magnified surfaces do not crack).
    A pixel records where in the source frame its colour is to be read: the point's source pixel src_xy
    (n, 2) moved by jinv (n, 2, 2) (the inverse of the source-to-target Jacobian) times the pixel's offset
    from the point, at most a pixel each way: rounding a point to a pixel no longer shifts the texture.
    """
    H, W = zbuf.shape
    flat_z, flat_xy = zbuf.reshape(-1), coords.reshape(-1, 2)

    def put(x, y):
        ok = (x >= 0) & (x < W) & (y >= 0) & (y < H) & (z > 1e-3)
        pts = np.flatnonzero(ok)
        pts = pts[np.argsort(-z[pts], kind="stable")]  # far first: nearer points overwrite
        idx = y[pts] * W + x[pts]
        keep = z[pts] < flat_z[idx]
        idx, pts = idx[keep], pts[keep]
        # with repeated pixels numpy keeps the last write: the nearest point
        flat_z[idx] = z[pts]
        offset = np.stack([x[pts], y[pts]], -1) - uv[pts]
        step = np.clip(np.einsum("nij,nj->ni", jinv[pts], offset), -0.5, 0.5)
        flat_xy[idx] = src_xy[pts] + step

    near = np.round(uv).astype(np.int64)
    saved_z, saved_xy = flat_z.copy(), flat_xy.copy()
    put(near[:, 0], near[:, 1])
    empty_before = flat_z == np.inf
    base = np.floor(uv).astype(np.int64)
    near_z, near_xy = flat_z.copy(), flat_xy.copy()
    flat_z[:], flat_xy[:] = saved_z, saved_xy
    for dy in (0, 1):
        for dx in (0, 1):
            put(base[:, 0] + dx, base[:, 1] + dy)
    fill_z, fill_xy = flat_z.copy(), flat_xy.copy()
    flat_z[:], flat_xy[:] = near_z, near_xy
    flat_z[empty_before] = fill_z[empty_before]
    flat_xy[empty_before] = fill_xy[empty_before]


def _inverse_jacobians(uv: np.ndarray, H: int, W: int) -> np.ndarray:
    """(H*W, 2, 2): per source pixel, the inverse of d(target uv)/d(source xy) by finite differences of
    uv (H*W, 2) over the pixel grid; the identity where the map folds or tears (|det| outside [1/8, 8])."""
    grid = uv.reshape(H, W, 2)
    dx = np.gradient(grid, axis=1)
    dy = np.gradient(grid, axis=0)
    jac = np.stack([dx, dy], -1).reshape(-1, 2, 2)  # columns: d uv / dx, d uv / dy
    det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
    good = np.isfinite(det) & (det > 0.25) & (det < 4.0)
    inv = np.empty_like(jac)
    d = np.where(good, det, 1.0)
    inv[:, 0, 0], inv[:, 1, 1] = jac[:, 1, 1] / d, jac[:, 0, 0] / d
    inv[:, 0, 1], inv[:, 1, 0] = -jac[:, 0, 1] / d, -jac[:, 1, 0] / d
    inv[~good] = 0.0
    return inv


class _Lifted:
    """Source frame s lifted to 3D, with each pixel's K nearest source tracks and their weights."""

    def __init__(self, s, xs_src, uv_s, z_s, visibility, src_cam, cand, pix, source_depth, neighbours):
        from scipy.sparse import csr_matrix
        from scipy.spatial import cKDTree

        self.empty = True
        cam_s = Camera(src_cam.intrinsics[s : s + 1], src_cam.extrinsics[s : s + 1], src_cam.image_size)
        vis = np.asarray(visibility[s], bool) & (z_s[s] > 1e-3)
        if source_depth is not None:
            depth = np.asarray(source_depth[s], np.float64).reshape(-1)
        else:  # the nearest visible track on screen gives each pixel its depth
            pool = np.flatnonzero(vis) if vis.any() else np.flatnonzero(z_s[s] > 1e-3)
            if len(pool) == 0:
                return
            _, nn = cKDTree(uv_s[s, pool]).query(pix, k=1)
            depth = z_s[s, pool[nn]]
        if len(cand) == 0:
            return
        self.ok = np.isfinite(depth) & (depth > 1e-3)  # pixels that see nothing are left to the fill
        depth = np.where(self.ok, depth, 1.0)
        self.world = unproject(pix[None], depth[None], cam_s)[0]  # (H*W, 3)
        k = min(neighbours, len(cand))
        if source_depth is not None:
            dist, nn = cKDTree(xs_src[s, cand]).query(self.world, k=k)
            scale = 1e-3 * max(1.0, float(np.median(depth)))
        else:
            dist, nn = cKDTree(uv_s[s, cand]).query(pix, k=k)
            scale = 0.5
        dist, nn = dist.reshape(len(pix), k), nn.reshape(len(pix), k)
        self.w = _idw(dist, scale)
        self.nb = cand[nn]  # (P, k) source point indices
        # the weighted mean over neighbours as a sparse (P, N) matrix: one product per displacement field
        self.mix = csr_matrix(
            (self.w.ravel(), self.nb.ravel(), np.arange(0, len(pix) * k + 1, k)), (len(pix), len(xs_src[s]))
        )
        self.xs = xs_src[s]
        self.empty = False

    def moved(self, target_xyz: np.ndarray) -> np.ndarray:
        """(P, 3) world points moved by their neighbours' displacements to `target_xyz` (N, 3) (per source
        point)."""
        return self.world + self.mix @ (target_xyz - self.xs)


def warp_video(
    video: np.ndarray,
    source_tracks: Tracks,
    source_camera: Camera,
    target_tracks: Tracks,
    target_camera: Camera,
    *,
    source_depth: np.ndarray | None = None,
    neighbours: int = 4,
    inpaint_radius: int = 3,
    temporal_fill: bool = True,
    return_coverage: bool = False,
    return_displacement: bool = False,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """The warp baseline (module docstring).

    Args:
      video: (F, H, W, 3) uint8 source frames; cameras must have image_size (H, W).
      source_tracks, target_tracks: paired tracks (target point k pairs with source point ids[k]).
      source_depth: optional (F, H, W) camera-z depth of the source frames.
      temporal_fill: fill empty pixels from the other source frames before inpainting (step 4).
      return_coverage: also return where each pixel came from.
      return_displacement: also return how far each pixel of the source frame moves.
    Returns:
      (F, H, W, 3) uint8 target frames; with return_coverage then (F, H, W) uint8 coverage: COVERED (0)
      where frame f's own pixels landed, FROM_OTHER_FRAME (1) where another source frame filled the
      pixel, INPAINTED (2) where only inpainting did; with return_displacement then (F, H, W) uint8: the
      distance from each pixel of source frame f to where step 3 puts it in target frame f, in
      DISPLACEMENT_STEPS_PER_PIXEL steps a pixel, 255 at 31.9 px or more or behind the target camera, 0
      where the source pixel sees nothing (no depth). Where it is small the source clip is still right;
      where it is large the source shows something that has moved away.
    """
    import cv2

    video = np.asarray(video)
    F, H, W, _ = video.shape
    xs_src = np.asarray(source_tracks.xyz, np.float64)
    xs_tgt = np.asarray(target_tracks.xyz, np.float64)
    ids = np.arange(xs_tgt.shape[1]) if target_tracks.ids is None else np.asarray(target_tracks.ids)
    first = np.zeros(len(ids), bool)
    first[np.unique(ids, return_index=True)[1]] = True
    # per source point: its primary target point, and its copies (duplication)
    primary = np.full(xs_src.shape[1], -1)
    primary[ids[first]] = np.flatnonzero(first)
    copy_of: dict[int, list[int]] = {}
    for k in np.flatnonzero(~first):
        copy_of.setdefault(int(ids[k]), []).append(int(k))
    # copy_ranks[r]: per source point, the target point of its r-th copy (-1: none)
    copy_ranks = []
    for rank in range(max((len(v) for v in copy_of.values()), default=0)):
        target_k = np.full(xs_src.shape[1], -1)
        for s, ks in copy_of.items():
            if rank < len(ks):
                target_k[s] = ks[rank]
        copy_ranks.append(target_k)
    cand = np.flatnonzero(primary >= 0)

    uv_s, z_s = project(xs_src, source_camera)
    pix = _pixel_grid(H, W)
    src_cam, tgt_cam = (
        Camera(np.asarray(c.intrinsics, np.float64), np.asarray(c.extrinsics, np.float64), c.image_size)
        for c in (source_camera, target_camera)
    )
    lifted: dict[int, _Lifted] = {}

    def lift(s: int) -> _Lifted:
        if s not in lifted:
            lifted[s] = _Lifted(
                s, xs_src, uv_s, z_s, source_tracks.visibility, src_cam, cand, pix, source_depth, neighbours
            )
        return lifted[s]

    out = np.empty_like(video)
    coverage = np.zeros((F, H, W), np.uint8)
    displacement = np.zeros((F, H, W), np.uint8)
    for f in range(F):
        src = lift(f)
        if src.empty:
            out[f] = video[f]
            continue
        tcam_f = Camera(tgt_cam.intrinsics[f : f + 1], tgt_cam.extrinsics[f : f + 1], tgt_cam.image_size)
        goal = np.zeros_like(xs_src[f])
        goal[cand] = xs_tgt[f, primary[cand]]  # where each source point is at target time f (any source frame)

        def layer(points: np.ndarray, sel: np.ndarray, jinv, zbuf, coords, near=None, cam=tcam_f):
            """Splat points[sel] ((P, 3) world points of a source frame's pixels), only those that land
            within a pixel of `near` ((H, W) bool) when given; returns the full-grid inverse Jacobians
            when `jinv` is None (computed from these points)."""
            uv_t, z_t = project(points[None], cam)
            if near is not None:
                x, y = np.round(uv_t[0]).astype(np.int64).T
                inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
                sel = sel & inside & near[np.clip(y, 0, H - 1), np.clip(x, 0, W - 1)]
            if jinv is None:
                jinv = _inverse_jacobians(uv_t[0], H, W)
            _splat(uv_t[0][sel], z_t[0][sel], pix[sel], jinv[sel], zbuf, coords)
            return jinv

        def colours(s: int, coords: np.ndarray) -> np.ndarray:
            xy = coords.astype(np.float32)
            return cv2.remap(video[s], xy[..., 0], xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

        zbuf = np.full((H, W), np.inf)
        coords = np.zeros((H, W, 2))
        moved = src.moved(goal)
        jinv = layer(moved, src.ok, None, zbuf, coords)
        if return_displacement:
            uv_t, z_t = project(moved[None], tcam_f)
            dist = np.where(z_t[0] > 1e-3, np.linalg.norm(uv_t[0] - pix, axis=-1), np.inf)
            steps = np.minimum(np.round(dist * DISPLACEMENT_STEPS_PER_PIXEL), 255)
            displacement[f] = np.where(src.ok, steps, 0).reshape(H, W)
        # duplicated neighbourhoods are drawn again, once per copy, with the copies' displacements
        # (and the original's Jacobians: a copy is the same surface moved)
        for target_k in copy_ranks:
            dup = target_k[src.nb] >= 0
            sel = (np.sum(src.w * dup, axis=-1) > 0.5) & src.ok
            if not sel.any():
                continue
            wd = src.w * dup
            wd = wd / np.maximum(wd.sum(axis=-1, keepdims=True), 1e-12)
            dd = xs_tgt[f, np.maximum(target_k[src.nb], 0)] - xs_src[f, src.nb]
            layer(src.world + np.einsum("pk,pkc->pc", wd, dd), sel, jinv, zbuf, coords)
        img = colours(f, coords)
        holes = ~np.isfinite(zbuf)
        coverage[f][holes] = FROM_OTHER_FRAME
        for s in sorted(range(F), key=lambda s: (abs(s - f), s)) if temporal_fill else ():
            if not holes.any():
                break
            if s == f or lift(s).empty:
                continue
            other = lift(s)
            zb = np.full((H, W), np.inf)
            co = np.zeros((H, W, 2))
            near = cv2.dilate(holes.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            layer(other.moved(goal), other.ok, None, zb, co, near)
            got = holes & np.isfinite(zb)
            img[got] = colours(s, co)[got]
            holes &= ~got
        if holes.any():
            img = cv2.inpaint(img, holes.astype(np.uint8), inpaint_radius, cv2.INPAINT_TELEA)
        coverage[f][holes] = INPAINTED
        out[f] = img
    extra = [a for a, want in ((coverage, return_coverage), (displacement, return_displacement)) if want]
    return (out, *extra) if extra else out


def coverage_video(coverage: np.ndarray, displacement: np.ndarray | None = None) -> np.ndarray:
    """(F, H, W) uint8 coverage of `warp_video` -> (F, H, W, 3) uint8 clip a model reads like a video:
    channel 0 is 255 where frame f's own pixels did not land, channel 1 is 255 where only inpainting
    filled the pixel, channel 2 is the displacement (F, H, W) uint8 of `warp_video` when given, else 0."""
    c = np.asarray(coverage)
    out = np.zeros((*c.shape, 3), np.uint8)
    out[..., 0] = np.where(c != COVERED, 255, 0)
    out[..., 1] = np.where(c == INPAINTED, 255, 0)
    if displacement is not None:
        if np.shape(displacement) != c.shape:
            raise ValueError(f"displacement must have the coverage's shape {c.shape}; got {np.shape(displacement)}")
        out[..., 2] = displacement
    return out
