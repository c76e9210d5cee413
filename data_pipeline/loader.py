"""The training input pipeline: grain over ArrayRecord shards of pair records -> fixed-shape batches.

    ds = make_dataset(paths, LoaderConfig(batch_size=2, num_frames=17, image_size=(64, 64), max_tracks=256))
    it = iter(ds)                     # a grain DatasetIterator: it.get_state() / it.set_state(s)
    batch = next(it)

Per record (deterministic per (seed, position in the stream); independent of threads and workers):
  1. decode (errors name the shard file and record index; on_error="skip" drops and counts instead),
  2. a frame window of `num_frames` (4k+1) frames, the same indices in both clips, with a random start
     and a stride from `frame_strides` that fits,
  3. one random crop with the output aspect ratio (side = U(crop_scale) x the largest such crop) applied
     to both clips, resized to `image_size` with OpenCV; intrinsics follow exactly
     (x' = (x - x0 + 1/2) * W_out / w_crop - 1/2, same for y), and visibility is cleared for points that
     the crop pushes out of the image,
  4. n ~ U[min_tracks, max_drawn_tracks] (both clamped to max_tracks) tracks drawn without replacement
     from those visible at least once in the window in either clip (all tracks if none are),
     padded to max_tracks: `point_mask` False, visibility False, xyz = copies of the first drawn point
     (a real point, so projection and disparity ranges stay finite and unchanged).

Batch keys, exactly (B = batch_size, F = num_frames, N = max_tracks; `batch_spec` gives them as data):
  source_video, target_video            (B, F, H, W, 3) uint8
  source_xyz, target_xyz                (B, F, N, 3) float32 world
  source_visibility, target_visibility  (B, F, N) bool
  point_mask                            (B, N) bool
  source_intrinsics, target_intrinsics  (B, F, 3, 3) float32, pixels of the output (H, W)
  source_extrinsics, target_extrinsics  (B, F, 4, 4) float32 world-to-camera
  edit_family                           (B,) int32 index into schema.EDIT_FAMILIES
  warp_video (B, F, H, W, 3) uint8                              only with with_warp (the records' warp
                                                                frames, cropped like the target clip)
  warp_coverage (B, F, H, W, 3) uint8                           only with with_warp and with_coverage
                                                                (`geometry.warp.coverage_video`)
  text_embedding (B, L, D) float32 and text_mask (B, L) bool   only when text_len > 0
  record_index (B,) int64                                       only when return_record_index (debug)

Sharding: the example stream is defined GLOBALLY (shuffled with `seed`, a new permutation every epoch,
repeated, each element transformed with randomness keyed by its global position), cut into global
batches of `batch_size * P` examples, and process p of P takes the p-th contiguous slice of every
global batch. So the global batch, and therefore training, is the same whatever the process count
(1 process, 2 processes x 4 devices, ...), and processes read disjoint examples.
Worker processes (`worker_count` > 0) use grain's
mp_prefetch; we mark absl flags parsed first (google/grain#1355, fixed after grain 0.2.18).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from typing import Any

import numpy as np

from data_pipeline.schema import EDIT_FAMILIES, PairRecord, RecordError, family_id
from data_pipeline.shards import PairRecordSource, ShardError
from trackedit_jax.geometry import Camera, in_front, in_image, project
from trackedit_jax.geometry.warp import coverage_video

_log = logging.getLogger(__name__)

# Records skipped with on_error="skip" in this process (worker processes count their own).
_SKIPPED: collections.Counter = collections.Counter()
_SKIP_LOCK = threading.Lock()


def skipped_records() -> dict:
    """{'unreadable': n, 'corrupt': n, 'unusable': n} skipped in this process so far."""
    with _SKIP_LOCK:
        return dict(_SKIPPED)


def _count_skip(kind: str, msg: str) -> None:
    with _SKIP_LOCK:
        _SKIPPED[kind] += 1
    _log.warning("skipping record: %s", msg)


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 2
    num_frames: int = 17  # 4k + 1
    image_size: tuple = (64, 64)  # (H, W) of the output
    max_tracks: int = 256  # N_max (padding target)
    min_tracks: int = 500  # paper: N ~ U[500, 1000]; clamped to max_tracks
    max_drawn_tracks: int = 1000
    seed: int = 0
    shuffle: bool = True
    repeat: bool = True  # False: one pass (num_epochs=1)
    num_epochs: int | None = None  # with repeat=True: None = forever
    worker_count: int = 0  # grain worker processes (0 = threads only)
    worker_buffer_size: int = 2
    read_threads: int = 4
    prefetch_buffer_size: int = 8
    process_index: int | None = None  # default jax.process_index()
    process_count: int | None = None  # default jax.process_count()
    on_error: str = "raise"  # or "skip" (skip and count bad shards/records)
    crop_scale: tuple = (0.85, 1.0)
    frame_strides: tuple = (1,)
    require_visible: bool = True
    text_len: int = 0  # > 0: emit text_embedding/text_mask padded to this length
    with_warp: bool = False  # emit warp_video (records must hold warp frames)
    with_coverage: bool = False  # with with_warp, also emit warp_coverage (records must hold warp_coverage)
    drop_remainder: bool = True
    return_record_index: bool = False

    def __post_init__(self):
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 (1, 5, 9, 17, ...); got {self.num_frames}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (H, W) > 0; got {self.image_size}")
        for name in ("batch_size", "max_tracks", "min_tracks", "max_drawn_tracks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.min_tracks > self.max_drawn_tracks:
            raise ValueError(f"min_tracks ({self.min_tracks}) > max_drawn_tracks ({self.max_drawn_tracks})")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1; got {self.crop_scale}")
        if not self.frame_strides or min(self.frame_strides) < 1:
            raise ValueError(f"frame_strides must be positive ints; got {self.frame_strides}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip'; got {self.on_error!r}")
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))

    @classmethod
    def from_config(cls, cfg: Any, **overrides) -> LoaderConfig:
        """Build from a ConfigDict/dict (e.g. `config.data`) holding any subset of the field names, plus
        the aliases height/width (-> image_size) and workers (-> worker_count); other keys are ignored.
        `overrides` win (e.g. batch_size=config.train.batch_size, seed=config.train.seed)."""
        d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        if "height" in d and "width" in d and "image_size" not in d:
            kw["image_size"] = (int(d["height"]), int(d["width"]))
        if "workers" in d and "worker_count" not in d:
            kw["worker_count"] = int(d["workers"])
        kw.update(overrides)
        return cls(**kw)


# ----------------------------------------------------------------------------- per-record transform
def crop_intrinsics(
    K: np.ndarray, x0: float, y0: float, crop_w: float, crop_h: float, out_w: int, out_h: int
) -> np.ndarray:
    """Intrinsics (..., 3, 3) after cropping pixel columns [x0, x0 + crop_w) and rows [y0, y0 + crop_h)
    and resizing that crop to (out_h, out_w) (OpenCV's half-pixel convention).

    Pixel centres are at integers and the crop's left edge is at x0 - 1/2, so
    x' = (x - x0 + 1/2) * out_w / crop_w - 1/2 (the same for y)."""
    K = np.array(K, np.float64)
    sx, sy = out_w / crop_w, out_h / crop_h
    cx, cy = K[..., 0, 2].copy(), K[..., 1, 2].copy()
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    K[..., 0, 2] = sx * (cx - x0 + 0.5) - 0.5
    K[..., 1, 2] = sy * (cy - y0 + 0.5) - 0.5
    return K


def _resize(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    if frames.shape[1:3] == (h, w):
        return frames
    interp = cv2.INTER_AREA if h * w <= frames.shape[1] * frames.shape[2] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])


