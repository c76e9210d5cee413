"""Readers that convert real tracker outputs and data sets into the canonical `Clip`.

  read_tapip3d(path)    TAPIP3D / SpatialTrackerV2 result .npz: coords (T,N,3) world, extrinsics (T,4,4)
                        world-to-camera, intrinsics (T,3,3), visibs (T,N), video (T,3,H,W) [0,1] or
                        (T,H,W,3) uint8 (read pickle-free by trackedit_jax.geometry.load_track_file).
  read_tapvid3d(path)   TAPVid-3D .npz: images_jpeg_bytes (T JPEGs), tracks_XYZ (T,N,3) in each frame's
                        camera coordinates, visibility (T,N), fx_fy_cx_cy (4,), optional extrinsics_w2c.
  read_kubric(path)     a Kubric MOVi example flattened to .npz ("camera/positions", ...; c2w OpenGL
                        cameras, wxyz quaternions, ray-length depth); 3D tracks are lifted from depth
                        and carried by the instances' rigid poses.
  read_dycheck(dir)     a DyCheck iPhone scene (camera/<id>.json, rgb/<k>x/<id>.png) plus a canonical
                        track file with the same frames (DyCheck ships no 3D tracks).

Pickle: TAPVid-3D stores `images_jpeg_bytes` as a numpy object array, whose .npy payload is a pickle;
it is the data set's own format. We read that one member with a restricted unpickler that can only
rebuild a numpy array of bytes (every global it meets is an inert stand-in; any other global raises),
and every other member without pickle (`trackedit_jax.geometry.io.read_npz`). No other reader unpickles.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import pickle
import struct
import zipfile

import numpy as np

from data_pipeline.real.clip import Clip, IngestError, checked
from trackedit_jax.geometry import Camera, Tracks, invert_extrinsics, load_track_file
from trackedit_jax.geometry.io import read_npz


# ----------------------------------------------------------------------------- TAPIP3D / SpaTrackerV2
def read_tapip3d(path: str | os.PathLike, fps: float = 10.0) -> Clip:
    """A TAPIP3D / SpatialTrackerV2 result file (must include `video`)."""
    path = pathlib.Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise IngestError(f"{path}: not an .npz (zip) file")
    f = checked(path, lambda: load_track_file(path))
    if f.video is None:
        raise IngestError(f"{path}: no 'video' key; a training pair needs the frames")
    return Clip(f.video, f.camera, f.tracks, float(fps), path.stem, str(path), f.depths).validate()


# ----------------------------------------------------------------------------- TAPVid-3D
class _Tag:
    """What the restricted unpickler hands out for `numpy.ndarray` and `numpy.dtype`: inert markers that
    only `_reconstruct` and BUILD below accept (calling them does nothing, so no gadget can allocate)."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *args):
        if self.name == "dtype" and args[:1] == ("O8",):
            return _Tag("object dtype")
        raise pickle.UnpicklingError(f"refusing to call numpy.{self.name}{args!r:.80}")

    def __setstate__(self, state):  # the dtype's BUILD (byte order, flags): nothing to keep
        if self.name != "object dtype":
            raise pickle.UnpicklingError(f"refusing to set the state of numpy.{self.name}")


