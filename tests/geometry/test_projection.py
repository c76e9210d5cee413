"""Projection against OpenCV on real DyCheck cameras, and exact round trips."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trackedit_jax.geometry import Camera, grid_to_pixels, load_dycheck_cameras, pixels_to_grid, project, unproject


def test_project_matches_cv2_on_dycheck(windmill_dir):
    cam = load_dycheck_cameras(windmill_dir)
    assert cam.image_size == (960, 720)
    rng = np.random.default_rng(0)
    F = cam.num_frames
    # points in front of each camera: random pixels lifted to random depths
    uv = rng.uniform([0, 0], [720, 960], size=(F, 64, 2))
    depth = rng.uniform(0.2, 3.0, size=(F, 64))
    xyz = unproject(
        uv, depth, Camera(cam.intrinsics.astype(np.float64), cam.extrinsics.astype(np.float64), cam.image_size)
    )
    uv_ours, z = project(
        xyz, Camera(cam.intrinsics.astype(np.float64), cam.extrinsics.astype(np.float64), cam.image_size)
    )
    err = 0.0
    for f in range(0, F, 7):
        R = cam.extrinsics[f, :3, :3].astype(np.float64)
        t = cam.extrinsics[f, :3, 3].astype(np.float64)
        rvec, _ = cv2.Rodrigues(R)
        ref, _ = cv2.projectPoints(xyz[f], rvec, t, cam.intrinsics[f].astype(np.float64), None)
        err = max(err, np.abs(ref[:, 0, :] - uv_ours[f]).max())
    assert err < 1e-3
    np.testing.assert_allclose(z, depth, rtol=1e-5)  # R from float32 JSON is orthonormal to ~1e-7


def test_project_jit_matches_numpy():
    rng = np.random.default_rng(1)
    K = np.tile(np.array([[300.0, 0, 40], [0, 310, 30], [0, 0, 1]], np.float32), (3, 1, 1))
    E = np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))
    E[:, :3, 3] = rng.normal(size=(3, 3))
    cam = Camera(K, E, (60, 80))
    xyz = rng.normal(size=(3, 10, 3)).astype(np.float32) + [0, 0, 6]
    uv_np, d_np = project(xyz, cam)
    cam_j = jax.tree.map(jnp.asarray, cam)
    uv_j, d_j = jax.jit(project)(jnp.asarray(xyz), cam_j)
    np.testing.assert_allclose(uv_j, uv_np, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(d_j, d_np, rtol=1e-6)


def test_grid_round_trip_and_corners():
    uv = np.array([[[-0.5, -0.5], [79.5, 59.5]]], np.float32)
    g = pixels_to_grid(uv, (60, 80))
    np.testing.assert_allclose(g, [[[-1, -1], [1, 1]]], atol=1e-6)
    np.testing.assert_allclose(grid_to_pixels(g, (60, 80)), uv, atol=1e-5)


def test_camera_rejects_singular_extrinsics():
    K = np.tile(np.eye(3, dtype=np.float32), (2, 1, 1))
    E = np.tile(np.eye(4, dtype=np.float32), (2, 1, 1))
    E[1, :3, :3] = 0
    with pytest.raises(ValueError, match="not invertible at frame"):
        Camera(K, E, (8, 8))


# ---------------------------------------------------------------------------------------------
# property tests (hypothesis): random cameras, pixels and depths
# ---------------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

_floats = dict(allow_nan=False, allow_infinity=False)


@st.composite
def cameras(draw, F=2, skew=True):
    fx = draw(st.floats(50, 3000, **_floats))
    fy = fx * draw(st.floats(0.8, 1.25, **_floats))
    s = draw(st.floats(-5, 5, **_floats)) if skew else 0.0
    H = draw(st.integers(8, 1200))
    W = draw(st.integers(8, 1600))
    cx = draw(st.floats(0, W, **_floats))
    cy = draw(st.floats(0, H, **_floats))
    q = draw(
        arrays(np.float64, (F, 4), elements=st.floats(-1, 1, **_floats)).filter(
            lambda a: (np.linalg.norm(a, axis=1) > 0.1).all()
        )
    )
    t = draw(arrays(np.float64, (F, 3), elements=st.floats(-10, 10, **_floats)))
    K = np.tile(np.array([[fx, s, cx], [0, fy, cy], [0, 0, 1.0]]), (F, 1, 1))
    E = np.tile(np.eye(4), (F, 1, 1))
    E[:, :3, :3] = Rotation.from_quat(q).as_matrix()
    E[:, :3, 3] = t
    return Camera(K, E, (H, W))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cam=cameras(), seed=st.integers(0, 2**31 - 1))
def test_unproject_then_project_round_trips(cam, seed):
    rng = np.random.default_rng(seed)
    H, W = cam.image_size
    uv = rng.uniform([-0.5, -0.5], [W - 0.5, H - 0.5], (2, 16, 2))
    depth = rng.uniform(0.05, 50.0, (2, 16))
    xyz = unproject(uv, depth, cam)
    uv2, d2 = project(xyz, cam)
    np.testing.assert_allclose(uv2, uv, atol=1e-6 * max(H, W))
    np.testing.assert_allclose(d2, depth, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cam=cameras(), seed=st.integers(0, 2**31 - 1))
def test_project_then_unproject_round_trips(cam, seed):
    rng = np.random.default_rng(seed)
    cam_pts = rng.uniform([-3, -3, 0.1], [3, 3, 30], (2, 16, 3))
    from trackedit_jax.geometry import camera_to_world

    xyz = camera_to_world(cam_pts, cam.extrinsics)
    uv, d = project(xyz, cam)
    back = unproject(uv, d, cam)
    np.testing.assert_allclose(back, xyz, atol=1e-8 * (1 + np.abs(xyz).max()))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(cam=cameras(skew=False), seed=st.integers(0, 2**31 - 1))
def test_project_matches_cv2_on_random_cameras(cam, seed):
    rng = np.random.default_rng(seed)
    from trackedit_jax.geometry import camera_to_world

    # cv2 takes a rotation vector; matrix -> vector is ill-conditioned near 180 degrees, so both sides use
    # the matrix cv2 rebuilds from the vector
    rvecs = [cv2.Rodrigues(R)[0] for R in cam.extrinsics[:, :3, :3]]
    E = cam.extrinsics.copy()
    E[:, :3, :3] = [cv2.Rodrigues(r)[0] for r in rvecs]
    cam = Camera(cam.intrinsics, E, cam.image_size)
    xyz = camera_to_world(rng.uniform([-3, -3, 0.2], [3, 3, 30], (2, 16, 3)), cam.extrinsics)
    uv, _ = project(xyz, cam)
    for f in range(2):
        ref, _ = cv2.projectPoints(xyz[f], rvecs[f], cam.extrinsics[f, :3, 3], cam.intrinsics[f], None)
        np.testing.assert_allclose(uv[f], ref[:, 0], rtol=1e-9, atol=1e-6)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    H=st.integers(1, 2000),
    W=st.integers(1, 2000),
    uv=arrays(np.float64, (5, 2), elements=st.floats(-1e4, 1e4, **_floats)),
)
def test_grid_round_trip_property(H, W, uv):
    g = pixels_to_grid(uv, (H, W))
    np.testing.assert_allclose(grid_to_pixels(g, (H, W)), uv, atol=1e-9 * (1 + np.abs(uv).max()))
    # pixel-space extent [-0.5, W-0.5] maps linearly onto [-1, 1]
    np.testing.assert_allclose(g[:, 0], (uv[:, 0] + 0.5) / W * 2 - 1, rtol=1e-12, atol=1e-12)


def test_unproject_jit_matches_numpy():
    rng = np.random.default_rng(3)
    K = np.tile(np.array([[300.0, 2.0, 40], [0, 310, 30], [0, 0, 1]], np.float32), (3, 1, 1))
    E = np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))
    E[:, :3, 3] = rng.normal(size=(3, 3))
    cam = Camera(K, E, (60, 80))
    uv = rng.uniform(0, 60, (3, 7, 2)).astype(np.float32)
    d = rng.uniform(1, 5, (3, 7)).astype(np.float32)
    ref = unproject(uv, d, cam)
    out = jax.jit(unproject)(jnp.asarray(uv), jnp.asarray(d), jax.tree.map(jnp.asarray, cam))
    assert isinstance(out, jax.Array)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
from trackedit_jax.geometry import Tracks, check_frame_counts, validate_inputs  # noqa: E402


def _cam(F=3):
    K = np.tile(np.array([[100.0, 0, 32], [0, 100, 24], [0, 0, 1]]), (F, 1, 1))
    return Camera(K, np.tile(np.eye(4), (F, 1, 1)), (48, 64))


@pytest.mark.parametrize("value,kind", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_nonfinite_track_coordinates_are_named(value, kind):
    xyz = np.ones((3, 5, 3))
    xyz[1, 2, 0] = value
    with pytest.raises(ValueError, match=rf"NaN or inf .*{kind} at frame 1, point 2"):
        validate_inputs(xyz, _cam())
    with pytest.raises(ValueError, match="NaN or inf"):
        Tracks(xyz, np.ones((3, 5), bool))


def test_zero_points_are_named():
    with pytest.raises(ValueError, match="N = 0"):
        validate_inputs(np.zeros((3, 0, 3)), _cam())
    with pytest.raises(ValueError, match="N = 0"):
        Tracks(np.zeros((3, 0, 3)), np.zeros((3, 0), bool))


def test_frame_count_mismatch_is_named():
    with pytest.raises(ValueError, match="frame count mismatch: tracks F=4, camera F=3"):
        validate_inputs(np.ones((4, 5, 3)), _cam(3))
    with pytest.raises(ValueError, match="video F=2"):
        validate_inputs(np.ones((3, 5, 3)), _cam(3), video=np.zeros((2, 48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="frame"):
        project(np.ones((4, 5, 3)), _cam(3))
    assert check_frame_counts(tracks=5, camera=5, video=None) == 5


def _bad_extrinsics(kind):
    E = np.tile(np.eye(4), (3, 1, 1))
    if kind == "singular":
        E[2, :3, :3] = [[1, 0, 0], [0, 1, 0], [1, 1, 0]]
    elif kind == "zero":
        E[1, :3, :3] = 0
    elif kind == "scaled":
        E[1, :3, :3] *= 2
    elif kind == "reflection":
        E[1, 2, 2] = -1
    elif kind == "last_row":
        E[0, 3, 0] = 1
    return E


@pytest.mark.parametrize(
    "kind,msg",
    [
        ("singular", r"non-invertible extrinsics at frame\(s\) \[2\]"),
        ("zero", r"non-invertible extrinsics at frame\(s\) \[1\]"),
        ("scaled", "not a rigid transform at frame"),
        ("reflection", "reflection"),
        ("last_row", "last row"),
    ],
)
def test_bad_extrinsics_are_named(kind, msg):
    from trackedit_jax.geometry import check_extrinsics

    with pytest.raises(ValueError, match=msg):
        check_extrinsics(_bad_extrinsics(kind))


def test_validate_inputs_rejects_singular_camera_and_bad_intrinsics():
    cam = _cam()
    bad = Camera.__new__(Camera)  # bypass the constructor's own check to reach validate_inputs
    object.__setattr__(bad, "intrinsics", cam.intrinsics)
    object.__setattr__(bad, "extrinsics", _bad_extrinsics("zero"))
    object.__setattr__(bad, "image_size", cam.image_size)
    with pytest.raises(ValueError, match="camera extrinsics: non-invertible"):
        validate_inputs(np.ones((3, 5, 3)), bad)
    K = cam.intrinsics.copy()
    K[0, 0, 0] = -1
    with pytest.raises(ValueError, match="focal lengths must be positive"):
        validate_inputs(np.ones((3, 5, 3)), Camera(K, cam.extrinsics, cam.image_size))