def _visible_after_crop(xyz, K, E, vis, H, W):
    """Visibility restricted to points that project inside the cropped (H, W) image, in front."""
    uv, z = project(np.asarray(xyz, np.float64), Camera(K, np.asarray(E, np.float64), (H, W)))
    return vis & in_front(z) & in_image(uv, (H, W))


class PairTransform:
    """grain RandomMap: (record index, encoded bytes) -> one training example dict (see module doc)."""

    def __init__(self, config: LoaderConfig, source: PairRecordSource):
        self.cfg = config
        self.source = source

    def random_map(self, element, rng: np.random.Generator):
        index, data = element
        cfg = self.cfg
        if data is None:
            return None  # unreadable and skipped upstream
        try:
            rec = self.source.decode(index, data)
            return self._example(rec, index, rng)
        except ShardError as e:
            if cfg.on_error == "skip":
                _count_skip("corrupt", str(e))
                return None
            raise
        except (RecordError, ValueError) as e:
            path, local = self.source.locate(index)
            msg = f"{path}: record {local} (data set index {index}) cannot be used: {e}"
            if cfg.on_error == "skip":
                _count_skip("unusable", msg)
                return None
            raise ShardError(msg) from e

    __call__ = random_map

    def _example(self, rec: PairRecord, index: int, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        F, (Ho, Wo) = cfg.num_frames, cfg.image_size
        Fr = rec.num_frames
        strides = [s for s in cfg.frame_strides if (F - 1) * s + 1 <= Fr]
        if not strides:
            raise ValueError(f"record {rec.key!r} has {Fr} frames; {F} are needed (num_frames)")
        stride = int(rng.choice(strides))
        span = (F - 1) * stride + 1
        start = int(rng.integers(0, Fr - span + 1))
        fidx = np.arange(start, start + span, stride)
        # crop with the output aspect ratio, then resize
        H0, W0 = rec.image_size
        if W0 * Ho >= H0 * Wo:
            ch, cw = H0, H0 * Wo / Ho
        else:
            ch, cw = W0 * Ho / Wo, W0
        scale = rng.uniform(*cfg.crop_scale)
        cw_i = int(np.clip(round(cw * scale), 1, W0))
        ch_i = int(np.clip(round(ch * scale), 1, H0))
        x0 = int(rng.integers(0, W0 - cw_i + 1))
        y0 = int(rng.integers(0, H0 - ch_i + 1))
        videos = {}
        for which in ("source", "target", "warp") if cfg.with_warp else ("source", "target"):
            v = rec.video(which, fidx)[:, y0 : y0 + ch_i, x0 : x0 + cw_i]
            videos[which] = _resize(np.ascontiguousarray(v), Ho, Wo)
        out: dict = {"source_video": videos["source"], "target_video": videos["target"]}
        if cfg.with_warp:
            out["warp_video"] = videos["warp"]
        if cfg.with_warp and cfg.with_coverage:
            if rec.warp_coverage is None:
                raise ValueError(f"record {rec.key!r} has no warp_coverage (made before coverage was stored)")
            if rec.warp_displacement is None:
                raise ValueError(f"record {rec.key!r} has no warp_displacement (made before it was stored)")
            # the displacement counts the record's pixels: rescale it to the output grid's
            zoom = (Ho / ch_i + Wo / cw_i) / 2
            disp = np.minimum(np.round(rec.warp_displacement[fidx] * zoom), 255).astype(np.uint8)
            v = coverage_video(rec.warp_coverage[fidx], disp)[:, y0 : y0 + ch_i, x0 : x0 + cw_i]
            out["warp_coverage"] = _resize(np.ascontiguousarray(v), Ho, Wo)
        Ks = crop_intrinsics(rec.source_intrinsics[fidx], x0, y0, cw_i, ch_i, Wo, Ho)
        Kt = crop_intrinsics(rec.target_intrinsics[fidx], x0, y0, cw_i, ch_i, Wo, Ho)
        Es, Et = rec.source_extrinsics[fidx], rec.target_extrinsics[fidx]
        xs, xt = rec.source_xyz[fidx], rec.target_xyz[fidx]
        vs = _visible_after_crop(xs, Ks, Es, rec.source_visibility[fidx], Ho, Wo)
        vt = _visible_after_crop(xt, Kt, Et, rec.target_visibility[fidx], Ho, Wo)
        # tracks
        N = rec.num_tracks
        cand = np.flatnonzero(vs.any(0) | vt.any(0)) if cfg.require_visible else np.arange(N)
        if len(cand) == 0:
            cand = np.arange(N)
        lo = min(cfg.min_tracks, cfg.max_tracks)
        hi = min(cfg.max_drawn_tracks, cfg.max_tracks)
        n = min(int(rng.integers(lo, hi + 1)), len(cand))
        sel = rng.choice(cand, size=n, replace=False)
        pad = cfg.max_tracks - n
        take = np.concatenate([sel, np.full(pad, sel[0])])
        mask = np.arange(cfg.max_tracks) < n
        out["source_xyz"] = xs[:, take].astype(np.float32)
        out["target_xyz"] = xt[:, take].astype(np.float32)
        out["source_visibility"] = vs[:, take] & mask[None]
        out["target_visibility"] = vt[:, take] & mask[None]
        out["point_mask"] = mask
        out["source_intrinsics"] = Ks.astype(np.float32)
        out["target_intrinsics"] = Kt.astype(np.float32)
        out["source_extrinsics"] = Es.astype(np.float32)
        out["target_extrinsics"] = Et.astype(np.float32)
        out["edit_family"] = np.int32(family_id(rec.edit_family))
        if cfg.text_len > 0:
            if rec.text_embedding is None:
                raise ValueError(f"record {rec.key!r} has no text_embedding but text_len={cfg.text_len}")
            L = min(cfg.text_len, rec.text_embedding.shape[0])
            emb = np.zeros((cfg.text_len, rec.text_embedding.shape[1]), np.float32)
            emb[:L] = rec.text_embedding[:L]
            tmask = np.zeros(cfg.text_len, bool)
            tmask[:L] = rec.text_mask[:L]
            out["text_embedding"], out["text_mask"] = emb, tmask
        if cfg.return_record_index:
            out["record_index"] = np.int64(index)
        return out


class _IndexedSource:
    """(index, bytes) pairs so the transform can name the file and index of a bad record."""

    def __init__(self, source: PairRecordSource, on_error: str):
        self.source = source
        self.on_error = on_error

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        index = int(index)
        try:
            return index, self.source[index]
        except ShardError as e:
            if self.on_error == "skip":
                _count_skip("unreadable", str(e))
                return index, None
            raise


def _process_shard(cfg: LoaderConfig) -> tuple[int, int]:
    pi, pc = cfg.process_index, cfg.process_count
    if pi is None or pc is None:
        import jax

        pi = jax.process_index() if pi is None else pi
        pc = jax.process_count() if pc is None else pc
    if not 0 <= pi < pc:
        raise ValueError(f"process_index must be in [0, process_count={pc}); got {pi}")
    return int(pi), int(pc)


def _process_slice_dataset(parent, per_process: int, process_index: int, process_count: int):
    """Element i of process p is element (i // b) * b * P + p * b + (i % b) of the global stream
    (b = per-process batch size, P = process count): p's contiguous slice of every global batch."""
    import grain

    class ProcessSliceMapDataset(grain.MapDataset):
        def __init__(self):
            super().__init__(parent)
            self._length = (len(parent) // (per_process * process_count)) * per_process

        def __len__(self) -> int:
            return self._length

        def _global(self, index: int) -> int:
            batch, j = divmod(int(index), per_process)
            return (batch * process_count + process_index) * per_process + j

        def __getitem__(self, index):
            return self._parent[self._global(index)]

        def __str__(self) -> str:
            return f"ProcessSliceMapDataset(p={process_index}/{process_count}, b={per_process})"

    return ProcessSliceMapDataset()


def make_map_dataset(paths, config: LoaderConfig):
    """The per-process grain MapDataset of examples (before batching); elements may be None (skipped)."""
    import grain

    source = PairRecordSource(paths, on_error=config.on_error)
    pi, pc = _process_shard(config)
    if len(source) < pc * config.batch_size and not config.repeat:
        raise ValueError(f"{len(source)} records cannot fill one global batch of {pc} x {config.batch_size}")
    ds = grain.MapDataset.source(_IndexedSource(source, config.on_error))
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    ds = ds.repeat(config.num_epochs if config.repeat else 1)
    ds = ds.random_map(PairTransform(config, source), seed=config.seed)
    return ds if pc == 1 else _process_slice_dataset(ds, config.batch_size, pi, pc)


def make_dataset(paths, config: LoaderConfig):
    """A grain IterDataset of batches (dict of numpy arrays, keys in the module docstring).

    paths: a data set directory (with manifest.json), a shard file, or a list of them.
    `iter(ds)` gives a checkpointable iterator (get_state/set_state; grain.checkpoint.CheckpointSave
    and CheckpointRestore inside an orbax Composite).
    """
    import grain

    ds = make_map_dataset(paths, config)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_buffer_size)
    )
    it = it.batch(config.batch_size, drop_remainder=config.drop_remainder)
    if config.worker_count > 0:
        _absl_flags_workaround()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size
            )
        )
    return it


