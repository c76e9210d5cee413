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
The file is read by `read_npz`: no pickle (object arrays are refused) and no allocation beyond what the
file holds (each member's declared shape is checked against its bytes before reading).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import tempfile
import zipfile

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
    if video.dtype.kind == "f" and not np.isfinite(video).all():
        raise ValueError("video contains NaN or inf")
    with np.errstate(over="ignore"):  # float64 beyond float32's range clips to 255 below
        v = video.astype(np.float32)
    if v.max(initial=0.0) <= 1.0 + 1e-6:
        v = v * 255.0
    return np.clip(np.round(v), 0, 255).astype(np.uint8)


# Element kinds a member may hold: bool, ints, floats, complex, bytes and str (never objects, which need
# pickle, nor zero-size or structured items, whose element count costs no bytes).
_NPZ_KINDS = "biufcSU"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _read_npy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, object_loader) -> np.ndarray:
    with zf.open(info) as f:
        return _read_npy(f, info.file_size, object_loader)


def _read_npy(f, size: int, object_loader=None) -> np.ndarray:
    """A `.npy` stream of `size` bytes, its declared size checked against the bytes it holds before any
    allocation (numpy's own reader allocates what the header declares first)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    available = size - f.tell()
    if dtype.hasobject:
        if object_loader is None:
            raise ValueError("holds a pickled object array, which is refused (no pickle is loaded)")
        arr = object_loader(f.read(max(available, 0)))
        if not isinstance(arr, np.ndarray) or arr.shape != shape:
            raise ValueError(f"the object array does not match its header shape {shape}")
        return arr
    if dtype.kind not in _NPZ_KINDS or dtype.itemsize == 0 or dtype.fields is not None or dtype.subdtype:
        raise ValueError(f"dtype {dtype.str} is not a plain numeric or string dtype")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > available:
        raise ValueError(f"header declares shape {shape} {dtype.str} ({nbytes} bytes) but holds only {available} bytes")
    buf = bytearray(nbytes)
    view, got = memoryview(buf), 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            raise ValueError(f"truncated: {got} of {nbytes} array bytes")
        got += n
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


def read_npz(
    path: str | os.PathLike, *, object_loaders: dict | None = None, what: str = ".npz (zip) file"
) -> dict[str, np.ndarray]:
    """Every member of an `.npz` file as a numpy array, read without pickle and without allocating more
    than the file holds.

    Args:
      path: the file.
      object_loaders: {member name: function(bytes) -> ndarray} for members that are pickled object
        arrays (only the restricted loaders of data set formats that need them); any other object
        member is refused.
      what: what the file is, for the message when it is no zip file.
    Raises:
      FileNotFoundError if missing; ValueError (one line naming the file and member) for anything else.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    loaders = object_loaders or {}
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:
        if isinstance(e, MemoryError):
            raise
        raise ValueError(f"{path}: not a readable {what} ({_one_line(e)})") from e
    out: dict[str, np.ndarray] = {}
    with zf:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key in out:
                raise ValueError(f"{path}: member {key!r} appears twice")
            try:
                out[key] = _read_npy_member(zf, info, loaders.get(key))
            except MemoryError:
                raise
            except Exception as e:  # zipfile, zlib, numpy header or loader errors: a malformed member
                raise ValueError(f"{path}: member {key!r}: {_one_line(e)}") from e
    return out


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """A `.npy` file read like the members of `read_npz`: no pickle, no allocation beyond what the file
    holds. Raises FileNotFoundError, or ValueError (one line naming the file)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with open(path, "rb") as f:
            return _read_npy(f, os.fstat(f.fileno()).st_size)
    except MemoryError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npy file ({_one_line(e)})") from e


def _member(data: dict, key: str, path: pathlib.Path, *, kinds: str = "biuf") -> np.ndarray:
    a = data[key]
    if a.dtype.kind not in kinds:
        raise ValueError(f"{path}: {key!r} must be numeric; got dtype {a.dtype.str}")
    return a


def load_track_file(path: str | os.PathLike) -> TrackFile:
    """Read a canonical track file (see module docstring) into `Tracks`, `Camera`, video, depths."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"track file not found: {path}")
    data = read_npz(path, what=".npz track file")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; the file has {sorted(data)}")
    coords = _member(data, "coords", path).astype(np.float32)
    if coords.ndim != 3 or coords.shape[-1] != 3:
        raise ValueError(f"{path}: 'coords' must be (T, N, 3); got {coords.shape}")
    T, N = coords.shape[:2]
    visibs = _member(data, "visibs", path) if "visibs" in data else np.ones((T, N), bool)
    if visibs.ndim == 3 and visibs.shape[-1] == 1:
        visibs = visibs[..., 0]
    visibs = visibs > 0.5 if visibs.dtype != bool else visibs
    try:
        video = _video_to_uint8(_member(data, "video", path)) if "video" in data else None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    depths = _member(data, "depths", path).astype(np.float32) if "depths" in data else None
    if depths is not None and depths.ndim != 3:
        raise ValueError(f"{path}: 'depths' must be (T, H, W); got {depths.shape}")
    if "image_size" in data:
        size = _member(data, "image_size", path, kinds="iu")
        if size.shape != (2,):
            raise ValueError(f"{path}: 'image_size' must be 2 integers (H, W); got shape {size.shape}")
        image_size = tuple(int(s) for s in size)
    elif video is not None:
        image_size = video.shape[1:3]
    elif depths is not None:
        image_size = depths.shape[1:3]
    else:
        raise ValueError(f"{path}: no 'video', 'depths' or 'image_size' key, so the image size is unknown")
    ids = None
    if "source_ids" in data:
        ids = _member(data, "source_ids", path, kinds="iu")
        if ids.shape != (N,) or (N and (ids.min() < 0 or ids.max() >= N)):
            raise ValueError(f"{path}: 'source_ids' must be (N,) = ({N},) indices in [0, {N}); got shape {ids.shape}")
        ids = ids.astype(np.int32)
    intr = _member(data, "intrinsics", path).astype(np.float32)
    extr = _member(data, "extrinsics", path).astype(np.float32)
    for name, arr in (("intrinsics", intr), ("extrinsics", extr), ("visibs", visibs)):
        if arr.ndim == 0 or arr.shape[0] != T:
            raise ValueError(f"{path}: '{name}' has shape {arr.shape} but 'coords' has {T} frames")
    if video is not None and video.shape[0] != T:
        raise ValueError(f"{path}: 'video' has {video.shape[0]} frames but 'coords' has {T}")
    if depths is not None and depths.shape[0] != T:
        raise ValueError(f"{path}: 'depths' has {depths.shape[0]} frames but 'coords' has {T}")
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
