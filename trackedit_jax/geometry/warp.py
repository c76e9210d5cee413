"""The classical baseline: move every source pixel with the 3D motion of the tracks around it.

For each frame f:
  1. lift every source pixel to a world point with the source depth (or, without depth, with the depth
     of the nearest visible source track on screen);
  2. its displacement is the inverse-distance-weighted mean of the displacements
     target_xyz[f, k] - source_xyz[f, ids[k]] of its K nearest source tracks (in 3D with depth, on screen
     without); a pixel whose neighbours were duplicated is drawn a second time with their copies'
     displacements (mostly-duplicated neighbourhoods only);
  3. project the moved points into the target camera and splat them, nearest depth wins, each point
     covering the pixels of its bilinear footprint;
  4. fill the pixels nothing landed on with OpenCV inpainting (Telea).
"""

from __future__ import annotations

import numpy as np

from trackedit_jax.geometry.projection import project, unproject
from trackedit_jax.geometry.types import Camera, Tracks


def _pixel_grid(H: int, W: int) -> np.ndarray:
    ys, xs = np.mgrid[0:H, 0:W]
    return np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)


def _idw(dist: np.ndarray, eps: float) -> np.ndarray:
    w = 1.0 / np.maximum(dist, eps) ** 2
    return w / w.sum(axis=-1, keepdims=True)


