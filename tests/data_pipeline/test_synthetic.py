"""Synthetic pairs: exact colours at track projections, honest visibility, every edit family real.

Tolerances (stated here and in README):
  * albedo at a visible track's exact projected position (a ray cast through that sub-pixel
    position) is the track's albedo: the ray hits the same primitive at the same object-space point
    (|dp| <= 1e-6; at grazing incidence |n.d| < 0.02 the hit is ill-conditioned and |dp| <= 2e-3), so
    |albedo diff| <= L |dp|; across every frame and both clips the albedos agree within the
    same bound (> 99% of observations are exact to |dp| <= 1e-6).
    Shaded colour = albedo * one grey Lambert factor in [ambient, 1] (shading changes, albedo doesn't).
  * raster (pixel-centre) albedo at the nearest pixel: |diff| <= L * |p_pixel - p_track| + 1e-5, with L
    the texture's Lipschitz bound and p object-space points, whenever the pixel shows the track's
    primitive (>= 90% of visible tracks; the rest sit on silhouettes).
  * an invisible track is off-screen/behind the camera, or an occluding surface point exists between
    the camera and it (checked with implicit surface equations and inside-solid sampling that share
    no code with the ray intersection); a visible track has no solid anywhere on its line of sight.
"""

import numpy as np
import pytest

from data_pipeline.synthetic import SyntheticConfig, generate_pair, track_visibility
from data_pipeline.synthetic.edits import ALL_FAMILIES
from data_pipeline.synthetic.raycast import BOX, CYLINDER, DOME, GROUND, SPHERE, inside
from data_pipeline.synthetic.render import cast_rays, pixel_rays, shade
from trackedit_jax.geometry import Camera, in_image, project

CFG = SyntheticConfig(num_frames=5, image_size=(24, 32), num_tracks=160)


def _camera(geom):
    return Camera(geom.intrinsics, geom.extrinsics(), geom.image_size)


@pytest.fixture(scope="module")
def pairs():
    # many random scenes, every family at least once
    return [generate_pair(100 + i, i, CFG) for i in range(16)]


def _on_surface(kind, size, q, tol):
    if kind in (SPHERE, DOME):
        return np.abs(np.linalg.norm(q, axis=-1) - size[0]) < tol * size[0]
    if kind == GROUND:
        return np.abs(q[..., 2]) < tol
    if kind == BOX:
        return np.abs(np.max(np.abs(q) / size, axis=-1) - 1) < tol
    if kind == CYLINDER:
        rad = np.hypot(q[..., 0], q[..., 1])
        side = (np.abs(rad - size[0]) < tol * size[0]) & (np.abs(q[..., 2]) <= size[2] * (1 + tol))
        cap = (np.abs(np.abs(q[..., 2]) - size[2]) < tol * size[2]) & (rad <= size[0] * (1 + tol))
        return side | cap
    raise AssertionError(kind)


def _clips(pair):
    yield pair.source, pair.prim_source, pair.source_xyz, pair.source_visibility, pair.source_render
    yield pair.target, pair.prim_target, pair.target_xyz, pair.target_visibility, pair.target_render


def test_albedo_exact_at_projected_positions_across_frames_and_clips(pairs):
    exact = checked = 0
    for pair in pairs:
        per_track = [[] for _ in range(len(pair.local))]
        for geom, prim, xyz, vis, _ in _clips(pair):
            uv, z = project(xyz, _camera(geom))  # trackedit geometry, not the renderer's maths
            org, dirs = pixel_rays(geom, uv)
            t, pid, local, normal = cast_rays(geom, org, dirs)
            f_idx, n_idx = np.nonzero(vis)
            assert np.array_equal(pid[f_idx, n_idx], prim[n_idx]), (
                "the ray through a visible track hits another surface"
            )
            for f, n in zip(f_idx, n_idx):
                tex = geom.prims[prim[n]].texture
                d = dirs[f, n] / np.linalg.norm(dirs[f, n])
                grazing = abs(normal[f, n] @ d) < 0.02  # silhouette: the hit is ill-conditioned
                dist = np.linalg.norm(local[f, n] - pair.local[n])
                assert dist <= (2e-3 if grazing else 1e-6) * max(1.0, np.abs(pair.local[n]).max())
                alb = tex(local[f, n][None])[0]
                want = tex(pair.local[n][None])[0]
                assert np.abs(alb - want).max() <= tex.lipschitz() * dist + 1e-9
                exact += dist <= 1e-6
                checked += 1
                per_track[n].append((alb, tex.lipschitz() * dist))
                col = shade(geom, alb[None], normal[f, n][None])[0]
                ok = alb > 1e-3
                factor = col[ok] / alb[ok]
                assert np.ptp(factor) < 1e-9 if ok.sum() > 1 else True  # one grey shading factor
                assert np.all((factor >= geom.ambient - 1e-9) & (factor <= 1 + 1e-9))
        for obs in per_track:
            if len(obs) > 1:
                alb = np.stack([a for a, _ in obs])
                bound = 2 * max(b for _, b in obs) + 1e-9
                assert np.ptp(alb, axis=0).max() <= bound, "albedo of one point differs between frames/clips"
    assert checked > 2000 and exact / checked > 0.99, (exact, checked)


