"""The ONE training-record schema: a source/target clip pair linked by 3D point tracks.

A record is one pair. Both clips have F frames of size (H, W) and the same N tracks: point i of the
source and the target is the same physical point (duplication repeats a source point; `source_ids`
says which source point each track came from).

Fields (`PairRecord`):
  key                       str, unique in a data set
  image_size                (H, W)
  codec                     "jpeg" | "png" | "raw" (how frames are stored)
  source_frames, target_frames   F byte strings each (one encoded frame, or H*W*3 raw uint8 bytes)
  source_xyz, target_xyz    (F, N, 3) float32 world coordinates
  source_visibility, target_visibility   (F, N) bool
  source_intrinsics, target_intrinsics   (F, 3, 3) float32 pixels of (H, W)
  source_extrinsics, target_extrinsics   (F, 4, 4) float32 world-to-camera, OpenCV axes
  source_ids                optional (N,) int32: source point of each track (None = arange(N))
  source_depth, target_depth   optional (F, H, W) float16 camera z (inf = nothing hit)
  warp_frames               optional F byte strings (codec as above): the source clip moved into the target
                            view by the classical warp (`trackedit_jax.geometry.warp`), the prior of
                            `model.warp_prior` models
  warp_coverage             optional (F, H, W) uint8: where each warp pixel came from (0 its own source
                            frame, 1 another source frame, 2 inpainting; `geometry.warp`)
  warp_displacement         optional (F, H, W) uint8, with warp_coverage: how far the warp moves each source
                            pixel, in eighths of a pixel (255: 31.9 px or more; `geometry.warp`)
  source_latents, target_latents   optional float arrays (any shape), e.g. VAE latents (f, h, w, C)
  text_embedding, text_mask optional (L, D) float32 and (L,) bool
  prompt                    str (may be empty)
  edit_family               one of EDIT_FAMILIES
  edit_components           tuple of EDIT_FAMILIES members (a combination lists its parts)
  fps                       float
  metadata                  JSON-like dict (generator name/config, seeds, source files, ...)

Serialisation (`encode_record` / `decode_record`), no pickle anywhere:
  bytes = MAGIC (4) | version uint16 LE | crc32 of payload uint32 LE | msgpack payload
Arrays travel as {"__nd__": 1, "dtype": str, "shape": [...], "data": bytes} with a whitelist of
dtypes; object arrays cannot be expressed. A bad magic, version, checksum or field raises `RecordError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1
MAGIC = b"TEPR"  # trackedit pair record
_HEADER = struct.Struct("<4sHI")

# The integer in a batch's `edit_family` is the index in this tuple (never reorder; append only).
EDIT_FAMILIES = (
    "camera",  # target camera path differs
    "object_path",  # one object's translation path differs
    "rotation",  # one object gets an extra 3D rotation
    "deformation",  # part-wise transforms of an articulated object (joint angles, part scale)
    "removal",  # an object's tracks leave the target frame (object moved out of view)
    "duplication",  # one source point -> two target points (the target shows a copy)
    "retiming",  # object motion replayed with a time warp
    "combination",  # several of the above (see edit_components)
    "real",  # two windows of one real video (stage 2)
)
VIDEO_CODECS = ("jpeg", "png", "raw")
_ALLOWED_DTYPES = {"uint8", "bool", "int32", "int64", "float16", "float32", "float64"}


class RecordError(ValueError):
    """A record that cannot be decoded or violates the schema."""


def family_id(name: str) -> int:
    """Index of an edit family name in EDIT_FAMILIES."""
    try:
        return EDIT_FAMILIES.index(name)
    except ValueError:
        raise ValueError(f"unknown edit family {name!r}; expected one of {EDIT_FAMILIES}") from None


# ----------------------------------------------------------------------------- frame codecs
def encode_frames(video: np.ndarray, codec: str = "jpeg", quality: int = 95) -> list[bytes]:
    """(F, H, W, 3) uint8 RGB -> F byte strings."""
    import cv2

    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be (F, H, W, 3) uint8; got {video.shape} {video.dtype}")
    if codec == "raw":
        return [np.ascontiguousarray(f).tobytes() for f in video]
    if codec == "jpeg":
        ext, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif codec == "png":
        ext, params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]
    else:
        raise ValueError(f"codec must be one of {VIDEO_CODECS}; got {codec!r}")
    out = []
    for f in video:
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(f[..., ::-1]), params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a frame as {codec}")
        out.append(buf.tobytes())
    return out


def decode_frames(frames: Sequence[bytes], codec: str, image_size: tuple[int, int]) -> np.ndarray:
    """F byte strings -> (F, H, W, 3) uint8 RGB. Raises RecordError on undecodable bytes or wrong size."""
    import cv2

    H, W = image_size
    out = np.empty((len(frames), H, W, 3), np.uint8)
    for i, b in enumerate(frames):
        if codec == "raw":
            if len(b) != H * W * 3:
                raise RecordError(f"raw frame {i} has {len(b)} bytes; expected {H}*{W}*3 = {H * W * 3}")
            out[i] = np.frombuffer(b, np.uint8).reshape(H, W, 3)
            continue
        img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise RecordError(f"frame {i} is not a decodable {codec} image ({len(b)} bytes)")
        if img.shape[:2] != (H, W):
            raise RecordError(f"frame {i} decodes to {img.shape[:2]}; the record says {(H, W)}")
        out[i] = img[..., ::-1]
    return out


# ----------------------------------------------------------------------------- the record
@dataclasses.dataclass
class PairRecord:
    key: str
    image_size: tuple[int, int]
    codec: str
    source_frames: list
    target_frames: list
    source_xyz: np.ndarray
    target_xyz: np.ndarray
    source_visibility: np.ndarray
    target_visibility: np.ndarray
    source_intrinsics: np.ndarray
    target_intrinsics: np.ndarray
    source_extrinsics: np.ndarray
    target_extrinsics: np.ndarray
    edit_family: str
    edit_components: tuple = ()
    prompt: str = ""
    fps: float = 16.0
    source_ids: np.ndarray | None = None
    source_depth: np.ndarray | None = None
    target_depth: np.ndarray | None = None
    warp_frames: list | None = None
    warp_coverage: np.ndarray | None = None
    warp_displacement: np.ndarray | None = None
    source_latents: np.ndarray | None = None
    target_latents: np.ndarray | None = None
    text_embedding: np.ndarray | None = None
    text_mask: np.ndarray | None = None
    metadata: dict = dataclasses.field(default_factory=dict)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        *,
        key: str,
        source_video: np.ndarray,
        target_video: np.ndarray,
        warp_video: np.ndarray | None = None,
        codec: str = "jpeg",
        quality: int = 95,
        **fields: Any,
    ) -> PairRecord:
        """Build a record from (F, H, W, 3) uint8 videos (encoded with `codec`; `warp_video` optional) and
        the other fields."""
        source_video, target_video = np.asarray(source_video), np.asarray(target_video)
        if source_video.shape != target_video.shape:
            raise ValueError(
                f"source_video and target_video must have the same shape; got {source_video.shape} "
                f"and {target_video.shape}"
            )
        if warp_video is not None and np.shape(warp_video) != source_video.shape:
            raise ValueError(f"warp_video must have the clips' shape {source_video.shape}; got {np.shape(warp_video)}")
        rec = cls(
            key=key,
            image_size=tuple(int(s) for s in source_video.shape[1:3]),
            codec=codec,
            source_frames=encode_frames(source_video, codec, quality),
            target_frames=encode_frames(target_video, codec, quality),
            warp_frames=None if warp_video is None else encode_frames(np.asarray(warp_video), codec, quality),
            **fields,
        )
        rec.validate()
        return rec

    @property
    def num_frames(self) -> int:
        return int(self.source_xyz.shape[0])

    @property
    def num_tracks(self) -> int:
        return int(self.source_xyz.shape[1])

    def video(self, which: str, frame_indices: Sequence[int] | None = None) -> np.ndarray:
        """Decode the 'source', 'target' or 'warp' clip (optionally only some frames) -> (F', H, W, 3) uint8."""
        frames = {"source": self.source_frames, "target": self.target_frames, "warp": self.warp_frames}
        if which not in frames:
            raise ValueError(f"which must be 'source', 'target' or 'warp'; got {which!r}")
        frames = frames[which]
        if frames is None:
            raise ValueError(f"record {self.key!r} has no warp frames (made without the warp prior)")
        if frame_indices is not None:
            frames = [frames[int(i)] for i in frame_indices]
        return decode_frames(frames, self.codec, self.image_size)

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> PairRecord:
        """Check every field against the schema; raises RecordError naming the field."""

        def fail(msg):
            raise RecordError(f"record {self.key!r}: {msg}")

        if not isinstance(self.key, str) or not self.key:
            fail("key must be a non-empty string")
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            fail(f"image_size must be (H, W) > 0; got {self.image_size}")
        if self.codec not in VIDEO_CODECS:
            fail(f"codec must be one of {VIDEO_CODECS}; got {self.codec!r}")
        if self.edit_family not in EDIT_FAMILIES:
            fail(f"edit_family must be one of {EDIT_FAMILIES}; got {self.edit_family!r}")
        for c in self.edit_components:
            if c not in EDIT_FAMILIES:
                fail(f"edit_components has unknown family {c!r}")
        xyz = self.source_xyz
        if not isinstance(xyz, np.ndarray) or xyz.ndim != 3 or xyz.shape[-1] != 3:
            fail(f"source_xyz must be (F, N, 3); got {getattr(xyz, 'shape', type(xyz))}")
        F, N = xyz.shape[:2]
        if F < 1 or N < 1:
            fail(f"need F >= 1 frames and N >= 1 tracks; got F={F}, N={N}")
        expect = {
            "source_xyz": (F, N, 3),
            "target_xyz": (F, N, 3),
            "source_visibility": (F, N),
            "target_visibility": (F, N),
            "source_intrinsics": (F, 3, 3),
            "target_intrinsics": (F, 3, 3),
            "source_extrinsics": (F, 4, 4),
            "target_extrinsics": (F, 4, 4),
        }
        for name, shape in expect.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.shape != shape:
                fail(f"{name} must have shape {shape}; got {getattr(a, 'shape', type(a))}")
            if name.endswith("visibility"):
                if a.dtype != bool:
                    fail(f"{name} must be bool; got {a.dtype}")
            elif not np.isfinite(a).all():
                bad = np.argwhere(~np.isfinite(a))[0].tolist()
                fail(f"{name} contains NaN or inf (first at index {bad})")
        for name in ("source_frames", "target_frames", "warp_frames"):
            frames = getattr(self, name)
            if frames is None and name == "warp_frames":
                continue
            if len(frames) != F:
                fail(f"{name} has {len(frames)} frames but the tracks have F={F}")
            if any(not isinstance(b, (bytes, bytearray)) for b in frames):
                fail(f"{name} must be a list of byte strings")
        if self.source_ids is not None:
            ids = self.source_ids
            if not isinstance(ids, np.ndarray) or ids.shape != (N,) or ids.dtype.kind not in "iu":
                fail(f"source_ids must be (N,) = ({N},) integers; got {getattr(ids, 'shape', None)}")
            if ids.min() < 0 or ids.max() >= N:
                fail(f"source_ids must index the N={N} tracks; got range [{ids.min()}, {ids.max()}]")
        H, W = self.image_size
        for name in ("source_depth", "target_depth", "warp_coverage", "warp_displacement"):
            d = getattr(self, name)
            if d is not None and (not isinstance(d, np.ndarray) or d.shape != (F, H, W)):
                fail(f"{name} must be (F, H, W) = {(F, H, W)}; got {getattr(d, 'shape', None)}")
        if self.warp_coverage is not None and (self.warp_frames is None or self.warp_coverage.dtype != np.uint8):
            fail("warp_coverage must be uint8 and comes with warp_frames")
        disp = self.warp_displacement
        if disp is not None and (self.warp_coverage is None or disp.dtype != np.uint8):
            fail("warp_displacement must be uint8 and comes with warp_coverage")
        if (self.text_embedding is None) != (self.text_mask is None):
            fail("text_embedding and text_mask come together")
        if self.text_embedding is not None:
            te, tm = self.text_embedding, self.text_mask
            if te.ndim != 2 or tm.shape != te.shape[:1] or tm.dtype != bool:
                fail(f"text_embedding must be (L, D) with text_mask (L,) bool; got {te.shape}, {tm.shape} {tm.dtype}")
        if not np.isfinite(float(self.fps)) or float(self.fps) <= 0:
            fail(f"fps must be a positive number; got {self.fps}")
        try:
            json.dumps(self.metadata)
        except TypeError as e:
            fail(f"metadata must be JSON-serialisable ({e})")
        return self


# ----------------------------------------------------------------------------- serialisation
_ARRAY_FIELDS = (
    "source_xyz",
    "target_xyz",
    "source_visibility",
    "target_visibility",
    "source_intrinsics",
    "target_intrinsics",
    "source_extrinsics",
    "target_extrinsics",
    "source_ids",
    "source_depth",
    "target_depth",
    "warp_coverage",
    "warp_displacement",
    "source_latents",
    "target_latents",
    "text_embedding",
    "text_mask",
)


def _pack_array(a: np.ndarray) -> dict:
    a = np.asarray(a)
    if a.dtype.name not in _ALLOWED_DTYPES:
        raise RecordError(f"dtype {a.dtype} is not allowed in records ({sorted(_ALLOWED_DTYPES)})")
    return {"__nd__": 1, "dtype": a.dtype.name, "shape": list(a.shape), "data": np.ascontiguousarray(a).tobytes()}


def _unpack_array(d: Any, field: str) -> np.ndarray:
    if not isinstance(d, dict) or d.get("__nd__") != 1:
        raise RecordError(f"field {field!r} is not an encoded array")
    dtype = d.get("dtype")
    if not isinstance(dtype, str) or dtype not in _ALLOWED_DTYPES:
        raise RecordError(f"field {field!r} has disallowed dtype {dtype!r:.40}")
    shape, data = d.get("shape"), d.get("data")
    if not isinstance(shape, list) or len(shape) > 8 or any(type(s) is not int or s < 0 for s in shape):
        raise RecordError(f"field {field!r}: shape must be a list of at most 8 integers >= 0; got {shape!r:.80}")
    if not isinstance(data, bytes):
        raise RecordError(f"field {field!r}: data must be bytes; got {type(data).__name__}")
    shape = tuple(shape)
    expected = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow to a small number
    if len(data) != expected:
        raise RecordError(f"field {field!r}: {len(data)} bytes for shape {shape} {dtype} (expected {expected})")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def encode_record(rec: PairRecord) -> bytes:
    """Validate and serialise a record (see module docstring for the byte layout)."""
    rec.validate()
    payload: dict[str, Any] = {
        "key": rec.key,
        "image_size": [int(s) for s in rec.image_size],
        "codec": rec.codec,
        "source_frames": [bytes(b) for b in rec.source_frames],
        "target_frames": [bytes(b) for b in rec.target_frames],
        "edit_family": rec.edit_family,
        "edit_components": list(rec.edit_components),
        "prompt": rec.prompt,
        "fps": float(rec.fps),
        "metadata": json.dumps(rec.metadata, sort_keys=True),
    }
    if rec.warp_frames is not None:
        payload["warp_frames"] = [bytes(b) for b in rec.warp_frames]
    for name in _ARRAY_FIELDS:
        a = getattr(rec, name)
        if a is not None:
            payload[name] = _pack_array(a)
    body = msgpack.packb(payload, use_bin_type=True)
    return _HEADER.pack(MAGIC, SCHEMA_VERSION, zlib.crc32(body) & 0xFFFFFFFF) + body


def _typed(p: dict, name: str, types) -> Any:
    if name not in p:
        raise RecordError(f"required field {name!r} is missing")
    v = p[name]
    if not isinstance(v, types) or isinstance(v, bool):
        raise RecordError(f"field {name!r} has the wrong type ({type(v).__name__})")
    return v


def decode_record(data: bytes) -> PairRecord:
    """Parse bytes written by `encode_record`. Raises RecordError (never a pickle load)."""
    if len(data) < _HEADER.size:
        raise RecordError(f"record is {len(data)} bytes, shorter than its {_HEADER.size}-byte header")
    magic, version, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RecordError(f"bad magic {magic!r} (expected {MAGIC!r}); not a trackedit pair record")
    if version != SCHEMA_VERSION:
        raise RecordError(f"schema version {version} is not supported (this code reads {SCHEMA_VERSION})")
    body = memoryview(data)[_HEADER.size :]
    if zlib.crc32(body) & 0xFFFFFFFF != crc:
        raise RecordError("checksum mismatch: the record is corrupt")
    try:
        p = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack's own errors (ExtraData, FormatError, StackError, ...) and UnicodeDecodeError
        raise RecordError(f"malformed record payload ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
    if not isinstance(p, dict):
        raise RecordError(f"malformed record payload (a {type(p).__name__}, not a map)")
    try:
        fields = {
            "key": _typed(p, "key", str),
            "image_size": tuple(_typed(p, "image_size", list)),
            "codec": _typed(p, "codec", str),
            "source_frames": _typed(p, "source_frames", list),
            "target_frames": _typed(p, "target_frames", list),
            "edit_family": _typed(p, "edit_family", str),
            "edit_components": tuple(_typed(p, "edit_components", list)),
            "prompt": _typed(p, "prompt", str),
            "fps": float(_typed(p, "fps", (float, int))),
            "metadata": json.loads(_typed(p, "metadata", str)),
        }
    except RecordError:
        raise
    except (ValueError, RecursionError) as e:  # metadata JSON that does not parse or nests too deeply
        raise RecordError(f"field 'metadata' is not valid JSON ({type(e).__name__})") from e
    if len(fields["image_size"]) != 2 or any(type(s) is not int for s in fields["image_size"]):
        raise RecordError(f"field 'image_size' must be 2 integers; got {fields['image_size']!r:.80}")
    if any(not isinstance(c, str) for c in fields["edit_components"]):
        raise RecordError("field 'edit_components' must be a list of strings")
    fields["warp_frames"] = _typed(p, "warp_frames", list) if "warp_frames" in p else None
    for name in _ARRAY_FIELDS:
        fields[name] = _unpack_array(p[name], name) if name in p else None
    for name in _ARRAY_FIELDS[:8]:
        if fields[name] is None:
            raise RecordError(f"required field {name!r} is missing")
    return PairRecord(**fields).validate()
