"""Make the notebook's real clip and its track file from TAPIP3D's demo video `sheep.mp4`.

    python launch/assets/make_sheep_clip.py --video ../shared/data/videos/sheep.mp4 --out launch/assets

Writes `sheep_clip.mp4` (the first 17 frames at half size, 362x204, 10 fps) and `sheep_tracks.npz` (the
canonical track layout): points OpenCV finds good to track on frame 0, followed through the clip with
pyramidal Lucas-Kanade, lifted to 3D at a constant depth of 3 units under a static pinhole camera with a
60-degree horizontal field of view. These are stand-in 3D tracks (no depth estimate, the handheld camera's
motion folded into the points'); TAPIP3D or SpatialTrackerV2 output in the same layout replaces them.
"""

from __future__ import annotations

import argparse
import pathlib

import cv2
import numpy as np

from trackedit_jax.eval.metrics import lucas_kanade
from trackedit_jax.geometry import Camera, Tracks, save_tracks
from trackedit_jax.media import read_video, resize_video, write_video

FRAMES = 17  # the built-in model's clip length (4k + 1)
SIZE = (204, 362)  # (H, W): half of 406x724, rounded to even sides for h264
DEPTH = 3.0
FOV_DEGREES = 60.0
MAX_POINTS = 400


def make_clip(video: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 -> the first FRAMES frames resized to SIZE, (FRAMES, 204, 362, 3) uint8."""
    if video.shape[0] < FRAMES:
        raise ValueError(f"video has {video.shape[0]} frames; need at least {FRAMES}")
    return resize_video(video[:FRAMES], SIZE)


def stand_in_tracks(clip: np.ndarray) -> tuple[Tracks, Camera]:
    """Lucas-Kanade 2D tracks of `clip` (F, H, W, 3) uint8 lifted to constant depth: Tracks (F, N, 3)
    float32 world points with (F, N) visibility, and a static Camera (identity extrinsics)."""
    F, H, W, _ = clip.shape
    gray = cv2.cvtColor(clip[0], cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(gray, maxCorners=MAX_POINTS, qualityLevel=0.01, minDistance=6)
    uv = lucas_kanade(clip, corners.reshape(-1, 2), window=15, levels=3)  # (F, N, 2) pixels
    visible = np.all((uv >= 0) & (uv <= np.array([W - 1, H - 1], np.float32)), axis=-1)
    f = 0.5 * W / np.tan(np.radians(FOV_DEGREES) / 2)
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]], np.float32)
    xyz = np.stack(
        [(uv[..., 0] - K[0, 2]) / f * DEPTH, (uv[..., 1] - K[1, 2]) / f * DEPTH, np.full(uv.shape[:2], DEPTH)], -1
    ).astype(np.float32)
    camera = Camera(np.repeat(K[None], F, 0), np.repeat(np.eye(4, dtype=np.float32)[None], F, 0), (H, W))
    return Tracks(xyz, visible), camera


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", required=True, help="sheep.mp4 (TAPIP3D demo_inputs)")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent), help="output folder")
    args = p.parse_args()
    video, fps = read_video(args.video)
    clip = make_clip(video)
    tracks, camera = stand_in_tracks(clip)
    out = pathlib.Path(args.out)
    write_video(out / "sheep_clip.mp4", clip, fps or 10.0)
    save_tracks(out / "sheep_tracks.npz", tracks, camera)
    print(f"wrote {out / 'sheep_clip.mp4'} {clip.shape} and {out / 'sheep_tracks.npz'} ({tracks.num_points} points)")


if __name__ == "__main__":
    main()
