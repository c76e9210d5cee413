"""Video files in and out (mediapy over the ffmpeg that imageio-ffmpeg bundles), and resizing.

Videos in memory are (F, H, W, 3) uint8 here; models take float in [-1, 1] (`to_model_range`).
"""

from __future__ import annotations

import functools
import os
import pathlib
import tempfile

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif")


@functools.cache
def _mediapy():
    import imageio_ffmpeg
    import mediapy

    # No system ffmpeg is assumed; imageio-ffmpeg<0.8 ships one that mediapy can also read with.
    mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())
    return mediapy


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode a video file.

    Returns:
      frames: (F, H, W, 3) uint8 RGB.
      fps: frames per second stored in the file.
    Raises:
      FileNotFoundError if missing; ValueError if the file cannot be decoded or has no frames.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    media = _mediapy()
    try:
        video = media.read_video(str(path))
    except Exception as e:
        raise ValueError(
            f"{path}: cannot decode video ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    fps = float(getattr(video, "metadata", None).fps) if getattr(video, "metadata", None) else 0.0
    frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"{path}: decoded no frames")
    if frames.shape[-1] == 4:
        frames = frames[..., :3]
    return frames.astype(np.uint8, copy=False), fps


def readable_by_all(path: str | os.PathLike) -> None:
    """Give a file made by `tempfile.mkstemp` (mode 0600) the permissions of an ordinary new file
    (0666 less the umask) before it is renamed into place."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 16.0) -> pathlib.Path:
    """Encode (F, H, W, 3) uint8 (or float in [0, 1]) frames to `path` (h264 mp4, or gif by suffix).

    Written to a temporary file and renamed, so a failure never leaves a partial video behind.
    H and W are padded to even sizes for h264 by repeating the last row/column.
    """
    path = pathlib.Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3); got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.clip(np.round(frames.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    suffix = path.suffix.lower()
    if suffix != ".gif":
        ph, pw = frames.shape[1] % 2, frames.shape[2] % 2
        if ph or pw:
            frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix or ".mp4", dir=path.parent)
    os.close(fd)
    try:
        kw = {"codec": "gif"} if suffix == ".gif" else {}
        _mediapy().write_video(tmp, frames, fps=fps, **kw)
        readable_by_all(tmp)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resize_video(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (F, H, W, C) frames to size (H', W') with area (down) or bicubic (up) interpolation."""
    import cv2

    frames = np.asarray(frames)
    H, W = size
    if frames.shape[1:3] == (H, W):
        return frames
    interp = cv2.INTER_AREA if H * W < frames.shape[1] * frames.shape[2] else cv2.INTER_CUBIC
    out = np.stack([cv2.resize(f, (W, H), interpolation=interp) for f in frames])
    return out.reshape(out.shape[0], H, W, *frames.shape[3:])


def to_model_range(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> float32 in [-1, 1]."""
    return np.asarray(frames, np.float32) / 127.5 - 1.0


def from_model_range(video) -> np.ndarray:
    """float in [-1, 1] (..., 3) -> uint8."""
    return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
