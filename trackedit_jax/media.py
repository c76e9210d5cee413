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


# Decoded frames a video may fill (uint8 bytes): far above any clip the models take, and a bound on what a
# small file that declares hours of frames can make us allocate.
MAX_DECODED_VIDEO_BYTES = 8 << 30


class _TooLarge(ValueError):
    pass


def _ffmpeg_reason(e: BaseException) -> str:
    """The last line of an ffmpeg failure (mediapy puts all of ffmpeg's log, banner first, in the error)."""
    lines = [" ".join(line.split()) for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1][:300]}" if lines else type(e).__name__


def read_video(path: str | os.PathLike, *, max_bytes: int = MAX_DECODED_VIDEO_BYTES) -> tuple[np.ndarray, float]:
    """Decode a video file.

    Returns:
      frames: (F, H, W, 3) uint8 RGB.
      fps: frames per second stored in the file.
    Raises:
      FileNotFoundError if missing; ValueError (one line naming the file) if the file cannot be decoded,
      has no frames, or would decode to more than `max_bytes` of frames (checked before allocating).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    media = _mediapy()
    try:
        with media.VideoReader(str(path)) as reader:
            fps = float(reader.metadata.fps or 0.0)
            (h, w), n = reader.shape, int(reader.num_images)
            frame_bytes = h * w * 3
            if max(n, 1) * frame_bytes > max_bytes:
                raise _TooLarge(f"{path}: {n} frames of {w}x{h} exceed the {max_bytes}-byte decoding bound")
            frames = np.empty((max(n, 0), h, w, 3), np.uint8)
            count = 0
            for image in reader:
                if count == len(frames):  # more frames than the header pass counted
                    if (count + 1) * frame_bytes > max_bytes:
                        raise _TooLarge(f"{path}: more than {count} frames of {w}x{h} exceed the decoding bound")
                    frames = np.concatenate([frames, np.empty((max(count, 1), h, w, 3), np.uint8)])
                frames[count] = np.asarray(image)[..., :3]
                count += 1
    except _TooLarge:
        raise
    except Exception as e:
        if isinstance(e, MemoryError):
            raise
        raise ValueError(f"{path}: cannot decode video ({_ffmpeg_reason(e)})") from e
    if count == 0:
        raise ValueError(f"{path}: decoded no frames")
    return frames[:count], fps


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
        try:
            _mediapy().write_video(tmp, frames, fps=fps, **kw)
        except RuntimeError as e:  # ffmpeg failed: a full disk or a file-size limit kills it mid-write
            raise OSError(f"{path}: cannot write the video ({_ffmpeg_reason(e)})") from e
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
