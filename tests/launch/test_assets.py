"""launch/assets, the notebook's inputs: the clip is the first 17 frames of the real sheep video at half
size, and the committed track file is what `make_sheep_clip.py` computes from it; its points project
(through the file's own camera) onto the Lucas-Kanade positions they were lifted from."""

import importlib.util
import pathlib

import numpy as np

from trackedit_jax.eval.metrics import lucas_kanade
from trackedit_jax.geometry import load_tracks, project
from trackedit_jax.media import read_video, resize_video

ASSETS = pathlib.Path(__file__).resolve().parents[2] / "launch" / "assets"
spec = importlib.util.spec_from_file_location("make_sheep_clip", ASSETS / "make_sheep_clip.py")
make_sheep_clip = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_sheep_clip)


def test_clip_and_tracks_are_made_from_the_real_video(sheep_video):
    frames, fps = read_video(sheep_video)
    clip = make_sheep_clip.make_clip(frames)
    assert clip.shape == (17, 204, 362, 3)
    np.testing.assert_array_equal(clip, resize_video(frames[:17], (204, 362)))
    committed, committed_fps = read_video(ASSETS / "sheep_clip.mp4")
    assert committed.shape == clip.shape and committed_fps == fps
    # h264 at default quality: the decoded clip is close to the frames it was encoded from
    assert np.abs(committed.astype(np.float32) - clip).mean() < 4.0

    tracks, camera = make_sheep_clip.stand_in_tracks(clip)
    saved_tracks, saved_camera = load_tracks(ASSETS / "sheep_tracks.npz")
    np.testing.assert_allclose(saved_tracks.xyz, tracks.xyz, atol=1e-4)
    np.testing.assert_array_equal(saved_tracks.visibility, tracks.visibility)
    np.testing.assert_allclose(saved_camera.intrinsics, camera.intrinsics)
    assert saved_camera.image_size == (204, 362)


def test_tracks_project_onto_their_lucas_kanade_positions():
    clip, _ = read_video(ASSETS / "sheep_clip.mp4")
    tracks, camera = load_tracks(ASSETS / "sheep_tracks.npz")
    uv, depth = project(tracks.xyz, camera)
    np.testing.assert_allclose(depth, make_sheep_clip.DEPTH, rtol=1e-6)
    # frame 0 positions followed through the committed clip land where the later frames' points project
    followed = lucas_kanade(clip, np.asarray(uv[0]), window=15, levels=3)
    vis = np.asarray(tracks.visibility)
    err = np.linalg.norm(followed - np.asarray(uv), axis=-1)[vis]
    assert vis.mean() > 0.9 and np.median(err) < 0.5
