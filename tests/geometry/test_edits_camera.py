"""Camera edits: each checked against an exact geometric property or an independent computation."""

import json

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from trackedit_jax.geometry import Camera, camera_centers, invert_extrinsics, load_dycheck_cameras, project
from trackedit_jax.geometry import edits as E


def _angle_deg(Ra, Rb):
    """Geodesic angle between rotation stacks, via cv2.Rodrigues (independent of scipy/our code)."""
    return np.array([np.degrees(np.linalg.norm(cv2.Rodrigues(a.T @ b)[0])) for a, b in zip(Ra, Rb)])


def _centre_pixel_point(cam, depth=4.0):
    """A world point that projects at the principal point of every frame, at `depth`."""
    c2w = invert_extrinsics(np.asarray(cam.extrinsics, np.float64))
    return (c2w[:, :3, :3] @ np.array([0, 0, depth]) + c2w[:, :3, 3])[:, None, :]


def test_ramp_weights():
    np.testing.assert_allclose(E.ramp_weights(5), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(E.ramp_weights(5, "constant"), 1)
    np.testing.assert_allclose(E.ramp_weights(5, "constant", start=2), [0, 0, 1, 1, 1])
    np.testing.assert_allclose(E.ramp_weights(5, "linear", start=1, end=3), [0, 0, 0.5, 1, 1])
    w = E.ramp_weights(9, "ease_in_out")
    assert w[0] == 0 and w[-1] == 1 and w[1] < 1 / 8 and abs(w[4] - 0.5) < 1e-12
    with pytest.raises(ValueError, match="start <= end"):
        E.ramp_weights(5, start=3, end=2)
    with pytest.raises(ValueError, match="ease must be one of"):
        E.ramp_weights(5, "bouncy")


def test_arc_keeps_distance_to_pivot_and_pivot_pixel(make_camera, make_tracks):
    cam, tr = make_camera(F=9), make_tracks(F=9)
    pivot = E.scene_centroid(tr)
    out = E.arc(cam, 40, pivot=pivot)
    d0 = np.linalg.norm(camera_centers(cam) - pivot, axis=-1)
    d1 = np.linalg.norm(camera_centers(out) - pivot, axis=-1)
    np.testing.assert_allclose(d1, d0, rtol=1e-12)
    uv0, z0 = project(np.broadcast_to(pivot, (9, 1, 3)), cam)
    uv1, z1 = project(np.broadcast_to(pivot, (9, 1, 3)), out)
    np.testing.assert_allclose(uv1, uv0, atol=1e-9)
    np.testing.assert_allclose(z1, z0, atol=1e-12)
    # the camera really moved: rotated by 40 * w(t) degrees about the pivot
    np.testing.assert_allclose(
        _angle_deg(cam.extrinsics[:, :3, :3], out.extrinsics[:, :3, :3]), 40 * E.ramp_weights(9), atol=1e-6
    )
    # a moving pivot (per-frame selection centroid) keeps per-frame distances too
    sel = np.zeros(tr.num_points, bool)
    sel[:10] = True
    piv_t = E.selection_centroid(tr, sel)
    out2 = E.arc(cam, -30, axis=[1, 0, 0], pivot=piv_t)
    np.testing.assert_allclose(
        np.linalg.norm(camera_centers(out2) - piv_t, axis=-1),
        np.linalg.norm(camera_centers(cam) - piv_t, axis=-1),
        rtol=1e-12,
    )


def test_positive_arc_moves_an_upright_camera_to_its_right(make_camera):
    cam = make_camera(F=5, moving=False)
    out = E.arc(cam, 20, pivot=[0, 0, 4])
    assert camera_centers(out)[-1, 0] > 0.5


@pytest.mark.parametrize("kind,axis_px,sign", [("pan", 0, -1), ("tilt", 1, +1)])
def test_pan_and_tilt_rotate_about_the_centre(make_camera, kind, axis_px, sign):
    cam = make_camera(F=5)
    X = _centre_pixel_point(cam)
    out = E.rotate_camera(cam, kind, 10)
    np.testing.assert_allclose(camera_centers(out), camera_centers(cam), atol=1e-12)
    np.testing.assert_allclose(
        _angle_deg(cam.extrinsics[:, :3, :3], out.extrinsics[:, :3, :3]), 10 * E.ramp_weights(5), atol=1e-6
    )
    uv0, _ = project(X, cam)
    uv1, _ = project(X, out)
    # pan right -> the scene moves left in the image; tilt up -> the scene moves down
    expected = cam.intrinsics[-1, axis_px, axis_px] * np.tan(np.radians(10))
    np.testing.assert_allclose(sign * (uv1[-1, 0, axis_px] - uv0[-1, 0, axis_px]), expected, rtol=1e-6)


def test_roll_keeps_the_principal_point(make_camera):
    cam = make_camera(F=5)
    X = _centre_pixel_point(cam)
    out = E.roll(cam, 45)
    np.testing.assert_allclose(project(X, out)[0], project(X, cam)[0], atol=1e-9)


@pytest.mark.parametrize("kind,local", [("dolly", [0, 0, 1]), ("truck", [1, 0, 0]), ("pedestal", [0, -1, 0])])
def test_dolly_truck_pedestal_move_along_camera_axes(make_camera, kind, local):
    cam = make_camera(F=5)
    out = E.move_camera(cam, kind, 0.5)
    R_c2w = np.swapaxes(cam.extrinsics[:, :3, :3], 1, 2)
    expected = camera_centers(cam) + 0.5 * E.ramp_weights(5)[:, None] * (R_c2w @ np.array(local, float))
    np.testing.assert_allclose(camera_centers(out), expected, atol=1e-12)
    np.testing.assert_allclose(out.extrinsics[:, :3, :3], cam.extrinsics[:, :3, :3], atol=1e-12)
    if kind == "dolly":
        _, z0 = project(_centre_pixel_point(cam), cam)
        _, z1 = project(_centre_pixel_point(cam), out)
        np.testing.assert_allclose(z0[-1] - z1[-1], 0.5)


def test_zoom_scales_about_the_principal_point(make_camera, make_tracks):
    cam, tr = make_camera(F=5), make_tracks(F=5)
    out = E.zoom(cam, 2.0, ease="constant")
    uv0, _ = project(tr.xyz, cam)
    uv1, _ = project(tr.xyz, out)
    c = cam.intrinsics[:, None, :2, 2]
    np.testing.assert_allclose(uv1 - c, 2.0 * (uv0 - c), atol=1e-9)


def test_stabilize_lowers_jerk_and_keeps_constant_velocity(make_camera):
    rng = np.random.default_rng(0)
    F = 41
    cam = make_camera(F=F, moving=False)
    shaky_c = np.stack([np.linspace(0, 1, F), rng.normal(0, 0.02, F), rng.normal(0, 0.02, F)], 1)
    R = Rotation.from_euler("xyz", rng.normal(0, 1.0, (F, 3)), degrees=True).as_matrix()
    Ex = np.tile(np.eye(4), (F, 1, 1))
    Ex[:, :3, :3] = R
    Ex[:, :3, 3] = -np.einsum("fij,fj->fi", R, shaky_c)
    shaky = Camera(cam.intrinsics, Ex, cam.image_size)
    smooth = E.stabilize(shaky, sigma=4)
    assert E.camera_path_jerk(smooth) < 0.1 * E.camera_path_jerk(shaky)
    rot_jitter = lambda c: np.abs(np.diff(_angle_deg(c.extrinsics[:-1, :3, :3], c.extrinsics[1:, :3, :3]))).mean()  # noqa: E731
    assert rot_jitter(smooth) < 0.3 * rot_jitter(shaky)
    # a path at constant velocity about a fixed axis is already smooth: unchanged, even at the ends
    steady = E.pan(E.truck(cam, 1.0), 30)  # linear centres, constant angular velocity
    np.testing.assert_allclose(E.stabilize(steady, sigma=4).extrinsics, steady.extrinsics, atol=1e-9)


def test_stabilize_real_dycheck_path(windmill_dir):
    cam = load_dycheck_cameras(windmill_dir)
    out = E.stabilize(cam, sigma=3)
    assert E.camera_path_jerk(out) < 0.2 * E.camera_path_jerk(cam)
    # smoothing does not drag the path away: centres stay within a few mm of the original
    assert np.abs(camera_centers(out) - camera_centers(cam)).max() < 0.05


def test_static_freezes(make_camera):
    cam = make_camera(F=6)
    out = E.make_static(cam, 3)
    np.testing.assert_array_equal(out.extrinsics, np.repeat(cam.extrinsics[3:4], 6, 0))
    with pytest.raises(ValueError, match="frame must be in"):
        E.make_static(cam, 6)


def test_replace_path_with_real_dycheck_cameras(windmill_dir, make_camera):
    dy = load_dycheck_cameras(windmill_dir)
    P = dy.num_frames
    # same length, absolute: exactly the DyCheck matrices (intrinsics kept)
    cam = make_camera(F=P)
    out = E.replace_path(cam, dy, align="none")
    np.testing.assert_allclose(out.extrinsics, dy.extrinsics, atol=1e-6)
    np.testing.assert_array_equal(out.intrinsics, cam.intrinsics)
    # stretched onto 33 frames and aligned to the source's first camera: relative motion preserved
    cam = make_camera(F=33)
    out = E.replace_path(cam, dy, fit="stretch", align="first")
    np.testing.assert_allclose(out.extrinsics[0], cam.extrinsics[0], atol=1e-6)
    rel_dy = np.asarray(dy.extrinsics[-1], np.float64) @ invert_extrinsics(np.asarray(dy.extrinsics[:1], np.float64))[0]
    rel_out = out.extrinsics[-1] @ invert_extrinsics(out.extrinsics[:1])[0]
    np.testing.assert_allclose(rel_out, rel_dy, atol=1e-6)
    # interior frames are interpolated: frame 16 of 33 is DyCheck frame 138 (= 16 * 276/32)
    rel16 = np.asarray(dy.extrinsics[138], np.float64) @ invert_extrinsics(np.asarray(dy.extrinsics[:1], np.float64))[0]
    np.testing.assert_allclose(out.extrinsics[16] @ invert_extrinsics(out.extrinsics[:1])[0], rel16, atol=1e-6)
    # trimmed
    out = E.replace_path(make_camera(F=10), dy, fit="trim", align="none")
    np.testing.assert_allclose(out.extrinsics, dy.extrinsics[:10], atol=1e-6)
    with pytest.raises(ValueError, match="intrinsics: path needs the same image size"):
        E.replace_path(make_camera(F=10), dy, intrinsics="path")


def test_keyframes_slerp_and_ease(make_camera):
    cam = make_camera(F=11, moving=False)
    keys = [{"frame": 0}, {"frame": 10, "pan": 40, "dolly": 1.0}]
    lin = E.keyframes(cam, keys, ease="linear")
    eas = E.keyframes(cam, keys, ease="ease_in_out")
    R0 = cam.extrinsics[:, :3, :3]
    np.testing.assert_allclose(_angle_deg(R0, lin.extrinsics[:, :3, :3]), 4.0 * np.arange(11), atol=1e-6)
    np.testing.assert_allclose(eas.extrinsics[[0, 10]], lin.extrinsics[[0, 10]], atol=1e-12)
    np.testing.assert_allclose(_angle_deg(R0[:1], eas.extrinsics[5:6, :3, :3]), [20.0], atol=1e-6)
    assert _angle_deg(R0[:1], eas.extrinsics[1:2, :3, :3])[0] < 4.0 * 0.5  # eases in slowly
    np.testing.assert_allclose(camera_centers(lin)[5], camera_centers(lin)[[0, 10]].mean(0), atol=1e-12)
    # absolute key poses, held outside the keys
    E_key = np.asarray(E.pan(cam, 15, ease="constant").extrinsics[0])
    out = E.keyframes(cam, [{"frame": 3, "extrinsics": E_key}, {"frame": 7}], ease="linear")
    np.testing.assert_allclose(out.extrinsics[:4], np.repeat(E_key[None], 4, 0), atol=1e-12)
    np.testing.assert_allclose(out.extrinsics[7:], cam.extrinsics[7:], atol=1e-12)
    # offset mode keeps the underlying motion
    moving = make_camera(F=11)
    off = E.keyframes(moving, [{"frame": 0}, {"frame": 10, "truck": 0.5}], mode="offset", ease="linear")
    np.testing.assert_allclose(off.extrinsics[:, :3, :3], moving.extrinsics[:, :3, :3], atol=1e-12)


def test_camera_edit_leaves_world_untouched(make_camera, make_tracks):
    from trackedit_jax.geometry.edit_spec import apply_edit_spec, parse_edit_spec

    tr, cam = make_tracks(F=9), make_camera(F=9)
    spec = parse_edit_spec(
        {
            "camera": [
                {"op": "arc", "degrees": 30},
                {"op": "dolly", "distance": 0.5},
                {"op": "zoom", "factor": 1.2},
                {"op": "stabilize"},
                {"op": "keyframes", "keys": [{"frame": 0}, {"frame": 8, "tilt": 5}], "mode": "offset"},
            ]
        }
    )
    res = apply_edit_spec(spec, tr, cam)
    np.testing.assert_array_equal(res.tracks.xyz, tr.xyz)
    np.testing.assert_array_equal(res.tracks.visibility, tr.visibility)
    np.testing.assert_array_equal(res.tracks.ids, np.arange(tr.num_points))
    assert not np.allclose(res.camera.extrinsics, cam.extrinsics)
    # arc about a selection's per-frame centroid, through the spec
    spec = parse_edit_spec({"camera": [{"op": "arc", "degrees": 20, "pivot": {"ids": list(range(10))}}]})
    res = apply_edit_spec(spec, tr, cam)
    piv = E.selection_centroid(tr, E.select_ids(tr.num_points, range(10)))
    np.testing.assert_allclose(
        np.linalg.norm(camera_centers(res.camera) - piv, axis=-1),
        np.linalg.norm(camera_centers(cam) - piv, axis=-1),
        rtol=1e-5,
    )
    np.testing.assert_array_equal(res.tracks.xyz, tr.xyz)


def test_camera_path_files(tmp_path, make_camera, windmill_dir):
    from trackedit_jax.geometry.edit_spec import load_camera_path

    cam = make_camera(F=7)
    np.savez(tmp_path / "cams.npz", extrinsics=cam.extrinsics)
    (tmp_path / "cams.json").write_text(json.dumps(np.asarray(cam.extrinsics).tolist()))
    (tmp_path / "cams2.json").write_text(
        json.dumps(
            {
                "extrinsics": np.asarray(cam.extrinsics).tolist(),
                "intrinsics": np.asarray(cam.intrinsics).tolist(),
                "image_size": list(cam.image_size),
            }
        )
    )
    np.testing.assert_allclose(load_camera_path(tmp_path / "cams.npz"), cam.extrinsics)
    np.testing.assert_allclose(load_camera_path(tmp_path / "cams.json"), cam.extrinsics)
    c2 = load_camera_path(tmp_path / "cams2.json")
    assert isinstance(c2, Camera) and c2.image_size == cam.image_size
    assert load_camera_path(windmill_dir).num_frames == 277
    bad = np.asarray(cam.extrinsics).copy()
    bad[2, :3, :3] = 0
    np.savez(tmp_path / "bad.npz", extrinsics=bad)
    with pytest.raises(ValueError, match="non-invertible extrinsics at frame"):
        load_camera_path(tmp_path / "bad.npz")