class _PendingObjectArray:
    """The array `_reconstruct` starts; BUILD fills it from (version, shape, dtype, fortran, items)."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("unexpected object-array state")
        _, shape, dtype, _, items = state
        if not (isinstance(dtype, _Tag) and dtype.name == "object dtype"):
            raise pickle.UnpicklingError("the array's dtype is not object")
        if not (isinstance(shape, tuple) and all(type(s) is int and s >= 0 for s in shape)):
            raise pickle.UnpicklingError(f"bad array shape {shape!r:.80}")
        if not isinstance(items, list) or len(items) != math.prod(shape):
            raise pickle.UnpicklingError(f"shape {shape} does not match the number of items")
        if any(not isinstance(b, bytes) for b in items):
            raise pickle.UnpicklingError("the array holds something other than byte strings")
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        self.array = arr.reshape(shape)


def _reconstruct(cls, shape, typecode):
    if not (isinstance(cls, _Tag) and cls.name == "ndarray" and shape == (0,) and typecode in (b"b", "b")):
        raise pickle.UnpicklingError("refusing an array reconstruction other than numpy's own")
    return _PendingObjectArray()


def _latin1(text, encoding):  # protocol-2 pickles spell bytes as _codecs.encode(str, "latin1")
    if not (isinstance(text, str) and encoding == "latin1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than str -> latin1")
    return text.encode("latin1")


class _BytesArrayUnpickler(pickle._Unpickler):
    """Rebuilds only a numpy object array of byte strings, the layout numpy writes for one; every
    global resolves to an inert stand-in above and any other global raises. The pure-Python unpickler
    is the base because its memo is a dict (the C one sizes an array by the largest memo index)."""

    GLOBALS = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _Tag("ndarray"),
        ("numpy", "dtype"): _Tag("dtype"),
        ("_codecs", "encode"): _latin1,
    }

    def find_class(self, module, name):
        try:
            return self.GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(f"refusing to unpickle {module!s:.80}.{name!s:.80}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids")

    def _refuse_bytearray8(self):  # it allocates the length it declares before reading: not in numpy's pickles
        raise pickle.UnpicklingError("refusing BYTEARRAY8")

    dispatch = {**pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: _refuse_bytearray8}


def load_bytes_object_array(data: bytes) -> np.ndarray:
    """The pickle payload of a `.npy` object array of byte strings (TAPVid-3D's `images_jpeg_bytes`)
    -> (T,) object array of bytes. Raises `pickle.UnpicklingError` for anything else."""
    try:
        out = _BytesArrayUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:  # one line: STACK_GLOBAL names may hold line breaks
        raise pickle.UnpicklingError(" ".join(str(e).split())) from e
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error, RecursionError) as e:
        raise pickle.UnpicklingError(f"malformed pickle ({type(e).__name__}: {' '.join(str(e).split())})") from e
    if not isinstance(out, _PendingObjectArray) or out.array is None:
        raise pickle.UnpicklingError("the pickle is not a numpy object array of byte strings")
    return out.array


def _load_npz_members(path: pathlib.Path, bytes_pickle_members=()) -> dict:
    try:
        return read_npz(path, object_loaders={k: load_bytes_object_array for k in bytes_pickle_members})
    except ValueError as e:
        raise IngestError(str(e)) from e


def _decode_jpegs(blobs, path) -> np.ndarray:
    import cv2

    frames = []
    for i, b in enumerate(blobs):
        img = cv2.imdecode(np.frombuffer(bytes(b), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise IngestError(f"{path}: images_jpeg_bytes[{i}] is not a decodable image")
        frames.append(img[..., ::-1])
    if len({f.shape for f in frames}) != 1:
        raise IngestError(f"{path}: frames have different sizes {sorted({f.shape for f in frames})}")
    return np.stack(frames)


def read_tapvid3d(path: str | os.PathLike, fps: float = 10.0) -> Clip:
    """A TAPVid-3D annotation file. World = the first frame's camera unless `extrinsics_w2c` is given."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TAPVid-3D file not found: {path}")
    d = _load_npz_members(path, bytes_pickle_members=("images_jpeg_bytes",))
    for k in ("images_jpeg_bytes", "tracks_XYZ", "visibility", "fx_fy_cx_cy"):
        if k not in d:
            raise IngestError(f"{path}: missing key {k!r} (TAPVid-3D files have {sorted(d)})")
    for k in ("tracks_XYZ", "visibility", "fx_fy_cx_cy", "extrinsics_w2c"):
        if k in d and d[k].dtype.kind not in "biuf":
            raise IngestError(f"{path}: {k!r} must be numeric; got dtype {d[k].dtype.str}")
    if d["fx_fy_cx_cy"].size < 4:
        raise IngestError(f"{path}: fx_fy_cx_cy must hold 4 numbers; got shape {d['fx_fy_cx_cy'].shape}")
    if d["images_jpeg_bytes"].ndim != 1 or d["images_jpeg_bytes"].size == 0:
        raise IngestError(f"{path}: images_jpeg_bytes must be (T,) >= 1 JPEGs; got {d['images_jpeg_bytes'].shape}")
    video = _decode_jpegs(d["images_jpeg_bytes"], path)
    T, H, W = video.shape[:3]
    xyz_cam = np.asarray(d["tracks_XYZ"], np.float64)
    vis = np.asarray(d["visibility"]).astype(bool)
    if xyz_cam.ndim != 3 or xyz_cam.shape[-1] != 3:
        raise IngestError(f"{path}: tracks_XYZ must be (T, N, 3); got {xyz_cam.shape}")
    if xyz_cam.shape[0] != T:
        raise IngestError(f"{path}: tracks_XYZ has {xyz_cam.shape[0]} frames but images_jpeg_bytes has {T}")
    if vis.shape != xyz_cam.shape[:2]:
        raise IngestError(f"{path}: visibility has shape {vis.shape}; expected {xyz_cam.shape[:2]}")
    if not np.isfinite(xyz_cam).all():
        f, n = np.argwhere(~np.isfinite(xyz_cam))[0][:2]
        raise IngestError(f"{path}: tracks_XYZ contains NaN/inf (first at frame {f}, track {n})")
    fx, fy, cx, cy = (float(v) for v in np.asarray(d["fx_fy_cx_cy"], np.float64).reshape(-1)[:4])
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    if "extrinsics_w2c" in d:
        E = np.asarray(d["extrinsics_w2c"], np.float64)
        if E.shape != (T, 4, 4):
            raise IngestError(f"{path}: extrinsics_w2c must be (T, 4, 4) = ({T}, 4, 4); got {E.shape}")
    else:
        E = np.broadcast_to(np.eye(4), (T, 4, 4)).copy()
    c2w = invert_extrinsics(E)
    xyz = np.einsum("fij,fnj->fni", c2w[:, :3, :3], xyz_cam) + c2w[:, None, :3, 3]
    camera = checked(
        path, lambda: Camera(np.broadcast_to(K, (T, 3, 3)).astype(np.float32), E.astype(np.float32), (H, W))
    )
    tracks = checked(path, lambda: Tracks(xyz.astype(np.float32), vis))
    return Clip(video, camera, tracks, float(fps), path.stem, str(path)).validate()


# ----------------------------------------------------------------------------- Kubric MOVi
def quaternion_to_matrix(q_wxyz: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (w, x, y, z) -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q_wxyz, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def kubric_camera(positions, quaternions_wxyz, focal_length, sensor_width, image_size) -> Camera:
    """Kubric camera (c2w, OpenGL axes: x right, y up, z backward) -> OpenCV world-to-camera Camera.

    Square pixels: fx = fy = focal_length / sensor_width * W; principal point at the image centre,
    ((W - 1) / 2, (H - 1) / 2) in our pixel-centre convention."""
    H, W = image_size
    R_gl = quaternion_to_matrix(quaternions_wxyz)
    c2w = np.zeros((len(R_gl), 4, 4))
    c2w[:, :3, :3] = R_gl @ np.diag([1.0, -1.0, -1.0])  # flip y and z: OpenGL -> OpenCV camera axes
    c2w[:, :3, 3] = positions
    c2w[:, 3, 3] = 1
    E = invert_extrinsics(c2w)
    f = float(focal_length) / float(sensor_width) * W
    K = np.array([[f, 0, (W - 1) / 2.0], [0, f, (H - 1) / 2.0], [0, 0, 1.0]])
    return Camera(np.broadcast_to(K, (len(E), 3, 3)).astype(np.float32), E.astype(np.float32), (H, W))


def read_kubric(
    path: str | os.PathLike, fps: float = 12.0, num_tracks: int = 2048, seed: int = 0, depth_tolerance: float = 0.03
) -> Clip:
    """A Kubric MOVi example saved as .npz with flattened keys:
    video (T,H,W,3) uint8; depth (T,H,W[,1]) ray length (float, or uint16 with metadata/depth_range);
    segmentations (T,H,W[,1]) (0 = background, k = instance k-1); camera/positions (T,3),
    camera/quaternions (T,4) wxyz, camera/focal_length, camera/sensor_width (mm);
    instances/positions (K,T,3), instances/quaternions (K,T,4) wxyz.

    Tracks: `num_tracks` pixels queried in random frames are lifted to 3D with the depth map; a background
    point stays fixed in world, an instance's point follows that instance's rigid pose. Visible where it
    projects inside the image onto a pixel of its own segment with depth within `depth_tolerance`
    (relative)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Kubric file not found: {path}")
    d = _load_npz_members(path)
    need = [
        "video",
        "depth",
        "segmentations",
        "camera/positions",
        "camera/quaternions",
        "camera/focal_length",
        "camera/sensor_width",
        "instances/positions",
        "instances/quaternions",
    ]
    missing = [k for k in need if k not in d]
    if missing:
        raise IngestError(f"{path}: missing key(s) {missing} (Kubric MOVi example keys, '/'-flattened)")
    video = np.asarray(d["video"])
    if video.dtype != np.uint8 or video.ndim != 4:
        raise IngestError(f"{path}: video must be (T, H, W, 3) uint8; got {video.shape} {video.dtype}")
    T, H, W = video.shape[:3]
    depth = np.asarray(d["depth"])
    seg = np.asarray(d["segmentations"])
    depth = depth[..., 0] if depth.ndim == 4 else depth
    seg = (seg[..., 0] if seg.ndim == 4 else seg).astype(np.int64)
    if depth.dtype == np.uint16:
        if "metadata/depth_range" not in d:
            raise IngestError(f"{path}: uint16 depth needs metadata/depth_range")
        lo, hi = (float(v) for v in d["metadata/depth_range"])
        depth = lo + depth.astype(np.float64) * (hi - lo) / 65535.0
    depth = depth.astype(np.float64)
    for name, arr in (("depth", depth), ("segmentations", seg)):
        if arr.shape != (T, H, W):
            raise IngestError(f"{path}: {name} has shape {arr.shape}; expected {(T, H, W)}")
    cam_pos, cam_q = np.asarray(d["camera/positions"], np.float64), np.asarray(d["camera/quaternions"], np.float64)
    ipos, iq = np.asarray(d["instances/positions"], np.float64), np.asarray(d["instances/quaternions"], np.float64)
    for name, arr, shape in (("camera/positions", cam_pos, (T, 3)), ("camera/quaternions", cam_q, (T, 4))):
        if arr.shape != shape:
            raise IngestError(f"{path}: {name} has shape {arr.shape}; expected {shape}")
    K_inst = ipos.shape[0]
    if ipos.shape != (K_inst, T, 3) or iq.shape != (K_inst, T, 4):
        raise IngestError(
            f"{path}: instances/positions and quaternions must be (K, T, 3) and (K, T, 4); "
            f"got {ipos.shape} and {iq.shape}"
        )
    if seg.max(initial=0) > K_inst:
        raise IngestError(f"{path}: segmentation ids go up to {seg.max()} but there are {K_inst} instances")
    for name, arr in (("depth", depth), ("camera", cam_pos), ("instances", ipos)):
        if not np.isfinite(arr).all():
            raise IngestError(f"{path}: {name} contains NaN/inf")
    camera = checked(
        path, lambda: kubric_camera(cam_pos, cam_q, d["camera/focal_length"], d["camera/sensor_width"], (H, W))
    )
    K = camera.intrinsics.astype(np.float64)
    E = camera.extrinsics.astype(np.float64)
    c2w = invert_extrinsics(E)
    # query pixels -> camera points (depth is the distance to the camera centre along the ray)
    rng = np.random.default_rng(seed)
    qf = rng.integers(0, T, num_tracks)
    qy, qx = rng.integers(0, H, num_tracks), rng.integers(0, W, num_tracks)
    ray = np.einsum("nij,nj->ni", np.linalg.inv(K[qf]), np.stack([qx, qy, np.ones(num_tracks)], -1).astype(np.float64))
    cam_pts = ray / np.linalg.norm(ray, axis=-1, keepdims=True) * depth[qf, qy, qx][:, None]
    world0 = np.einsum("nij,nj->ni", c2w[qf, :3, :3], cam_pts) + c2w[qf, :3, 3]
    sid = seg[qf, qy, qx]
    R_inst = quaternion_to_matrix(iq)  # (K, T, 3, 3) object-to-world
    xyz = np.broadcast_to(world0, (T, num_tracks, 3)).copy()
    for k in np.unique(sid[sid > 0]):
        m = sid == k
        R, t = R_inst[k - 1], ipos[k - 1]
        local = np.einsum("nji,nj->ni", R[qf[m]], world0[m] - t[qf[m]])  # R^T (x - t) at the query frame
        xyz[:, m] = np.einsum("fij,nj->fni", R, local) + t[:, None, :]
    # visibility: own segment and consistent depth at the nearest pixel
    cam = np.einsum("fij,fnj->fni", E[:, :3, :3], xyz) + E[:, None, :3, 3]
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[:, None, 0, 0] * cam[..., 0] / z + K[:, None, 0, 2]
        v = K[:, None, 1, 1] * cam[..., 1] / z + K[:, None, 1, 2]
    inside = (z > 1e-6) & (u >= -0.5) & (u <= W - 0.5) & (v >= -0.5) & (v <= H - 0.5)
    ui = np.clip(np.round(np.nan_to_num(u)).astype(int), 0, W - 1)
    vi = np.clip(np.round(np.nan_to_num(v)).astype(int), 0, H - 1)
    fidx = np.arange(T)[:, None]
    dist = np.linalg.norm(cam, axis=-1)
    vis = inside & (seg[fidx, vi, ui] == sid[None]) & (np.abs(depth[fidx, vi, ui] - dist) <= depth_tolerance * dist)
    tracks = checked(path, lambda: Tracks(xyz.astype(np.float32), vis))
    return Clip(video, camera, tracks, float(fps), path.stem, str(path)).validate()


# ----------------------------------------------------------------------------- DyCheck iPhone
def read_dycheck(
    scene_dir: str | os.PathLike,
    tracks_path: str | os.PathLike | None = None,
    camera_id: int = 0,
    fps: float | None = None,
    max_frames: int | None = None,
) -> Clip:
    """A DyCheck iPhone scene: cameras from camera/<id>.json, frames from rgb/<k>x/<id>.png (the first
    scale folder present; intrinsics are rescaled to it), tracks from a canonical track file
    (`tracks_path`, default <scene>/tracks.npz) whose world frame is the scene's and whose frames are
    the same ids in time order. fps: from extra.json unless given."""
    from trackedit_jax.geometry import dycheck_camera_ids, load_dycheck_cameras

    scene = pathlib.Path(scene_dir)
    if not scene.is_dir():
        raise FileNotFoundError(f"DyCheck scene folder not found: {scene}")
    ids = checked(scene, lambda: dycheck_camera_ids(scene, camera_id))
    rgb_dirs = sorted((scene / "rgb").glob("*x"), key=lambda p: float(p.name[:-1])) if (scene / "rgb").is_dir() else []
    if not rgb_dirs:
        raise IngestError(f"{scene}: no rgb/<k>x/ frame folder")
    rgb = rgb_dirs[0]
    factor = float(rgb.name[:-1])
    ids = [i for i in ids if (rgb / f"{i}.png").is_file()]
    if max_frames:
        ids = ids[:max_frames]
    if not ids:
        raise IngestError(f"{rgb}: no frames named like the camera ids ({camera_id}_xxxxx.png)")
    import cv2

    frames = []
    for i in ids:
        img = cv2.imread(str(rgb / f"{i}.png"), cv2.IMREAD_COLOR)
        if img is None:
            raise IngestError(f"{rgb / (i + '.png')}: not a readable image")
        frames.append(img[..., ::-1])
    video = np.stack(frames)
    camera = checked(scene, lambda: load_dycheck_cameras(scene, ids, image_scale=1.0 / factor))
    if tuple(camera.image_size) != video.shape[1:3]:
        raise IngestError(
            f"{scene}: frames are {video.shape[1:3]} but cameras scaled by 1/{factor:g} give {camera.image_size}"
        )
    tp = pathlib.Path(tracks_path) if tracks_path else scene / "tracks.npz"
    if not tp.is_file():
        raise FileNotFoundError(
            f"{scene}: DyCheck has no 3D tracks; give a track file for these frames (looked for {tp})"
        )
    tf = checked(tp, lambda: load_track_file(tp))
    if tf.tracks.num_frames != len(ids):
        raise IngestError(f"{tp}: the track file has {tf.tracks.num_frames} frames but the scene has {len(ids)}")
    if fps is None:
        extra = scene / "extra.json"
        fps = float(json.loads(extra.read_text()).get("fps", 30.0)) if extra.is_file() else 30.0
    return Clip(video, camera, tf.tracks, float(fps), scene.name, str(scene)).validate()


READERS = {"tapip3d": read_tapip3d, "tapvid3d": read_tapvid3d, "kubric": read_kubric, "dycheck": read_dycheck}