def test_raster_albedo_matches_tracks_within_texture_bound(pairs):
    matched = total = 0
    for pair in pairs:
        for geom, prim, xyz, vis, render in _clips(pair):
            uv, _ = project(xyz, _camera(geom))
            f_idx, n_idx = np.nonzero(vis)
            H, W = geom.image_size
            px = np.clip(np.round(uv[f_idx, n_idx]).astype(int), 0, [W - 1, H - 1])
            pid = render["pid"][f_idx, px[:, 1], px[:, 0]]
            same = pid == prim[n_idx]
            total += len(same)
            matched += same.sum()
            for f, n, (x, y) in zip(f_idx[same], n_idx[same], px[same]):
                tex = geom.prims[prim[n]].texture
                dist = np.linalg.norm(render["local"][f, y, x].astype(np.float64) - pair.local[n])
                diff = np.abs(render["albedo"][f, y, x] - tex(pair.local[n][None])[0]).max()
                assert diff <= tex.lipschitz() * dist * 1.01 + 1e-5
                rgb = render["rgb"][f, y, x].astype(np.float64) / 255
                want = shade(
                    geom,
                    render["albedo"][f, y, x][None].astype(np.float64),
                    render["normal"][f, y, x][None].astype(np.float64),
                )[0]
                assert np.abs(rgb - want).max() <= 0.5 / 255 + 1e-6
    assert total > 2000 and matched / total >= 0.9, (matched, total)


def test_visibility_is_the_depth_test(pairs):
    confirmed_by_sampling = occluded = 0
    raster_vis_ok, raster_inv_ok = [], []
    for pair in pairs:
        for geom, _prim, xyz, vis, render in _clips(pair):
            cam = _camera(geom)
            uv, z = project(xyz, cam)
            onscreen = in_image(uv, geom.image_size) & (z > 1e-3)
            assert not (vis & ~onscreen).any()
            c = geom.centers[:, None, :]
            # (a) visible: no solid anywhere on the line of sight (inside-tests, no ray intersection)
            # (b) occluded: the first hit is a genuine surface point strictly before the track
            ts = np.linspace(1e-3, 1 - 2e-3, 200)
            f_idx, n_idx = np.nonzero(onscreen)
            seg = c[f_idx] + ts[None, :, None] * (xyz[f_idx, n_idx] - c[f_idx, 0])[:, None, :]  # (M, S, 3)
            blocked = np.zeros(len(f_idx), bool)
            for p in geom.prims:
                if p is None:
                    continue
                R, t, s = p.pose.R[f_idx], p.pose.t[f_idx], p.pose.s[f_idx]
                q = np.matmul(seg - t[:, None, :], R) / s[:, None, None]  # R^T (x - t) / s
                blocked |= inside(p.kind, p.size, q, margin=1e-6).any(axis=1)
            v = vis[f_idx, n_idx]
            assert not (v & blocked).any(), "a visible track has a solid on its line of sight"
            inv = ~v
            occluded += inv.sum()
            confirmed_by_sampling += (inv & blocked).sum()
            t_hit, pid, local, _ = cast_rays(geom, c, xyz - c)
            for f, n in zip(f_idx[inv], n_idx[inv]):
                assert t_hit[f, n] < 1 - 1e-6
                p = geom.prims[pid[f, n]]
                h = geom.centers[f] + t_hit[f, n] * (xyz[f, n] - geom.centers[f])
                q = p.pose.R[f].T @ (h - p.pose.t[f]) / p.pose.s[f]
                assert _on_surface(p.kind, p.size, q[None], 1e-5)[0]
            # the raster depth buffer agrees at the nearest pixel for tracks away from silhouettes
            px = np.clip(np.round(uv[f_idx, n_idx]).astype(int), 0, [geom.image_size[1] - 1, geom.image_size[0] - 1])
            d = render["depth"][f_idx, px[:, 1], px[:, 0]]
            zt = z[f_idx, n_idx]
            raster_vis_ok.append(d[v] >= zt[v] * (1 - 2e-2))
            raster_inv_ok.append(d[inv] < zt[inv])
    assert occluded > 500 and confirmed_by_sampling / occluded > 0.9
    assert np.concatenate(raster_vis_ok).mean() > 0.9
    assert np.concatenate(raster_inv_ok).mean() > 0.8