def make_iterator(paths, config: LoaderConfig):
    """`iter(make_dataset(paths, config))`: the checkpointable grain DatasetIterator."""
    return iter(make_dataset(paths, config))


def _absl_flags_workaround() -> None:
    # grain 0.2.18 workers read an absl flag; without parsed flags they fail (google/grain#1355)
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def batch_spec(
    config: LoaderConfig, *, text_dim: int | None = None, latent_shape: tuple | None = None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The one description of a batch: key -> (shape, numpy dtype), as `make_dataset` yields it.

    Args:
      config: B = batch_size, F = num_frames, (H, W) = image_size, N = max_tracks, L = text_len.
      text_dim: D of `text_embedding` (the records carry it); required when text_len > 0.
      latent_shape: (f, h, w, C) of one clip's latents: describe the precomputed-latents batch the train
        step also accepts, `source_latents`/`target_latents` (and `warp_latents` with with_warp)
        (B, f, h, w, C) float32 in place of the videos.
    Returns:
      {key: (shape, dtype)} in the module docstring's order (record_index only with return_record_index).
    """
    B, F, (H, W), N = config.batch_size, config.num_frames, config.image_size, config.max_tracks
    if latent_shape is None:
        clips = {"source_video": ((B, F, H, W, 3), np.uint8), "target_video": ((B, F, H, W, 3), np.uint8)}
        if config.with_warp:
            clips["warp_video"] = ((B, F, H, W, 3), np.uint8)
        if config.with_warp and config.with_coverage:
            clips["warp_coverage"] = ((B, F, H, W, 3), np.uint8)
    else:
        if len(latent_shape) != 4:
            raise ValueError(f"latent_shape must be (f, h, w, C); got {tuple(latent_shape)}")
        lat = (B, *(int(v) for v in latent_shape))
        clips = {"source_latents": (lat, np.float32), "target_latents": (lat, np.float32)}
        if config.with_warp:
            clips["warp_latents"] = (lat, np.float32)
        if config.with_warp and config.with_coverage:
            clips["coverage_latents"] = (lat, np.float32)
    spec = {
        **clips,
        "source_xyz": ((B, F, N, 3), np.float32),
        "target_xyz": ((B, F, N, 3), np.float32),
        "source_visibility": ((B, F, N), np.bool_),
        "target_visibility": ((B, F, N), np.bool_),
        "point_mask": ((B, N), np.bool_),
        "source_intrinsics": ((B, F, 3, 3), np.float32),
        "target_intrinsics": ((B, F, 3, 3), np.float32),
        "source_extrinsics": ((B, F, 4, 4), np.float32),
        "target_extrinsics": ((B, F, 4, 4), np.float32),
        "edit_family": ((B,), np.int32),
    }
    if config.text_len > 0:
        if text_dim is None:
            raise ValueError(f"text_dim is needed to describe text_embedding (text_len={config.text_len})")
        L = config.text_len
        spec.update(text_embedding=((B, L, int(text_dim)), np.float32), text_mask=((B, L), np.bool_))
    if config.return_record_index:
        spec["record_index"] = ((B,), np.int64)
    return {k: (shape, np.dtype(dtype)) for k, (shape, dtype) in spec.items()}


# The keys of every batch (no text, no debug index): the default config's `batch_spec`.
BATCH_KEYS = tuple(batch_spec(LoaderConfig()))
__all__ = [
    "LoaderConfig",
    "make_dataset",
    "make_iterator",
    "make_map_dataset",
    "crop_intrinsics",
    "skipped_records",
    "batch_spec",
    "BATCH_KEYS",
    "EDIT_FAMILIES",
]
