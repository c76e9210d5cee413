"""Synthetic pairs: one scene rendered twice (source motion, edited target motion) with exact 3D tracks.

Tracks are surface points identified by (primitive, object-space point). Their world position in any
frame of either clip is that primitive's pose applied to the point, so xyz is exact; the same
object-space point has the same albedo everywhere. Most tracks are queried at random pixels of random
frames of both clips (visible at least once, like a tracker's queries), split between object and
background pixels; `surface_fraction` of them are drawn uniformly over object surfaces (hidden sides
too, like mesh vertices). A track on a duplicated object gets a twin whose target position follows the
copy (`source_ids` points the twin at its original).

Visibility (per clip, frame, track): in front of the camera (z > 1e-3), projected inside
[-0.5, W-0.5] x [-0.5, H-0.5], and no surface hit along the ray from the camera centre to the point
before (1 - VIS_EPS) of the way, i.e. the exact depth buffer at the point's sub-pixel position is not
nearer than (1 - VIS_EPS) z. VIS_EPS = 1e-6 (relative depth; the hit is computed in float64).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from data_pipeline.schema import PairRecord, encode_frames
from data_pipeline.synthetic.edits import ALL_FAMILIES, apply_edit
from data_pipeline.synthetic.raycast import sample_surface, snap_to_surface
from data_pipeline.synthetic.render import NEAR, ClipGeometry, cast_rays, evaluate_clip, render_clip
from data_pipeline.synthetic.scene import NUM_BACKGROUND_PRIMS, Scene, camera_clearance, random_scene
from trackedit_jax.geometry import Camera, Tracks, in_front, in_image, project

VIS_EPS = 1e-6
GENERATOR_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_frames: int = 17
    image_size: tuple = (64, 64)
    num_tracks: int = 1024  # before duplication twins are added
    families: tuple = ALL_FAMILIES  # pair i uses families[i % len(families)]
    codec: str = "jpeg"
    jpeg_quality: int = 95
    with_depth: bool = False
    with_warp: bool = False  # store the classical warp of the source into the target view (warp_frames)
    surface_fraction: float = 0.15
    object_fraction: float = 0.5
    fps: float = 16.0

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1; got {self.num_frames}")
        if len(self.image_size) != 2 or min(self.image_size) < 2:
            raise ValueError(f"image_size must be (H, W) with H, W >= 2; got {self.image_size}")
        if self.num_tracks < 1:
            raise ValueError(f"num_tracks must be >= 1; got {self.num_tracks}")
        bad = [f for f in self.families if f not in ALL_FAMILIES]
        if bad or not self.families:
            raise ValueError(f"families must be a non-empty subset of {ALL_FAMILIES}; got {self.families}")
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        object.__setattr__(self, "families", tuple(self.families))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["families"] = list(self.families)
        return d


@dataclasses.dataclass
class SyntheticPair:
    """Everything about one generated pair (the record holds a subset)."""

    family: str
    edit: dict
    source_scene: Scene
    target_scene: Scene
    source: ClipGeometry
    target: ClipGeometry
    source_render: dict
    target_render: dict
    prim_source: np.ndarray  # (N,) primitive id of each track in the source clip
    prim_target: np.ndarray  # (N,) primitive id in the target clip (a duplicate's for twins)
    local: np.ndarray  # (N, 3) object-space point
    source_ids: np.ndarray  # (N,)
    source_xyz: np.ndarray  # (F, N, 3) float64
    target_xyz: np.ndarray
    source_visibility: np.ndarray  # (F, N) bool
    target_visibility: np.ndarray
    prompt: str


def track_positions(geom: ClipGeometry, prim: np.ndarray, local: np.ndarray) -> np.ndarray:
    """World xyz (F, N, 3) of object-space points `local` (N, 3) on primitives `prim` (N,)."""
    xyz = np.zeros((geom.num_frames, len(prim), 3))
    for p in np.unique(prim):
        m = prim == p
        if geom.prims[p] is None:
            raise ValueError(f"primitive {p} does not exist in this clip")
        xyz[:, m] = geom.prims[p].pose.apply(local[m])
    return xyz


def track_visibility(geom: ClipGeometry, xyz: np.ndarray, eps: float = VIS_EPS) -> np.ndarray:
    """(F, N) bool visibility of world points by the exact depth test described in the module doc."""
    camera = Camera(geom.intrinsics, geom.extrinsics(), geom.image_size)
    uv, z = project(xyz, camera)
    inside = in_front(z, NEAR) & in_image(uv, geom.image_size)
    t, _, _, _ = cast_rays(geom, geom.centers[:, None, :], xyz - geom.centers[:, None, :])
    return inside & (t >= 1.0 - eps)


def _dup_maps(target: Scene, geom_t: ClipGeometry) -> tuple[dict, dict]:
    """(duplicate prim -> original prim, original prim -> [duplicate prims])."""
    first: dict = {}
    for i, p in enumerate(geom_t.prims):
        if p is not None and p.object_index >= 0 and p.part_index == 0:
            first[p.object_index] = i
    dup_to_orig, orig_to_dups = {}, {}
    for oi, obj in enumerate(target.objects):
        if obj.duplicate_of >= 0:
            for k in range(len(obj.parts)):
                d, o = first[oi] + k, first[obj.duplicate_of] + k
                dup_to_orig[d] = o
                orig_to_dups.setdefault(o, []).append(d)
    return dup_to_orig, orig_to_dups


def sample_tracks(rng, cfg: SyntheticConfig, geom_s, geom_t, render_s, render_t, target: Scene):
    """(prim_source, prim_target, local, source_ids) for cfg.num_tracks tracks plus duplication twins."""
    n = cfg.num_tracks
    dup_to_orig, orig_to_dups = _dup_maps(target, geom_t)
    n_surf = int(round(cfg.surface_fraction * n))
    n_query = n - n_surf
    F = geom_s.num_frames
    H, W = geom_s.image_size
    m = 4 * n_query + 16
    clip = rng.uniform(size=m) < 0.4  # True: query the target clip
    f = rng.integers(0, F, m)
    y, x = rng.integers(0, H, m), rng.integers(0, W, m)
    pid = np.where(clip, render_t["pid"][f, y, x], render_s["pid"][f, y, x]).astype(np.int64)
    loc = np.where(clip[:, None], render_t["local"][f, y, x], render_s["local"][f, y, x]).astype(np.float64)
    pid = np.array([dup_to_orig.get(int(p), int(p)) for p in pid])
    ok = pid >= 0
    pid, loc = pid[ok], loc[ok]
    is_obj = pid >= NUM_BACKGROUND_PRIMS
    n_obj = min(int(is_obj.sum()), int(round(cfg.object_fraction * n_query)))
    obj_idx = np.flatnonzero(is_obj)[:n_obj]
    rest = np.setdiff1d(np.arange(len(pid)), obj_idx)[: n_query - n_obj]
    take = np.concatenate([obj_idx, rest])
    prims, locals_ = [pid[take]], [loc[take]]
    # uniform surface samples on (original) objects, weighted by bounding-sphere area
    obj_prims = [
        i for i, p in enumerate(geom_s.prims) if p is not None and p.object_index >= 0 and i not in dup_to_orig
    ]
    if n_surf and obj_prims:
        w = np.array([geom_s.prims[i].local_radius ** 2 for i in obj_prims])
        choice = rng.choice(len(obj_prims), size=n_surf, p=w / w.sum())
        for c in np.unique(choice):
            k = int((choice == c).sum())
            p = geom_s.prims[obj_prims[c]]
            prims.append(np.full(k, obj_prims[c]))
            locals_.append(sample_surface(p.kind, p.size, k, rng))
    prim = np.concatenate(prims).astype(np.int64)
    local = np.concatenate(locals_)
    for p in np.unique(prim):  # raster points carry float32 error: put them exactly on the surface
        m = prim == p
        local[m] = snap_to_surface(geom_s.prims[p].kind, geom_s.prims[p].size, local[m])
    order = rng.permutation(len(prim))
    prim, local = prim[order], local[order]
    prim_t = prim.copy()
    ids = np.arange(len(prim))
    twins = [(j, d) for j, p in enumerate(prim) for d in orig_to_dups.get(int(p), [])]
    if twins:
        tj = np.array([j for j, _ in twins])
        prim = np.concatenate([prim, prim[tj]])
        prim_t = np.concatenate([prim_t, np.array([d for _, d in twins])])
        local = np.concatenate([local, local[tj]])
        ids = np.concatenate([ids, tj])
    return prim, prim_t, local, ids.astype(np.int32)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _prompt(scene: Scene, geom: ClipGeometry) -> str:
    names: dict = {}
    for obj in scene.objects:
        if obj.removed:
            continue
        base = scene.objects[obj.duplicate_of] if obj.duplicate_of >= 0 else obj
        desc = f"{base.parts[0].texture.colour_name()} {base.name}"
        names[desc] = names.get(desc, 0) + 1
    words = {2: "two", 3: "three", 4: "four"}

    def count(d, k):
        if k == 1:
            return _a(d)
        return f"{words.get(k, str(k))} {d}{'es' if d.endswith('x') else 's'}"

    items = [count(d, k) for d, k in names.items()]
    if not items:
        return f"an empty scene with {_a(scene.ground_texture.colour_name())} patterned floor"
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"{listed} on {_a(scene.ground_texture.colour_name())} patterned floor"


def generate_pair(
    seed: int, index: int, config: SyntheticConfig = SyntheticConfig(), family: str | None = None
) -> SyntheticPair:
    """Pair `index` of the data set with `seed` (deterministic; independent of other pairs)."""
    rng = np.random.default_rng([int(seed), int(index), GENERATOR_VERSION])
    family = family or config.families[index % len(config.families)]
    for _ in range(50):
        source = random_scene(rng)
        for _ in range(5):
            target, edit = apply_edit(source, family, rng)
            if camera_clearance(target, target.camera) >= 0.3:
                break
        else:
            continue
        break
    return render_pair(source, target, family, edit, rng, config)


def render_pair(
    source: Scene,
    target: Scene,
    family: str,
    edit: dict,
    rng: np.random.Generator,
    config: SyntheticConfig = SyntheticConfig(),
) -> SyntheticPair:
    """Render a (source, target) scene pair and sample its tracks (the random draws come from `rng`)."""
    F, size = config.num_frames, config.image_size
    n_prims = 2 + sum(len(o.parts) for o in target.objects)
    geom_s = evaluate_clip(source, F, size, num_prims=n_prims)
    geom_t = evaluate_clip(target, F, size, num_prims=n_prims)
    rs, rt = render_clip(geom_s), render_clip(geom_t)
    prim_s, prim_t, local, ids = sample_tracks(rng, config, geom_s, geom_t, rs, rt, target)
    xyz_s = track_positions(geom_s, prim_s, local)
    xyz_t = track_positions(geom_t, prim_t, local)
    return SyntheticPair(
        family=family,
        edit=edit,
        source_scene=source,
        target_scene=target,
        source=geom_s,
        target=geom_t,
        source_render=rs,
        target_render=rt,
        prim_source=prim_s,
        prim_target=prim_t,
        local=local,
        source_ids=ids,
        source_xyz=xyz_s,
        target_xyz=xyz_t,
        source_visibility=track_visibility(geom_s, xyz_s),
        target_visibility=track_visibility(geom_t, xyz_t),
        prompt=_prompt(target, geom_t),
    )


def pair_to_record(pair: SyntheticPair, config: SyntheticConfig, key: str, metadata: dict | None = None) -> PairRecord:
    f32 = np.float32
    extra = {}
    if config.with_depth:
        extra = dict(
            source_depth=pair.source_render["depth"].astype(np.float16),
            target_depth=pair.target_render["depth"].astype(np.float16),
        )
    comps = tuple(pair.edit.get("components", [pair.family]))
    rec = PairRecord.from_arrays(
        key=key,
        source_video=pair.source_render["rgb"],
        target_video=pair.target_render["rgb"],
        codec=config.codec,
        quality=config.jpeg_quality,
        source_xyz=pair.source_xyz.astype(f32),
        target_xyz=pair.target_xyz.astype(f32),
        source_visibility=pair.source_visibility,
        target_visibility=pair.target_visibility,
        source_intrinsics=pair.source.intrinsics.astype(f32),
        target_intrinsics=pair.target.intrinsics.astype(f32),
        source_extrinsics=pair.source.extrinsics().astype(f32),
        target_extrinsics=pair.target.extrinsics().astype(f32),
        source_ids=pair.source_ids if len(np.unique(pair.source_ids)) != len(pair.source_ids) else None,
        edit_family=pair.family,
        edit_components=comps,
        prompt=pair.prompt,
        fps=config.fps,
        metadata={
            "generator": "trackedit-synthetic",
            "generator_version": GENERATOR_VERSION,
            "edit": pair.edit,
            "visibility_eps": VIS_EPS,
            "objects": [o.name for o in pair.target_scene.objects],
            "source_camera": pair.source_scene.camera.kind,
            "target_camera": pair.target_scene.camera.kind,
            **(metadata or {}),
        },
        **extra,
    )
    if config.with_warp:  # from the decoded source clip: what a model is given at inference
        warp, rec.warp_coverage, rec.warp_displacement = record_warp(rec, pair.source_render["depth"])
        rec.warp_frames = encode_frames(warp, config.codec, config.jpeg_quality)
    return rec


def record_warp(rec: PairRecord, source_depth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The record's source clip moved into the target view by `geometry.warp`, with all its tracks (and
    the source depth (F, H, W) when given): (F, H, W, 3) uint8 frames, (F, H, W) uint8 coverage and
    (F, H, W) uint8 displacement."""
    from trackedit_jax.geometry.warp import warp_video

    size = tuple(rec.image_size)
    return warp_video(
        rec.video("source"),
        Tracks(rec.source_xyz, rec.source_visibility),
        Camera(rec.source_intrinsics, rec.source_extrinsics, size),
        Tracks(rec.target_xyz, rec.target_visibility, rec.source_ids),
        Camera(rec.target_intrinsics, rec.target_extrinsics, size),
        source_depth=None if source_depth is None else np.asarray(source_depth, np.float32),
        return_coverage=True,
        return_displacement=True,
    )


