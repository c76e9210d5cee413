"""Model-input preprocessing: exact hand-computed values, invariances, padding, jit/vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trackedit_jax.geometry import (
    Camera,
    Tracks,
    latent_frame_count,
    latent_frame_indices,
    masked_quantile,
    pixels_to_grid,
    prepare_track_condition,
    prepare_track_condition_batch,
    project,
)
from trackedit_jax.geometry.edits import arc, scene_centroid


def _hand_camera(F=5):
    K = np.tile(np.array([[10.0, 0, 19.5], [0, 10, 9.5], [0, 0, 1]], np.float32), (F, 1, 1))
    return Camera(K, np.tile(np.eye(4, dtype=np.float32), (F, 1, 1)), (20, 40))


def _hand_tracks():
    src = np.zeros((5, 3, 3), np.float32)
    src[:] = [[0, 0, 1], [1, 0, 2], [0, -2, 4]]
    src[1:4] = [[5, 5, -3], [9, 9, 0.001], [0, 0, 1e-9]]  # frames 1-3 are never sampled
    tgt = src.copy()
    tgt[4] = [[0, 0, -1], [2, 0, 2], [0, -2, 4]]  # point 0 goes behind the camera, point 1 moves right
    return src, tgt


def test_latent_frame_indices():
    assert latent_frame_count(81) == 21
    np.testing.assert_array_equal(latent_frame_indices(81), np.arange(0, 81, 4))
    np.testing.assert_array_equal(latent_frame_indices(1), [0])
    np.testing.assert_array_equal(latent_frame_indices(9), [0, 4, 8])
    for bad in (0, 2, 80, 82):
        with pytest.raises(ValueError, match="4k\\+1"):
            latent_frame_indices(bad)


def test_hand_computed_min_max():
    src, tgt = _hand_tracks()
    cam = _hand_camera()
    c = prepare_track_condition(src, cam, tgt, cam, num_latent_frames=2, percentiles=(0, 100))
    third = 1.0 / 3.0  # disparities {1, 0.5, 0.25}: z = (d - 0.25) / 0.75
    exp_src = np.array([[[0, 0, 1], [0.25, 0, third], [0, -0.5, 0]]] * 2)
    exp_tgt = np.array([[[0, 0, 1], [0.25, 0, third], [0, -0.5, 0]], [[0, 0, 0], [0.5, 0, third], [0, -0.5, 0]]])
    np.testing.assert_allclose(c.source, exp_src, atol=1e-6)
    np.testing.assert_allclose(c.target, exp_tgt, atol=1e-6)
    np.testing.assert_array_equal(c.source_valid, np.ones((2, 3), bool))
    np.testing.assert_array_equal(c.target_valid, [[True] * 3, [False, True, True]])
    assert c.source.dtype == jnp.float32 and c.point_mask.shape == (3,)


def test_hand_computed_percentiles_match_numpy():
    src, tgt = _hand_tracks()
    cam = _hand_camera()
    c = prepare_track_condition(src, cam, tgt, cam, num_latent_frames=2)  # default (2, 98)
    valid_disp = np.array([1, 0.5, 0.25] * 3 + [0.5, 0.25])
    lo, hi = np.percentile(valid_disp, [2, 98])
    z = np.clip((np.array([1, 0.5, 0.25]) - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(c.source[0, :, 2], z, atol=1e-6)
    np.testing.assert_allclose(c.target[1, 1:, 2], z[1:], atol=1e-6)


def test_masked_quantile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        v = rng.normal(size=150).astype(np.float32)
        m = np.zeros(150, bool)
        m[rng.choice(150, n, replace=False)] = True
        for q in (0.0, 0.02, 0.5, 0.98, 1.0):
            np.testing.assert_allclose(masked_quantile(v, m, q), np.quantile(v[m], q), rtol=1e-6, atol=1e-6)
    assert float(masked_quantile(np.ones(4), np.zeros(4, bool), 0.5, default=7.0)) == 7.0


def _pair(make_tracks, make_camera, F=9, N=40, seed=0):
    tr = make_tracks(F=F, N=N, seed=seed, dtype=np.float32)
    cam = make_camera(F=F, seed=seed, dtype=np.float32)
    tcam = arc(cam, 25, pivot=scene_centroid(tr))
    tgt = np.asarray(tr.xyz).copy()
    tgt[:, :5] += np.linspace(0, 1, F)[:, None, None] * np.array([0.5, 0, -0.3], np.float32)
    return np.asarray(tr.xyz), cam, tgt, tcam


def test_resampling_takes_frame_4j(make_tracks, make_camera):
    src, cam, tgt, tcam = _pair(make_tracks, make_camera)
    c = prepare_track_condition(src, cam, tgt, tcam, percentiles=(0, 100))
    for j, f in enumerate([0, 4, 8]):
        uv, _ = project(
            tgt[f : f + 1].astype(np.float64),
            Camera(
                tcam.intrinsics[f : f + 1].astype(np.float64),
                tcam.extrinsics[f : f + 1].astype(np.float64),
                tcam.image_size,
            ),
        )
        np.testing.assert_allclose(
            c.target[j, :, :2], np.clip(pixels_to_grid(uv[0], tcam.image_size), -2, 2), atol=1e-5
        )


def test_permutation_equivariance(make_tracks, make_camera):
    src, cam, tgt, tcam = _pair(make_tracks, make_camera)
    perm = np.random.default_rng(1).permutation(src.shape[1])
    a = prepare_track_condition(src, cam, tgt, tcam)
    b = prepare_track_condition(src[:, perm], cam, tgt[:, perm], tcam)
    for x, y in ((a.source, b.source), (a.target, b.target), (a.source_valid, b.source_valid)):
        np.testing.assert_allclose(np.asarray(x)[:, perm], y, atol=1e-6)


def test_padded_points_do_not_change_the_others(make_tracks, make_camera):
    src, cam, tgt, tcam = _pair(make_tracks, make_camera)
    N = src.shape[1]
    rng = np.random.default_rng(2)
    pad = rng.normal(size=(9, 6, 3)).astype(np.float32) * 100
    pad[:, 0] = [0, 0, 1e-4]  # extreme disparity, would dominate the range if it counted
    pad[:, 1] = np.nan
    src_p = np.concatenate([src, pad], 1)
    tgt_p = np.concatenate([tgt, pad[:, ::-1]], 1)
    mask = np.arange(N + 6) < N
    a = prepare_track_condition(src, cam, tgt, tcam)
    b = prepare_track_condition(src_p, cam, tgt_p, tcam, point_mask=mask)
    np.testing.assert_array_equal(np.asarray(b.source)[:, :N], a.source)
    np.testing.assert_array_equal(np.asarray(b.target)[:, :N], a.target)
    assert not np.asarray(b.source_valid)[:, N:].any() and not np.asarray(b.target_valid)[:, N:].any()
    np.testing.assert_array_equal(np.asarray(b.source)[:, N:], 0.0)


def test_jit_and_vmap_equal_eager(make_tracks, make_camera):
    pairs = [_pair(make_tracks, make_camera, seed=s) for s in (0, 1)]
    mask = np.ones((2, 40), bool)
    mask[1, 30:] = False
    eager = [prepare_track_condition(s, c, t, tc, point_mask=m) for (s, c, t, tc), m in zip(pairs, mask)]
    fn = jax.jit(functools.partial(prepare_track_condition, num_latent_frames=3))
    s, c, t, tc = pairs[0]
    jitted = fn(
        jnp.asarray(s),
        jax.tree.map(jnp.asarray, c),
        jnp.asarray(t),
        jax.tree.map(jnp.asarray, tc),
        point_mask=jnp.asarray(mask[0]),
    )
    for k in ("source", "target", "source_valid", "target_valid"):
        np.testing.assert_allclose(getattr(jitted, k), getattr(eager[0], k), atol=1e-6)
    stack = lambda i: np.stack([np.asarray(p[i]) for p in pairs])  # noqa: E731
    batched = jax.jit(functools.partial(prepare_track_condition_batch, image_size=pairs[0][1].image_size))(
        stack(0),
        np.stack([p[1].intrinsics for p in pairs]),
        np.stack([p[1].extrinsics for p in pairs]),
        stack(2),
        np.stack([p[3].intrinsics for p in pairs]),
        np.stack([p[3].extrinsics for p in pairs]),
        point_mask=mask,
    )
    for b in range(2):
        for k in ("source", "target", "source_valid", "target_valid", "point_mask"):
            np.testing.assert_allclose(np.asarray(getattr(batched, k))[b], getattr(eager[b], k), atol=1e-6)


def test_no_nan_when_everything_is_behind_or_invalid():
    cam = _hand_camera()
    behind = np.tile(np.array([[0, 0, -1], [1, 1, -5]], np.float32), (5, 1, 1))
    c = jax.jit(prepare_track_condition)(behind, cam, behind, cam)
    assert np.isfinite(np.asarray(c.source)).all() and np.isfinite(np.asarray(c.target)).all()
    assert not np.asarray(c.source_valid).any()
    np.testing.assert_array_equal(c.source, 0.0)
    bad = behind.copy()
    bad[:, 0] = np.nan
    bad[:, 1] = [np.inf, 0, 3]
    c = jax.jit(prepare_track_condition)(bad, cam, bad, cam)
    assert np.isfinite(np.asarray(c.source)).all() and not np.asarray(c.source_valid).any()


def test_far_off_screen_points_are_clamped_and_finite():
    cam = _hand_camera()
    src = np.tile(np.array([[0, 0, 1], [0, 0, 2]], np.float32), (5, 1, 1))
    tgt = src.copy()
    tgt[:, 0] = [1e7, -1e7, 1.0]  # a removed object far off screen
    tgt[:, 1] = [0.5, 0, 1e-2]  # just in front of the camera: huge projection
    c = prepare_track_condition(src, cam, tgt, cam)
    t = np.asarray(c.target)
    assert np.isfinite(t).all()
    np.testing.assert_allclose(t[:, 0, :2], [[2.0, -2.0]] * 2)
    assert t[0, 1, 0] == 2.0 and np.asarray(c.target_valid).all()


def test_disparity_is_robust_to_outliers_and_shared():
    rng = np.random.default_rng(0)
    F, N = 5, 200
    xyz = np.zeros((F, N, 3), np.float32)
    xyz[..., 2] = rng.uniform(2, 4, N)
    xyz[:, 0] = [0, 0, 0.01]  # one outlier 200x nearer
    cam = _hand_camera()
    c = prepare_track_condition(xyz, cam, xyz, cam)
    z = np.asarray(c.source)[0, 1:, 2]
    assert z.max() > 0.9 and z.min() < 0.1, "the outlier must not squash everyone else's range"
    assert np.asarray(c.source)[0, 0, 2] == 1.0
    np.testing.assert_array_equal(c.source, c.target)  # identical sides, one shared scale
    tgt = xyz.copy()
    tgt[:, 5, 2] = xyz[0, 7, 2]  # target point 5 at the depth of source point 7 gets the same z
    c = prepare_track_condition(xyz, cam, tgt, cam)
    np.testing.assert_allclose(c.target[:, 5, 2], c.source[:, 7, 2], atol=1e-6)


def test_bad_inputs():
    src, tgt = _hand_tracks()
    cam = _hand_camera()
    with pytest.raises(ValueError, match="num_latent_frames=3 does not match F=5"):
        prepare_track_condition(src, cam, tgt, cam, num_latent_frames=3)
    with pytest.raises(ValueError, match="4k\\+1"):
        prepare_track_condition(src[:4], _hand_camera(4), tgt[:4], _hand_camera(4))
    with pytest.raises(ValueError, match="N = 0"):
        prepare_track_condition(src[:, :0], cam, tgt[:, :0], cam)
    with pytest.raises(ValueError, match="target_tracks must have the source's shape"):
        prepare_track_condition(src, cam, tgt[:, :2], cam)
    with pytest.raises(ValueError, match="target_camera has F=9 frames but the tracks have F=5"):
        prepare_track_condition(src, cam, tgt, _hand_camera(9))
    with pytest.raises(ValueError, match="point_mask must have shape"):
        prepare_track_condition(src, cam, tgt, cam, point_mask=np.ones(4, bool))
    with pytest.raises(ValueError, match="NaN or inf"):
        prepare_track_condition(Tracks(np.full((5, 2, 3), np.nan), np.ones((5, 2), bool)), cam, tgt, cam)
