"""Small synthetic scenes for the geometry tests (built here, checked against independent maths)."""

import numpy as np
import pytest

from trackedit_jax.geometry import Camera, Tracks
from trackedit_jax.geometry import edits as E


def _make_camera(F=9, H=96, W=128, f=100.0, moving=True, seed=0, dtype=np.float64):
    """A camera looking down +z from around the origin, drifting right and yawing slightly."""
    rng = np.random.default_rng(seed)
    K = np.tile(np.array([[f, 0.0, W / 2 - 0.3], [0.0, f * 1.02, H / 2 + 0.2], [0, 0, 1]]), (F, 1, 1))
    E = np.tile(np.eye(4), (F, 1, 1))
    if moving:
        from scipy.spatial.transform import Rotation

        ang = np.linspace(0, 6, F) + rng.normal(0, 0.2, F)
        R = Rotation.from_euler("y", ang[:, None], degrees=True).as_matrix()
        c = np.stack([np.linspace(0, 0.3, F), rng.normal(0, 0.01, F), np.zeros(F)], axis=1)
        E[:, :3, :3] = R
        E[:, :3, 3] = -np.einsum("fij,fj->fi", R, c)
    return Camera(K.astype(dtype), E.astype(dtype), (H, W))


def _make_tracks(F=9, N=80, seed=0, dtype=np.float64, moving=10):
    """N points in a box 3..6 in front of the origin; the first `moving` translate to the right."""
    rng = np.random.default_rng(seed)
    base = rng.uniform([-1.2, -0.9, 3.0], [1.2, 0.9, 6.0], (N, 3))
    xyz = np.broadcast_to(base, (F, N, 3)).copy()
    xyz[:, :moving] += np.linspace(0, 1, F)[:, None, None] * np.array([0.4, -0.1, 0.2])
    vis = rng.uniform(size=(F, N)) > 0.2
    return Tracks(xyz.astype(dtype), vis)


@pytest.fixture
def make_camera():
    return _make_camera


@pytest.fixture
def make_tracks():
    return _make_tracks


@pytest.fixture
def scene():
    return _make_tracks(), _make_camera()


def _rigid_scene(F=17, seed=1, noise=0.003):
    """Static background + two bodies with different rigid motions; returns tracks and true labels."""
    rng = np.random.default_rng(seed)
    bodies = [
        (120, [0, 0, 6], None),
        (50, [1.2, 0.2, 4.5], ([0, 1, 0], 70, [0, -0.4, 0.3])),
        (35, [-1.0, -0.3, 4.0], ([1, 0.3, 0], -50, [0.5, 0, 0])),
    ]
    xyz, labels = [], []
    for k, (n, c, motion) in enumerate(bodies):
        pts = rng.normal(size=(n, 3)) * [0.6, 0.4, 0.3] + c
        if motion is None:
            traj = np.broadcast_to(pts, (F, n, 3))
        else:
            axis, deg, move = motion
            R = E.rotation_matrices(axis, np.linspace(0, deg, F))
            traj = np.einsum("fij,nj->fni", R, pts - c) + c + np.linspace(0, 1, F)[:, None, None] * move
        xyz.append(traj)
        labels.append(np.full(n, k))
    xyz = np.concatenate(xyz, 1) + rng.normal(size=(F, 205, 3)) * noise
    return Tracks(xyz, np.ones((F, 205), bool)), np.concatenate(labels)


@pytest.fixture
def rigid_scene():
    """`_rigid_scene` as a fixture: call it with (F, seed, noise)."""
    return _rigid_scene
