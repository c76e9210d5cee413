"""Selections and object edits: exact identities, independent projections (OpenCV), synthetic rigid bodies."""

import cv2
import numpy as np
import pytest

from trackedit_jax.geometry import Camera, Tracks, in_image, project
from trackedit_jax.geometry import edits as E


def _cv2_project(xyz_f, cam, f):
    """Pixels and depth of world points (N, 3) at frame f with cv2.projectPoints (independent of ours)."""
    R = np.asarray(cam.extrinsics[f, :3, :3], np.float64)
    t = np.asarray(cam.extrinsics[f, :3, 3], np.float64)
    uv, _ = cv2.projectPoints(
        np.asarray(xyz_f, np.float64), cv2.Rodrigues(R)[0], t, np.asarray(cam.intrinsics[f], np.float64), None
    )
    return uv[:, 0], (np.asarray(xyz_f) @ R.T + t)[:, 2]


def _sel(N, idx):
    s = np.zeros(N, bool)
    s[idx] = True
    return s


@pytest.mark.parametrize("frame", [0, 5])
def test_box_selection_is_exactly_the_points_projecting_inside(make_tracks, make_camera, frame):
    tr, cam = make_tracks(F=9, N=300, seed=3), make_camera(F=9)
    box = [30.5, 20.0, 90.0, 70.25]
    sel = E.select_box(tr, cam, box, frame)
    uv, z = _cv2_project(tr.xyz[frame], cam, frame)
    expected = (z > 0) & (uv[:, 0] >= box[0]) & (uv[:, 0] <= box[2]) & (uv[:, 1] >= box[1]) & (uv[:, 1] <= box[3])
    np.testing.assert_array_equal(sel, expected)
    assert 10 < sel.sum() < 290
    vis = E.select_box(tr, cam, box, frame, visible_only=True)
    np.testing.assert_array_equal(vis, expected & tr.visibility[frame])


def test_mask_selection_is_exactly_the_points_on_the_mask(make_tracks, make_camera):
    tr, cam = make_tracks(F=9, N=300, seed=4), make_camera(F=9)
    H, W = cam.image_size
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [np.array([[20, 10], [70, 20], [60, 70], [15, 50]], np.int32)], 255)
    sel = E.select_mask(tr, cam, mask, 2)
    uv, z = _cv2_project(tr.xyz[2], cam, 2)
    col, row = np.floor(uv[:, 0] + 0.5).astype(int), np.floor(uv[:, 1] + 0.5).astype(int)
    inside = (z > 0) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
    expected = np.zeros(300, bool)
    expected[inside] = mask[row[inside], col[inside]] > 0
    np.testing.assert_array_equal(sel, expected)
    assert 20 < sel.sum() < 280
    # a mask at twice the resolution selects the same points (pixel centres aligned)
    big = cv2.resize(mask, (2 * W, 2 * H), interpolation=cv2.INTER_NEAREST)
    agree = (E.select_mask(tr, cam, big, 2) == sel).mean()
    assert agree > 0.97  # only points within half a pixel of the polygon edge may differ


def test_depth_and_id_selection(make_tracks, make_camera):
    tr, cam = make_tracks(F=9, N=100), make_camera(F=9)
    sel = E.select_depth(tr, cam, 3.5, 4.5, frame=1)
    _, z = _cv2_project(tr.xyz[1], cam, 1)
    np.testing.assert_array_equal(sel, (z >= 3.5) & (z <= 4.5))
    np.testing.assert_array_equal(np.flatnonzero(E.select_ids(100, [5, 2, 99])), [2, 5, 99])
    with pytest.raises(ValueError, match="ids must be in"):
        E.select_ids(100, [100])


def test_rigid_groups_recovers_synthetic_rigid_bodies(rigid_scene):
    tr, truth = rigid_scene()
    labels = E.rigid_groups(tr, threshold=0.03)
    # groups are ordered by size, like the truth here; every point recovered
    np.testing.assert_array_equal(labels, truth)
    # a shuffled point order gives the same partition
    perm = np.random.default_rng(0).permutation(205)
    lab_p = E.rigid_groups(Tracks(tr.xyz[:, perm], tr.visibility[:, perm]), threshold=0.03)
    np.testing.assert_array_equal(lab_p, truth[perm])


def test_group_at_pixel_picks_the_clicked_body(make_camera, rigid_scene):
    tr, truth = rigid_scene()
    cam = make_camera(F=17, moving=False)
    labels = E.rigid_groups(tr, threshold=0.03)
    i = int(np.flatnonzero(truth == 2)[0])
    uv, _ = project(tr.xyz[:1, i : i + 1], Camera(cam.intrinsics[:1], cam.extrinsics[:1], cam.image_size))
    assert E.group_at_pixel(tr, cam, labels, uv[0, 0], 0) == 2


def test_translate_ramps_in(make_tracks):
    tr = make_tracks(F=5)
    sel = _sel(tr.num_points, [1, 3])
    out = E.translate(tr, sel, [0.4, 0, -0.2])
    d = out.xyz - tr.xyz
    np.testing.assert_allclose(
        d[:, sel], np.broadcast_to(np.array([0, 0.25, 0.5, 0.75, 1])[:, None, None] * [0.4, 0, -0.2], (5, 2, 3))
    )
    np.testing.assert_array_equal(d[:, ~sel], 0)


