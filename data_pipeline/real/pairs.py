"""Stage-2 pairs from one real clip: two non-contiguous windows 1-5 s apart, linked by shared tracks."""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.real.clip import Clip, IngestError
from data_pipeline.schema import PairRecord
from trackedit_jax.geometry import Tracks, camera_centers


@dataclasses.dataclass(frozen=True)
class PairOptions:
    num_frames: int = 17  # frames per window (4k+1 for the Wan VAE)
    stride: int = 1  # take every stride-th frame inside a window
    gap_seconds: tuple = (1.0, 5.0)  # start-to-start separation of the two windows
    pairs_per_clip: int = 4
    min_tracks: int = 500  # N ~ U[min_tracks, max_tracks], clamped to what is available
    max_tracks: int = 1000
    min_shared_tracks: int = 16  # fewer tracked-in-both points: no pair from these windows
    min_visible_frames: int = 1  # a shared point is visible this often in each window
    stabilize: bool = False  # make static background tracks exactly static
    static_threshold: float = 0.01  # static: max deviation < this x median camera distance
    random_order: bool = True  # which window is the source is random
    codec: str = "jpeg"
    jpeg_quality: int = 95
    seed: int = 0

    def __post_init__(self):
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1; got {self.num_frames}")
        lo, hi = self.gap_seconds
        if not 0 <= lo <= hi:
            raise ValueError(f"gap_seconds must be (min, max) with 0 <= min <= max; got {self.gap_seconds}")
        if self.min_tracks > self.max_tracks or self.min_tracks < 1:
            raise ValueError(f"need 1 <= min_tracks <= max_tracks; got {self.min_tracks}, {self.max_tracks}")


def stabilize_static_tracks(tracks: Tracks, camera, threshold: float = 0.01) -> tuple[Tracks, np.ndarray]:
    """Replace tracks that barely move (max deviation of visible positions from their median below
    threshold x the median camera-to-point distance) by their median position in every frame.

    Returns (new Tracks, (N,) bool mask of the tracks made static)."""
    xyz = np.asarray(tracks.xyz, np.float64)
    vis = np.asarray(tracks.visibility, bool)
    w = np.where(vis[..., None], xyz, np.nan)
    med = np.nanmedian(w, axis=0)  # (N, 3); NaN if never visible
    dev = np.nanmax(np.linalg.norm(w - med[None], axis=-1), axis=0)
    scale = np.nanmedian(np.linalg.norm(xyz - np.asarray(camera_centers(camera), np.float64)[:, None], axis=-1))
    static = np.isfinite(dev) & (dev < threshold * scale)
    out = xyz.copy()
    out[:, static] = med[static][None]
    return tracks.replace(xyz=out.astype(np.float32)), static


def window_gap_range(num_frames_clip: int, fps: float, opts: PairOptions) -> tuple[int, int, int] | None:
    """(last valid first-window start, min start gap, max start gap) in frames, or None if no pair fits.

    Windows of span (num_frames - 1) * stride + 1 must not overlap or touch (start gap > span) and
    their starts must be gap_seconds apart."""
    span = (opts.num_frames - 1) * opts.stride + 1
    lo, hi = opts.gap_seconds
    dmin = max(span + 1, int(np.ceil(lo * fps - 1e-9)))
    dmax = int(np.floor(hi * fps + 1e-9))
    last = num_frames_clip - span - dmin
    if dmin > dmax or last < 0:
        return None
    return last, dmin, dmax


def make_pairs(clip: Clip, opts: PairOptions, rng: np.random.Generator | None = None) -> list[PairRecord]:
    """Up to opts.pairs_per_clip pair records from one clip (raises IngestError if none is possible)."""
    rng = rng or np.random.default_rng(opts.seed)
    tracks = clip.tracks
    static = np.zeros(tracks.num_points, bool)
    if opts.stabilize:
        tracks, static = stabilize_static_tracks(tracks, clip.camera, opts.static_threshold)
    T = clip.num_frames
    gaps = window_gap_range(T, clip.fps, opts)
    if gaps is None:
        span = (opts.num_frames - 1) * opts.stride + 1
        raise IngestError(
            f"{clip.source or clip.name}: {T} frames at {clip.fps:g} fps cannot hold two "
            f"non-contiguous {span}-frame windows {opts.gap_seconds[0]:g}-{opts.gap_seconds[1]:g} s apart"
        )
    last, dmin, dmax = gaps
    span = (opts.num_frames - 1) * opts.stride + 1
    xyz = np.asarray(tracks.xyz, np.float32)
    vis = np.asarray(tracks.visibility, bool)
    K = np.asarray(clip.camera.intrinsics, np.float32)
    E = np.asarray(clip.camera.extrinsics, np.float32)
    records, seen, tried = [], set(), 0
    while len(records) < opts.pairs_per_clip and tried < 20 * opts.pairs_per_clip:
        tried += 1
        a = int(rng.integers(0, last + 1))
        b = a + int(rng.integers(dmin, min(dmax, T - span - a) + 1))
        if (a, b) in seen:
            continue
        seen.add((a, b))
        if opts.random_order and rng.uniform() < 0.5:
            a, b = b, a
        fa = a + opts.stride * np.arange(opts.num_frames)
        fb = b + opts.stride * np.arange(opts.num_frames)
        shared = np.flatnonzero(
            (vis[fa].sum(0) >= opts.min_visible_frames) & (vis[fb].sum(0) >= opts.min_visible_frames)
        )
        if len(shared) < opts.min_shared_tracks:
            continue
        n = min(int(rng.integers(opts.min_tracks, opts.max_tracks + 1)), len(shared))
        sel = np.sort(rng.choice(shared, size=n, replace=False))
        records.append(
            PairRecord.from_arrays(
                key=f"{clip.name}-f{a:05d}-f{b:05d}",
                source_video=clip.video[fa],
                target_video=clip.video[fb],
                codec=opts.codec,
                quality=opts.jpeg_quality,
                source_xyz=xyz[fa][:, sel],
                target_xyz=xyz[fb][:, sel],
                source_visibility=vis[fa][:, sel],
                target_visibility=vis[fb][:, sel],
                source_intrinsics=K[fa],
                target_intrinsics=K[fb],
                source_extrinsics=E[fa],
                target_extrinsics=E[fb],
                edit_family="real",
                edit_components=("real",),
                prompt="",
                fps=clip.fps,
                metadata={
                    "source_file": clip.source,
                    "clip": clip.name,
                    "source_start": int(a),
                    "target_start": int(b),
                    "stride": opts.stride,
                    "gap_seconds": abs(b - a) / clip.fps,
                    "shared_tracks": int(len(shared)),
                    "stabilized_tracks": int(static[sel].sum()) if opts.stabilize else 0,
                },
            )
        )
    if not records:
        raise IngestError(
            f"{clip.source or clip.name}: no window pair shares >= {opts.min_shared_tracks} tracks "
            f"(tried {tried} pairs of windows)"
        )
    return records
