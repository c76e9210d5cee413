"""The canonical clip every real-data reader produces: video + Camera + Tracks (OpenCV, world-to-camera)."""

from __future__ import annotations

import dataclasses

import numpy as np

from trackedit_jax.geometry import Camera, Tracks


class IngestError(ValueError):
    """An input file that cannot be converted; the message names the file."""


@dataclasses.dataclass
class Clip:
    """One real video with its cameras and 3D tracks.

    video: (T, H, W, 3) uint8; camera: Camera with T frames and image_size (H, W);
    tracks: Tracks with T frames (world xyz, visibility); fps: frames per second; name: for keys/logs.
    """

    video: np.ndarray
    camera: Camera
    tracks: Tracks
    fps: float
    name: str
    source: str = ""
    depths: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    def validate(self) -> Clip:
        """Raise IngestError (naming the source file) unless every part agrees and is finite."""
        where = self.source or self.name

        def fail(msg):
            raise IngestError(f"{where}: {msg}")

        v = self.video
        if not isinstance(v, np.ndarray) or v.ndim != 4 or v.shape[-1] != 3 or v.dtype != np.uint8:
            fail(f"video must be (T, H, W, 3) uint8; got {getattr(v, 'shape', None)} {getattr(v, 'dtype', None)}")
        T = v.shape[0]
        if self.camera.num_frames != T:
            fail(f"the camera has {self.camera.num_frames} frames but the video has {T}")
        if self.tracks.num_frames != T:
            fail(f"the tracks have {self.tracks.num_frames} frames but the video has {T}")
        if tuple(self.camera.image_size) != tuple(v.shape[1:3]):
            fail(f"the camera's image size {self.camera.image_size} differs from the video's {v.shape[1:3]}")
        xyz = np.asarray(self.tracks.xyz)
        if not np.isfinite(xyz).all():
            f, n = np.argwhere(~np.isfinite(xyz))[0][:2]
            fail(f"tracks contain NaN/inf (first at frame {f}, track {n})")
        if not (np.isfinite(self.camera.intrinsics).all() and np.isfinite(self.camera.extrinsics).all()):
            fail("cameras contain NaN/inf")
        if not np.isfinite(self.fps) or self.fps <= 0:
            fail(f"fps must be positive; got {self.fps}")
        return self


def checked(path, fn):
    """Run fn(); re-raise ValueError/KeyError/OSError from a reader as IngestError naming `path`."""
    try:
        return fn()
    except IngestError:
        raise
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, OSError, TypeError, IndexError) as e:
        msg = str(e)
        if str(path) in msg:
            raise IngestError(msg) from e
        raise IngestError(f"{path}: {type(e).__name__}: {msg}") from e