def test_follow_path_puts_the_centroid_on_the_waypoints(make_tracks):
    tr = make_tracks(F=9)
    sel = _sel(tr.num_points, np.arange(20))
    wp = [[0, 0, 4], [1, 0, 4], [1, -1, 5]]
    out = E.follow_path(tr, sel, wp, frames=[0, 4, 8])
    c = out.xyz[:, sel].mean(1)
    np.testing.assert_allclose(c[[0, 4, 8]], wp, atol=1e-12)
    np.testing.assert_allclose(c[2], [0.5, 0, 4], atol=1e-12)
    rel0, rel1 = tr.xyz[:, sel] - tr.xyz[:, sel].mean(1, keepdims=True), out.xyz[:, sel] - c[:, None]
    np.testing.assert_allclose(rel1, rel0, atol=1e-12)  # shape and own motion about the centroid kept


def test_rotate_360_is_identity_and_rotation_is_rigid(make_tracks):
    tr = make_tracks(F=9)
    sel = _sel(tr.num_points, np.arange(30))
    np.testing.assert_allclose(E.rotate(tr, sel, 360, axis=[0.3, 1, 0.2], ease="constant").xyz, tr.xyz, atol=1e-12)
    spun = E.rotate(tr, sel, 360, axis=[0, 1, 0])  # ramped: a full turn over the clip
    np.testing.assert_allclose(spun.xyz[[0, -1]], tr.xyz[[0, -1]], atol=1e-12)
    r90 = E.rotate(tr, sel, 90, axis=[0, 1, 0], ease="constant")
    dist = lambda x: np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(r90.xyz[:, sel]), dist(tr.xyz[:, sel]), atol=1e-12)
    np.testing.assert_allclose(r90.xyz[:, sel].mean(1), tr.xyz[:, sel].mean(1), atol=1e-12)
    assert np.abs(r90.xyz[:, sel] - tr.xyz[:, sel]).max() > 0.1


def test_scale_stretch_bend(make_tracks):
    tr = make_tracks(F=5)
    sel = _sel(tr.num_points, np.arange(25))
    s = E.scale(tr, sel, 2.0, ease="constant")
    c = tr.xyz[:, sel].mean(1, keepdims=True)
    np.testing.assert_allclose(s.xyz[:, sel] - c, 2 * (tr.xyz[:, sel] - c), atol=1e-12)
    st = E.stretch(tr, sel, 3.0, axis=[0, 1, 0], ease="constant")
    d0, d1 = tr.xyz[:, sel] - c, st.xyz[:, sel] - c
    np.testing.assert_allclose(d1[..., [0, 2]], d0[..., [0, 2]], atol=1e-12)
    np.testing.assert_allclose(d1[..., 1], 3 * d0[..., 1], atol=1e-12)
    b = E.bend(tr, sel, 45, axis=[0, 0, 1], direction=[1, 0, 0], pivot="centroid", ease="constant")
    along = np.einsum("fni,i->fn", d0, [1, 0, 0])
    behind = along <= 0
    np.testing.assert_allclose(b.xyz[:, sel][behind], tr.xyz[:, sel][behind], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(b.xyz[:, sel] - c, axis=-1), np.linalg.norm(d0, axis=-1), atol=1e-12)


def test_move_depth_keeps_pixels_or_moves_along_ray(make_tracks, make_camera):
    tr, cam = make_tracks(F=5), make_camera(F=5)
    sel = _sel(tr.num_points, np.arange(10))
    out = E.move_depth(tr, sel, cam, factor=0.5)
    uv0, z0 = project(tr.xyz, cam)
    uv1, z1 = project(out.xyz, cam)
    np.testing.assert_allclose(uv1, uv0, atol=1e-9)
    np.testing.assert_allclose(z1[:, sel], 0.5 * z0[:, sel], rtol=1e-12)
    far = E.move_depth(tr, sel, cam, distance=1.0)
    assert (project(far.xyz, cam)[1][:, sel] > z0[:, sel]).all()


@pytest.mark.parametrize("side", ["auto", "left", "right", "top", "bottom"])
def test_remove_puts_every_selected_point_off_screen(make_tracks, make_camera, side):
    tr, cam = make_tracks(F=9, N=120), make_camera(F=9)
    target_cam = E.arc(cam, 25, pivot=E.scene_centroid(tr))
    sel = E.select_box(tr, cam, [20, 10, 100, 80], 0)
    assert sel.sum() > 20
    out = E.move_off_screen(tr, sel, target_cam, side=side)
    for f in range(9):
        uv, z = _cv2_project(out.xyz[f, sel], target_cam, f)
        assert not ((z > 0) & in_image(uv, cam.image_size)).any(), f"frame {f}: a removed point is visible"
    np.testing.assert_array_equal(out.xyz[:, ~sel], tr.xyz[:, ~sel])