def _splat(
    uv: np.ndarray, z: np.ndarray, colors: np.ndarray, H: int, W: int, zbuf: np.ndarray, img: np.ndarray
) -> None:
    """Nearest-depth splat of points (uv (n, 2), z (n,), colors (n, 3)) into zbuf/img in place: each point
    lands on its nearest pixel; pixels left empty then take the nearest point whose bilinear footprint
    covers them (so magnified surfaces do not crack)."""
    flat_z, flat_c = zbuf.reshape(-1), img.reshape(-1, 3)

    def put(x, y, ok, only_empty):
        ok = ok & (x >= 0) & (x < W) & (y >= 0) & (y < H) & (z > 1e-3)
        idx, zz, cc = y[ok] * W + x[ok], z[ok], colors[ok]
        order = np.argsort(-zz)  # far first: nearer points overwrite
        idx, zz, cc = idx[order], zz[order], cc[order]
        keep = (flat_z[idx] == np.inf) if only_empty else (zz < flat_z[idx])
        flat_z[idx[keep]] = zz[keep]
        flat_c[idx[keep]] = cc[keep]

    near = np.round(uv).astype(np.int64)
    put(near[:, 0], near[:, 1], np.ones(len(z), bool), False)
    empty_before = flat_z == np.inf
    base = np.floor(uv).astype(np.int64)
    fill_z = np.full_like(flat_z, np.inf)
    fill_c = np.zeros_like(flat_c)
    saved_z, saved_c = flat_z.copy(), flat_c.copy()
    flat_z[:], flat_c[:] = fill_z, fill_c
    for dy in (0, 1):
        for dx in (0, 1):
            put(base[:, 0] + dx, base[:, 1] + dy, np.ones(len(z), bool), False)
    fill_z, fill_c = flat_z.copy(), flat_c.copy()
    flat_z[:], flat_c[:] = saved_z, saved_c
    flat_z[empty_before] = fill_z[empty_before]
    flat_c[empty_before] = fill_c[empty_before]


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
) -> np.ndarray:
    """The warp baseline (module docstring).

    Args:
      video: (F, H, W, 3) uint8 source frames; cameras must have image_size (H, W).
      source_tracks, target_tracks: paired tracks (target point k pairs with source point ids[k]).
      source_depth: optional (F, H, W) camera-z depth of the source frames.
    Returns:
      (F, H, W, 3) uint8 target frames.
    """
    import cv2
    from scipy.spatial import cKDTree

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
    copies = [(int(ids[k]), k) for k in np.flatnonzero(~first)]
    has_primary = primary >= 0

    uv_s, z_s = project(xs_src, source_camera)
    pix = _pixel_grid(H, W)
    out = np.empty_like(video)
    src_cam = Camera(
        np.asarray(source_camera.intrinsics, np.float64),
        np.asarray(source_camera.extrinsics, np.float64),
        source_camera.image_size,
    )
    tgt_cam = Camera(
        np.asarray(target_camera.intrinsics, np.float64),
        np.asarray(target_camera.extrinsics, np.float64),
        target_camera.image_size,
    )
    for f in range(F):
        cam_f = Camera(src_cam.intrinsics[f : f + 1], src_cam.extrinsics[f : f + 1], src_cam.image_size)
        vis = np.asarray(source_tracks.visibility[f], bool) & (z_s[f] > 1e-3)
        if source_depth is not None:
            depth = np.asarray(source_depth[f], np.float64).reshape(-1)
        else:  # the nearest visible track on screen gives each pixel its depth
            pool = np.flatnonzero(vis) if vis.any() else np.flatnonzero(z_s[f] > 1e-3)
            if len(pool) == 0:
                out[f] = video[f]
                continue
            _, nn = cKDTree(uv_s[f, pool]).query(pix, k=1)
            depth = z_s[f, pool[nn]]
        ok = np.isfinite(depth) & (depth > 1e-3)  # pixels that see nothing are left to inpainting
        depth = np.where(ok, depth, 1.0)
        world = unproject(pix[None], depth[None], cam_f)[0]  # (H*W, 3)
        cand = np.flatnonzero(has_primary)
        if len(cand) == 0:
            out[f] = video[f]
            continue
        if source_depth is not None:
            k = min(neighbours, len(cand))
            dist, nn = cKDTree(xs_src[f, cand]).query(world, k=k)
            scale = 1e-3 * max(1.0, float(np.median(depth)))
        else:
            k = min(neighbours, len(cand))
            dist, nn = cKDTree(uv_s[f, cand]).query(pix, k=k)
            scale = 0.5
        dist, nn = dist.reshape(len(pix), k), nn.reshape(len(pix), k)
        w = _idw(dist, scale)
        nb = cand[nn]  # (P, k) source point indices
        disp = xs_tgt[f, primary[nb]] - xs_src[f, nb]  # (P, k, 3)
        moved = world + np.einsum("pk,pkc->pc", w, disp)
        colors = video[f].reshape(-1, 3)
        zbuf = np.full((H, W), np.inf)
        img = np.zeros((H, W, 3), np.uint8)
        tcam_f = Camera(tgt_cam.intrinsics[f : f + 1], tgt_cam.extrinsics[f : f + 1], tgt_cam.image_size)
        uv_t, z_t = project(moved[None], tcam_f)
        _splat(uv_t[0][ok], z_t[0][ok], colors[ok], H, W, zbuf, img)
        if copies:  # draw duplicated neighbourhoods again with their copies' displacements
            copy_of = {}
            for s, kk in copies:
                copy_of.setdefault(s, []).append(kk)
            for layer in range(max(len(v) for v in copy_of.values())):
                target_k = np.full(xs_src.shape[1], -1)
                for s, ks in copy_of.items():
                    if layer < len(ks):
                        target_k[s] = ks[layer]
                dup = target_k[nb] >= 0
                share = np.sum(w * dup, axis=-1)
                sel = (share > 0.5) & ok
                if not sel.any():
                    continue
                wd = w[sel] * dup[sel]
                wd = wd / wd.sum(axis=-1, keepdims=True)
                nbs = nb[sel]
                dd = xs_tgt[f, np.maximum(target_k[nbs], 0)] - xs_src[f, nbs]
                moved_c = world[sel] + np.einsum("pk,pkc->pc", wd, dd)
                uv_c, z_c = project(moved_c[None], tcam_f)
                _splat(uv_c[0], z_c[0], colors[sel], H, W, zbuf, img)
        holes = ~np.isfinite(zbuf)
        if holes.any():
            img = cv2.inpaint(img, holes.astype(np.uint8), inpaint_radius, cv2.INPAINT_TELEA)
        out[f] = img
    return out