def test_every_family_labelled_and_real(pairs):
    fams = {p.family for p in pairs}
    assert fams == set(ALL_FAMILIES)
    for p in pairs:
        same_cam = np.allclose(p.source.extrinsics(), p.target.extrinsics())
        comps = p.edit["components"]
        assert p.edit["family"] == p.family
        assert same_cam == ("camera" not in comps), (p.family, comps)
        if "duplication" in comps:
            ids = p.source_ids
            twins = np.flatnonzero(ids != np.arange(len(ids)))
            assert len(twins) > 0
            orig = ids[twins]
            np.testing.assert_array_equal(p.source_xyz[:, twins], p.source_xyz[:, orig])
            sep = np.linalg.norm(p.target_xyz[:, twins] - p.target_xyz[:, orig], axis=-1)
            assert sep.min() > 0.3  # one source point, two distinct target points
            # both copies are rendered in the target (their tracks are seen)
            assert p.target_visibility[:, twins].any() and p.target_visibility[:, orig].any()
        if "removal" in comps:
            obj = p.edit["removal"]["object"]
            on_obj = np.array([p.target.prims[k].object_index == obj for k in p.prim_target])
            assert on_obj.any() and p.source_visibility[:, on_obj].any()
            assert not p.target_visibility[:, on_obj].any()
            uv, z = project(p.target_xyz[:, on_obj], _camera(p.target))
            assert not (in_image(uv, p.target.image_size) & (z > 0)).any(), "removed tracks must leave the frame"
        if p.family in ("object_path", "rotation", "deformation", "retiming"):
            moved = np.linalg.norm(p.target_xyz - p.source_xyz, axis=-1).max(0) > 1e-6
            assert moved.any() and (~moved).any()  # the edited object moved, the rest did not


def test_deterministic_and_any_size():
    a = generate_pair(7, 3, CFG)
    b = generate_pair(7, 3, CFG)
    np.testing.assert_array_equal(a.source_render["rgb"], b.source_render["rgb"])
    np.testing.assert_array_equal(a.target_xyz, b.target_xyz)
    np.testing.assert_array_equal(a.target_visibility, b.target_visibility)
    # the same scene at another resolution and frame count: same cameras at shared times
    big = generate_pair(7, 3, SyntheticConfig(num_frames=9, image_size=(36, 48), num_tracks=50))
    np.testing.assert_allclose(big.source.extrinsics()[::2], a.source.extrinsics(), atol=1e-12)
    np.testing.assert_allclose(big.target.centers[::2], a.target.centers, atol=1e-12)
    assert big.source_render["rgb"].shape == (9, 36, 48, 3)
    # visibility recomputed from scratch agrees
    np.testing.assert_array_equal(track_visibility(a.target, a.target_xyz), a.target_visibility)


def test_warp_frames_are_the_warp_of_the_decoded_source_clip():
    """`with_warp` records hold `geometry.warp` of their own decoded source clip, tracks (with ids) and the
    renderer's depth, with its coverage; on average over the families the warp is closer to the target than
    the source is."""
    from data_pipeline.synthetic.generator import pair_to_record, record_warp
    from trackedit_jax.eval.metrics import psnr

    cfg = SyntheticConfig(num_frames=5, image_size=(32, 32), num_tracks=400, codec="png", with_warp=True)
    gains = []
    for i in range(8):  # one of every family
        pair = generate_pair(31, i, cfg)
        rec = pair_to_record(pair, cfg, key=f"w{i}")
        warp = rec.video("warp")
        frames, coverage, displacement = record_warp(rec, pair.source_render["depth"])
        np.testing.assert_array_equal(warp, frames)
        np.testing.assert_array_equal(rec.warp_coverage, coverage)
        np.testing.assert_array_equal(rec.warp_displacement, displacement)
        target = rec.video("target")
        gains.append(psnr(warp, target) - psnr(rec.video("source"), target))
    assert np.mean(gains) > 0, gains
    plain = pair_to_record(generate_pair(31, 0, CFG), CFG, key="p")
    assert plain.warp_frames is None and plain.warp_coverage is None and plain.warp_displacement is None