def test_drop_duplicate_keep_order_and_ids(make_tracks):
    tr = make_tracks(F=5, N=10)
    dropped = E.drop_points(tr, _sel(10, [2, 7]))
    np.testing.assert_array_equal(dropped.ids, [0, 1, 3, 4, 5, 6, 8, 9])
    np.testing.assert_array_equal(dropped.xyz, tr.xyz[:, dropped.ids])
    dup = E.duplicate(dropped, _sel(8, [1, 4]), [0.5, 0, 0])
    np.testing.assert_array_equal(dup.ids, [0, 1, 3, 4, 5, 6, 8, 9, 1, 5])
    np.testing.assert_allclose(dup.xyz[:, 8:], tr.xyz[:, [1, 5]] + [0.5, 0, 0])
    np.testing.assert_array_equal(dup.xyz[:, :8], dropped.xyz)


def test_retime(make_tracks):
    tr = make_tracks(F=9)
    sel = _sel(tr.num_points, np.arange(10))
    np.testing.assert_array_equal(E.retime(tr, sel, E.retime_map(9, speed=1.0)).xyz, tr.xyz)
    half = E.retime(tr, sel, E.retime_map(9, speed=0.5))
    np.testing.assert_allclose(half.xyz[4, sel], tr.xyz[2, sel])
    np.testing.assert_allclose(half.xyz[3, sel], 0.5 * (tr.xyz[1, sel] + tr.xyz[2, sel]))
    rev = E.retime_map(9, reverse=True)
    np.testing.assert_array_equal(E.retime(E.retime(tr, sel, rev), sel, rev).xyz, tr.xyz)
    frz = E.retime(tr, sel, E.retime_map(9, freeze=3))
    np.testing.assert_array_equal(frz.xyz[3:, sel], np.broadcast_to(tr.xyz[3, sel], (6, 10, 3)))
    np.testing.assert_allclose(E.retime_map(9, remap=[[0, 0], [8, 4]]), np.arange(9) / 2)
    with pytest.raises(ValueError, match="exactly one of"):
        E.retime_map(9, speed=2.0, reverse=True)


def test_transfer_onto_itself_is_identity(rigid_scene):
    tr, truth = rigid_scene(noise=0.0)
    for k in (1, 2):
        sel = truth == k
        D = tr.xyz[:, sel]
        np.testing.assert_allclose(E.transfer_motion(tr, sel, D, mode="points").xyz, tr.xyz, atol=1e-12)
        np.testing.assert_allclose(E.transfer_motion(tr, sel, D, mode="rigid").xyz, tr.xyz, atol=1e-9)
    # non-rigid motion: point-wise transfer is still exactly the identity
    rng = np.random.default_rng(0)
    wobbly = Tracks(rng.normal(size=(6, 12, 3)), np.ones((6, 12), bool))
    allp = np.ones(12, bool)
    np.testing.assert_allclose(E.transfer_motion(wobbly, allp, wobbly.xyz).xyz, wobbly.xyz, atol=1e-12)


def test_transfer_moves_one_body_like_another(rigid_scene):
    tr, truth = rigid_scene(noise=0.0)
    body2 = truth == 2
    out = E.transfer_motion(tr, body2, tr.xyz[:, truth == 1], mode="rigid")
    # body 2 now follows body 1's rigid motion: its shape is preserved and its rotation is body 1's
    R1, _ = E._kabsch(np.broadcast_to(tr.xyz[0, truth == 1], (17, 50, 3)), tr.xyz[:, truth == 1])
    R2, _ = E._kabsch(np.broadcast_to(out.xyz[0, body2], (17, 35, 3)), out.xyz[:, body2])
    np.testing.assert_allclose(R2, R1, atol=1e-9)


def test_edits_never_modify_their_inputs(make_tracks, make_camera):
    tr, cam = make_tracks(F=5), make_camera(F=5)
    xyz0, vis0, E0, K0 = tr.xyz.copy(), tr.visibility.copy(), cam.extrinsics.copy(), cam.intrinsics.copy()
    sel = _sel(tr.num_points, np.arange(10))
    for fn in (
        lambda: E.translate(tr, sel, [1, 0, 0]),
        lambda: E.rotate(tr, sel, 30),
        lambda: E.scale(tr, sel, 2.0),
        lambda: E.move_off_screen(tr, sel, cam),
        lambda: E.retime(tr, sel, E.retime_map(5, reverse=True)),
        lambda: E.duplicate(tr, sel, [1, 0, 0]),
        lambda: E.move_depth(tr, sel, cam, factor=0.5),
        lambda: E.zoom(cam, 2.0),
        lambda: E.arc(cam, 10, pivot=[0, 0, 4]),
        lambda: E.stabilize(cam),
        lambda: E.keyframes(cam, [{"frame": 0}, {"frame": 4, "pan": 3}]),
    ):
        fn()
    np.testing.assert_array_equal(tr.xyz, xyz0)
    np.testing.assert_array_equal(tr.visibility, vis0)
    np.testing.assert_array_equal(cam.extrinsics, E0)
    np.testing.assert_array_equal(cam.intrinsics, K0)