def make_record(index: int, *, seed: int, config: SyntheticConfig) -> PairRecord:
    """Record `index` of the synthetic data set (a picklable function of the index for workers)."""
    pair = generate_pair(seed, index, config)
    return pair_to_record(
        pair, config, key=f"synthetic-s{seed}-{index:08d}", metadata={"seed": int(seed), "index": int(index)}
    )


def make_dataset(
    out_dir: str | os.PathLike,
    num_pairs: int,
    num_frames: int,
    size: Sequence[int],
    seed: int,
    workers: int = 1,
    *,
    records_per_shard: int = 64,
    num_tracks: int = 1024,
    families: Sequence[str] = ALL_FAMILIES,
    codec: str = "jpeg",
    jpeg_quality: int = 95,
    with_depth: bool = False,
    with_warp: bool = False,
    task_index: int = 0,
    num_tasks: int = 1,
    progress: bool = True,
) -> dict | None:
    """Generate `num_pairs` synthetic pairs into ArrayRecord shards under out_dir (with a tqdm bar).

    Deterministic: pair i depends only on (seed, i, the arguments), not on workers or sharding.
    Resumable and parallel (see `data_pipeline.shards.write_dataset`). Returns the manifest dict
    (None if other tasks still have shards to write).
    """
    from data_pipeline.shards import write_dataset

    config = SyntheticConfig(
        num_frames=int(num_frames),
        image_size=tuple(size),
        num_tracks=int(num_tracks),
        families=tuple(families),
        codec=codec,
        jpeg_quality=int(jpeg_quality),
        with_depth=bool(with_depth),
        with_warp=bool(with_warp),
    )
    generator = {
        "name": "trackedit-synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "config": config.to_json(),
    }
    return write_dataset(
        pathlib.Path(out_dir),
        functools.partial(make_record, seed=int(seed), config=config),
        int(num_pairs),
        generator=generator,
        records_per_shard=records_per_shard,
        workers=workers,
        task_index=task_index,
        num_tasks=num_tasks,
        progress=progress,
        desc="synthetic pairs",
    )
