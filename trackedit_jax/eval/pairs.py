"""Evaluation pairs: a source clip, its ground-truth target clip, paired tracks and cameras.

Two sources:
* `synthetic_pairs(n, seed, ...)`: held-out pairs made by the data engine (every edit family in
  rotation, frames stored as the training records store them), with what only a renderer knows: the
  source depth (for the warp baseline), the pixels whose surface is visible in both clips (masked PSNR)
  and whether the depth order of two objects changes (the occlusion subset).
* `record_pairs(path)`: pairs read from ArrayRecord shards (`trackedit make-data` / `ingest` output);
  depth when the records hold it, no co-visibility or occlusion labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from trackedit_jax.geometry.types import Camera, Tracks


@dataclasses.dataclass
class EvalPair:
    """One evaluation pair. Videos (F, H, W, 3) uint8; source_depth (F, H, W) camera z or None;
    covisible (F, H, W) bool (target pixels whose surface the source clip also shows) or None;
    occlusion_change: True when two objects swap depth order where they overlap, None if unknown."""

    key: str
    family: str
    source_video: np.ndarray
    target_video: np.ndarray
    source_tracks: Tracks
    source_camera: Camera
    target_tracks: Tracks
    target_camera: Camera
    source_depth: np.ndarray | None = None
    covisible: np.ndarray | None = None
    occlusion_change: bool | None = None


def _from_record(rec, **extra) -> EvalPair:
    size = tuple(int(s) for s in rec.image_size)
    ids = None if rec.source_ids is None else np.asarray(rec.source_ids, np.int32)
    depth = None if rec.source_depth is None else np.asarray(rec.source_depth, np.float32)
    return EvalPair(
        key=rec.key,
        family=rec.edit_family,
        source_video=rec.video("source"),
        target_video=rec.video("target"),
        source_tracks=Tracks(np.asarray(rec.source_xyz, np.float32), np.asarray(rec.source_visibility, bool)),
        source_camera=Camera(
            np.asarray(rec.source_intrinsics, np.float32), np.asarray(rec.source_extrinsics, np.float32), size
        ),
        target_tracks=Tracks(np.asarray(rec.target_xyz, np.float32), np.asarray(rec.target_visibility, bool), ids),
        target_camera=Camera(
            np.asarray(rec.target_intrinsics, np.float32), np.asarray(rec.target_extrinsics, np.float32), size
        ),
        source_depth=depth,
        **extra,
    )


def record_pairs(path) -> Iterator[EvalPair]:
    """Every record of the shards at `path` (a data directory or shard files) as an `EvalPair`.
    Raises ValueError naming the record when one has no target clip."""
    from data_pipeline.schema import decode_record
    from data_pipeline.shards import PairRecordSource

    source = PairRecordSource(path)
    for i in range(len(source)):
        rec = decode_record(source[i])
        if not rec.target_frames:
            raise ValueError(f"{path}: record {rec.key} has no target clip (evaluation needs ground truth)")
        yield _from_record(rec)


def _object_of(geom, prim: np.ndarray) -> np.ndarray:
    return np.array([geom.prims[int(p)].object_index if geom.prims[int(p)] is not None else -1 for p in prim])


def occlusion_relations(geom, render: dict, prim: np.ndarray, xyz: np.ndarray) -> set:
    """{(front, back)} object pairs of one clip: a track on object `back`, in view, lies behind a pixel
    where object `front` is the nearest surface."""
    from trackedit_jax.geometry.projection import project

    cam = Camera(geom.intrinsics, geom.extrinsics(), geom.image_size)
    uv, z = project(xyz, cam)
    H, W = geom.image_size
    obj = _object_of(geom, prim)
    rel = set()
    px = np.round(uv).astype(np.int64)
    inside = (z > 1e-3) & (px[..., 0] >= 0) & (px[..., 0] < W) & (px[..., 1] >= 0) & (px[..., 1] < H)
    for f in range(xyz.shape[0]):
        m = inside[f] & (obj >= 0)
        if not m.any():
            continue
        x, y = px[f, m, 0], px[f, m, 1]
        front_pid = render["pid"][f, y, x].astype(np.int64)
        behind = z[f, m] > render["depth"][f, y, x].astype(np.float64) * 1.02
        for fp, back, hid in zip(front_pid, obj[m], behind):
            if hid and fp >= 0 and geom.prims[fp] is not None:
                front = geom.prims[fp].object_index
                if front >= 0 and front != back:
                    rel.add((int(front), int(back)))
    return rel


def covisible_mask(pair) -> np.ndarray:
    """(F, H, W) bool: target pixels whose surface point is visible in the source clip at that frame."""
    from data_pipeline.synthetic.generator import _dup_maps, track_visibility

    geom_s, geom_t, rt = pair.source, pair.target, pair.target_render
    F, (H, W) = geom_t.num_frames, geom_t.image_size
    dup_to_orig, _ = _dup_maps(pair.target_scene, geom_t)
    pid = rt["pid"].reshape(F, -1).astype(np.int64)
    local = rt["local"].reshape(F, -1, 3).astype(np.float64)
    xyz = np.zeros((F, H * W, 3))
    hit = pid >= 0
    for p in np.unique(pid[hit]):
        src_p = dup_to_orig.get(int(p), int(p))
        prim = geom_s.prims[src_p]
        if prim is None:
            hit &= pid != p
            continue
        fi, pi = np.nonzero(pid == p)
        xyz[fi, pi] = prim.pose.apply(local[fi, pi])[fi, np.arange(len(fi))]
    xyz[~hit] = geom_s.centers[:, None, :].repeat(H * W, 1)[~hit] + 1e6  # far away: never visible
    vis = track_visibility(geom_s, xyz) & hit
    return vis.reshape(F, H, W)


def from_synthetic(pair, config, key: str) -> EvalPair:
    """A generated `SyntheticPair` as an `EvalPair`: frames as the training records store them (the
    record codec round trip), plus source depth, co-visibility and the occlusion label."""
    from data_pipeline.schema import decode_record, encode_record
    from data_pipeline.synthetic.generator import pair_to_record

    rec = decode_record(encode_record(pair_to_record(pair, config, key=key)))
    src_rel = occlusion_relations(pair.source, pair.source_render, pair.prim_source, pair.source_xyz)
    tgt_rel = occlusion_relations(pair.target, pair.target_render, pair.prim_target, pair.target_xyz)
    change = any((b, a) in tgt_rel for (a, b) in src_rel) or any((b, a) in src_rel for (a, b) in tgt_rel)
    return _from_record(rec, covisible=covisible_mask(pair), occlusion_change=bool(change))


def synthetic_pair(seed: int, index: int, *, num_frames: int, size: tuple[int, int]) -> EvalPair:
    """Pair `index` of the synthetic data set `seed` as an `EvalPair`."""
    from data_pipeline.synthetic.generator import SyntheticConfig, generate_pair

    config = SyntheticConfig(num_frames=int(num_frames), image_size=tuple(size), with_depth=True)
    return from_synthetic(generate_pair(seed, index, config), config, key=f"eval-s{seed}-{index:06d}")


def synthetic_pairs(n: int, seed: int, *, num_frames: int, size: tuple[int, int]) -> Iterator[EvalPair]:
    """`n` held-out synthetic pairs of data set `seed` (every edit family in rotation)."""
    for i in range(int(n)):
        yield synthetic_pair(seed, i, num_frames=num_frames, size=size)
