"""Read and write the canonical track file: the TAPIP3D / SpatialTrackerV2 result `.npz` layout.

Keys (T frames, N tracks):
  coords      (T, N, 3) float32  world coordinates
  extrinsics  (T, 4, 4) float32  world-to-camera, OpenCV axes
  intrinsics  (T, 3, 3) float32  pixels
  visibs      (T, N)    bool
  video       optional: (T, 3, H, W) float in [0, 1] as the trackers write it, or (T, H, W, 3) uint8
  depths      optional: (T, H, W) float32
  image_size  optional (2,) int: (H, W); written by us so files without video keep their grid size
  source_ids  optional (N,) int32: `Tracks.ids` (which source point each track came from)
The file is read with ``allow_pickle=False``: object arrays are refused.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile

import numpy as np

from trackedit_jax.geometry.types import Camera, Tracks

REQUIRED_KEYS = ("coords", "extrinsics", "intrinsics")


@dataclasses.dataclass
class TrackFile:
    """Everything a canonical track file holds. video is (T, H, W, 3) uint8, depths (T, H, W)."""

    tracks: Tracks
    camera: Camera
    video: np.ndarray | None = None
    depths: np.ndarray | None = None


def _video_to_uint8(video: np.ndarray) -> np.ndarray:
    """(T, 3, H, W) float [0, 1] or (T, H, W, 3) uint8/float -> (T, H, W, 3) uint8."""
    if video.ndim != 4:
        raise ValueError(f"video must be 4-D (T, H, W, 3) or (T, 3, H, W); got {video.shape}")
    if video.shape[-1] != 3 and video.shape[1] == 3:
        video = np.transpose(video, (0, 2, 3, 1))
    if video.shape[-1] != 3:
        raise ValueError(f"video must have 3 colour channels; got {video.shape}")
    if video.dtype == np.uint8:
        return video
    v = video.astype(np.float32)
    if v.max(initial=0.0) <= 1.0 + 1e-6:
        v = v * 255.0
    return np.clip(np.round(v), 0, 255).astype(np.uint8)


def load_track_file(path: str | os.PathLike) -> TrackFile:
    """Read a canonical track file (see module docstring) into `Tracks`, `Camera`, video, depths."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"track file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle; we never load pickle
        raise ValueError(f"{path}: holds pickled object arrays, which are refused ({e})") from e
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npz track file ({type(e).__name__}: {e})") from e
    with data:
        missing = [k for k in REQUIRED_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path}: missing key(s) {missing}; the file has {sorted(data.files)}")
        coords = data["coords"].astype(np.float32)
        if coords.ndim != 3 or coords.shape[-1] != 3:
            raise ValueError(f"{path}: 'coords' must be (T, N, 3); got {coords.shape}")
        T, N = coords.shape[:2]
        visibs = data["visibs"] if "visibs" in data.files else np.ones((T, N), bool)
        visibs = np.asarray(visibs)
        if visibs.ndim == 3 and visibs.shape[-1] == 1:
            visibs = visibs[..., 0]
        visibs = visibs > 0.5 if visibs.dtype != bool else visibs
        video = _video_to_uint8(data["video"]) if "video" in data.files else None
        depths = data["depths"].astype(np.float32) if "depths" in data.files else None
        if "image_size" in data.files:
            image_size = tuple(int(s) for s in data["image_size"])
        elif video is not None:
            image_size = video.shape[1:3]
        elif depths is not None:
            image_size = depths.shape[1:3]
        else:
            raise ValueError(f"{path}: no 'video', 'depths' or 'image_size' key, so the image size is unknown")
        ids = data["source_ids"].astype(np.int32) if "source_ids" in data.files else None
        intr = data["intrinsics"].astype(np.float32)
        extr = data["extrinsics"].astype(np.float32)
    for name, arr in (("intrinsics", intr), ("extrinsics", extr), ("visibs", visibs)):
        if arr.shape[0] != T:
            raise ValueError(f"{path}: '{name}' has {arr.shape[0]} frames but 'coords' has {T}")
    if video is not None and video.shape[0] != T:
        raise ValueError(f"{path}: 'video' has {video.shape[0]} frames but 'coords' has {T}")
    try:
        tracks = Tracks(coords, visibs, ids)
        camera = Camera(intr, extr, image_size)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return TrackFile(tracks, camera, video, depths)


def load_tracks(path: str | os.PathLike) -> tuple[Tracks, Camera]:
    """Read a canonical track file; returns (Tracks, Camera)."""
    f = load_track_file(path)
    return f.tracks, f.camera


def save_tracks(
    path: str | os.PathLike,
    tracks: Tracks,
    camera: Camera,
    *,
    video: np.ndarray | None = None,
    depths: np.ndarray | None = None,
) -> None:
    """Write a canonical track file atomically (a temp file renamed into place, never half-written).

    video, if given, is (T, H, W, 3) uint8 and is stored in the trackers' (T, 3, H, W) [0, 1] float
    layout would cost 4x the bytes, so we keep uint8 channels-last (readers accept both).
    """
    path = pathlib.Path(path)
    if tracks.num_frames != camera.num_frames:
        raise ValueError(f"tracks have {tracks.num_frames} frames but the camera has {camera.num_frames}")
    out = dict(
        coords=np.asarray(tracks.xyz, np.float32),
        visibs=np.asarray(tracks.visibility, bool),
        intrinsics=np.asarray(camera.intrinsics, np.float32),
        extrinsics=np.asarray(camera.extrinsics, np.float32),
        image_size=np.asarray(camera.image_size, np.int32),
    )
    if tracks.ids is not None:
        out["source_ids"] = np.asarray(tracks.ids, np.int32)
    if video is not None:
        video = _video_to_uint8(np.asarray(video))
        if video.shape[0] != tracks.num_frames:
            raise ValueError(f"video has {video.shape[0]} frames but tracks have {tracks.num_frames}")
        out["video"] = video
    if depths is not None:
        out["depths"] = np.asarray(depths, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez_compressed(tmp, **out)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
