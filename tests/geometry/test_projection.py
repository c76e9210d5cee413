"""Projection against OpenCV on real DyCheck cameras, and exact round trips."""
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trackedit_jax.geometry import Camera, load_dycheck_cameras, project, unproject, pixels_to_grid, grid_to_pixels


def test_project_matches_cv2_on_dycheck(windmill_dir):
    cam = load_dycheck_cameras(windmill_dir)
    assert cam.image_size == (960, 720)
    rng = np.random.default_rng(0)
    F = cam.num_frames
    # points in front of each camera: random pixels lifted to random depths
    uv = rng.uniform([0, 0], [720, 960], size=(F, 64, 2))
    depth = rng.uniform(0.2, 3.0, size=(F, 64))
    xyz = unproject(uv, depth, Camera(cam.intrinsics.astype(np.float64), cam.extrinsics.astype(np.float64), cam.image_size))
    uv_ours, z = project(xyz, Camera(cam.intrinsics.astype(np.float64), cam.extrinsics.astype(np.float64), cam.image_size))
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
