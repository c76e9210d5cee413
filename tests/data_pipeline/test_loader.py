"""The grain loader: exact batch contract, determinism, checkpointed resume, per-process sharding,
crop/resize intrinsics against an independent image measurement, skip-and-count of bad records."""

import dataclasses

import numpy as np
import pytest

from data_pipeline.loader import (
    BATCH_KEYS,
    LoaderConfig,
    batch_spec,
    crop_intrinsics,
    make_iterator,
    skipped_records,
)
from data_pipeline.schema import EDIT_FAMILIES, PairRecord
from data_pipeline.shards import ShardError, write_shard
from trackedit_jax.geometry.warp import coverage_video

CFG = LoaderConfig(
    batch_size=2,
    num_frames=5,
    image_size=(16, 24),
    max_tracks=32,
    min_tracks=8,
    max_drawn_tracks=24,
    seed=3,
    process_index=0,
    process_count=1,
    read_threads=2,
)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_contract(tiny_dataset):
    b = next(make_iterator(tiny_dataset, CFG))
    B, F, (H, W), N = 2, 5, (16, 24), 32
    want = {
        "source_video": ((B, F, H, W, 3), np.uint8),
        "target_video": ((B, F, H, W, 3), np.uint8),
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
    assert set(b) == set(want) == set(BATCH_KEYS)
    for k, (shape, dtype) in want.items():
        assert b[k].shape == shape and b[k].dtype == dtype, (k, b[k].shape, b[k].dtype)
    n = b["point_mask"].sum(1)
    assert ((n >= 8) & (n <= 24)).all()
    for i in range(B):
        pad = ~b["point_mask"][i]
        first = np.argmax(b["point_mask"][i])
        # padding: copies of the first drawn point, never visible
        np.testing.assert_array_equal(
            b["source_xyz"][i][:, pad], np.repeat(b["source_xyz"][i][:, first : first + 1], pad.sum(), 1)
        )
        assert not b["source_visibility"][i][:, pad].any() and not b["target_visibility"][i][:, pad].any()
        # drawn tracks were visible at least once in the window
        real = b["point_mask"][i]
        assert (b["source_visibility"][i][:, real].any(0) | b["target_visibility"][i][:, real].any(0)).all()
    assert all(0 <= f < len(EDIT_FAMILIES) for f in b["edit_family"])


def test_visible_tracks_land_on_their_colour_after_crop(tiny_dataset):
    """Projected with the loader's intrinsics, a track visible in two frames lands on similar colours
    (the synthetic textures are smooth), which fails if the intrinsics ignore the crop."""
    from trackedit_jax.geometry import Camera, project

    cfg = LoaderConfig(
        **{
            **CFG.__dict__,
            "crop_scale": (0.5, 0.7),
            "image_size": (24, 24),
            "max_tracks": 64,
            "min_tracks": 64,
            "max_drawn_tracks": 64,
        }
    )
    it = make_iterator(tiny_dataset, cfg)
    good = total = 0
    for b in _take(it, 4):
        for i in range(2):
            for side in ("source", "target"):
                cam = Camera(b[f"{side}_intrinsics"][i], b[f"{side}_extrinsics"][i], (24, 24))
                uv, _ = project(b[f"{side}_xyz"][i].astype(np.float64), cam)
                f_idx, n_idx = np.nonzero(b[f"{side}_visibility"][i])
                px = np.clip(np.round(uv[f_idx, n_idx]).astype(int), 0, 23)
                col = b[f"{side}_video"][i][f_idx, px[:, 1], px[:, 0]].astype(float)
                # same point, first visible frame vs each other visible frame
                for n in np.unique(n_idx):
                    c = col[n_idx == n]
                    total += len(c) - 1
                    good += (np.abs(c[1:] - c[0]).max(-1) < 60).sum()
    assert total > 100 and good / total > 0.8, (good, total)


def test_crop_intrinsics_match_a_resampled_dot():
    """Independent check: a dot drawn at a projected position is found (intensity centroid) at the
    position the cropped intrinsics predict, after the loader's crop + OpenCV resize."""
    import cv2

    rng = np.random.default_rng(0)
    H0, W0, out = 60, 80, (32, 40)
    K = np.array([[70.0, 0, 39.5], [0, 70.0, 29.5], [0, 0, 1]])
    for _ in range(20):
        u, v = rng.uniform(30, 50), rng.uniform(24, 36)
        img = np.zeros((H0, W0), np.float64)
        yy, xx = np.mgrid[:H0, :W0]
        img = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 1.5**2))
        cw = int(rng.integers(40, 70))
        ch = int(round(cw * out[0] / out[1]))
        # a crop that keeps the dot (and its blur) inside
        x0 = int(rng.integers(max(0, int(np.ceil(u + 6 - cw))), min(W0 - cw, int(u - 6)) + 1))
        y0 = int(rng.integers(max(0, int(np.ceil(v + 6 - ch))), min(H0 - ch, int(v - 6)) + 1))
        crop = cv2.resize(
            img[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32), (out[1], out[0]), interpolation=cv2.INTER_AREA
        )
        K2 = crop_intrinsics(K, x0, y0, cw, ch, out[1], out[0])
        xn, yn = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]  # the ray of the dot
        pu, pv = K2[0, 0] * xn + K2[0, 2], K2[1, 1] * yn + K2[1, 2]
        ys, xs = np.mgrid[: out[0], : out[1]]
        w = crop / crop.sum()
        assert abs((w * xs).sum() - pu) < 0.05 and abs((w * ys).sum() - pv) < 0.05


def test_same_seed_same_batches_and_resume_from_checkpoint(tiny_dataset, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    a = _take(make_iterator(tiny_dataset, CFG), 6)
    b = _take(make_iterator(tiny_dataset, CFG), 6)
    for x, y in zip(a, b):
        _equal(x, y)
    other = next(make_iterator(tiny_dataset, LoaderConfig(**{**CFG.__dict__, "seed": 4})))
    assert any(not np.array_equal(other[k], a[0][k]) for k in ("source_xyz", "source_video"))
    # save the iterator state inside an orbax Composite after 3 batches, restore into a fresh iterator
    it = make_iterator(tiny_dataset, CFG)
    _take(it, 3)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("state", "data_iter"))
    mngr.save(
        3,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave({"step": np.array(3)}), data_iter=grain.checkpoint.CheckpointSave(it)
        ),
    )
    mngr.wait_until_finished()
    after = _take(it, 3)
    fresh = make_iterator(tiny_dataset, CFG)
    mngr.restore(
        3,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore({"step": np.array(0)}), data_iter=grain.checkpoint.CheckpointRestore(fresh)
        ),
    )
    mngr.close()
    for x, y in zip(_take(fresh, 3), after):
        _equal(x, y)
    for x, y in zip(after, a[3:]):
        _equal(x, y)
    # get_state/set_state directly too
    it2 = make_iterator(tiny_dataset, CFG)
    it2.set_state(it.get_state())
    _equal(next(it2), next(it))


def test_two_processes_read_disjoint_halves(tiny_dataset):
    seen = []
    for p in (0, 1):
        cfg = LoaderConfig(
            **{
                **CFG.__dict__,
                "process_index": p,
                "process_count": 2,
                "repeat": False,
                "batch_size": 1,
                "return_record_index": True,
            }
        )
        seen.append({int(b["record_index"][0]) for b in make_iterator(tiny_dataset, cfg)})
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(8))
    assert len(seen[0]) == len(seen[1]) == 4


def test_process_slices_reassemble_the_single_process_batches(tiny_dataset):
    """Global batches do not depend on the process count: 2 processes x 1 = 1 process x 2, exactly."""
    one = _take(make_iterator(tiny_dataset, LoaderConfig(**{**CFG.__dict__, "batch_size": 2})), 3)
    halves = [
        _take(
            make_iterator(
                tiny_dataset, LoaderConfig(**{**CFG.__dict__, "batch_size": 1, "process_index": p, "process_count": 2})
            ),
            3,
        )
        for p in (0, 1)
    ]
    for i, ref in enumerate(one):
        joined = {k: np.concatenate([halves[0][i][k], halves[1][i][k]]) for k in ref}
        _equal(joined, ref)


def test_worker_processes_give_the_same_batches(tiny_dataset):
    ref = _take(make_iterator(tiny_dataset, CFG), 2)
    it = make_iterator(tiny_dataset, LoaderConfig(**{**CFG.__dict__, "worker_count": 1}))
    got = _take(it, 2)
    del it
    for x, y in zip(got, ref):
        _equal(x, y)


def test_text_embeddings_are_padded(tmp_path):
    rng = np.random.default_rng(0)
    F, N = 5, 10
    common = dict(
        source_xyz=np.tile([0, 0, 5.0], (F, N, 1)).astype(np.float32)
        + rng.normal(scale=0.1, size=(F, N, 3)).astype(np.float32),
        source_visibility=np.ones((F, N), bool),
        target_visibility=np.ones((F, N), bool),
        source_intrinsics=np.tile(np.array([[20, 0, 8], [0, 20, 8], [0, 0, 1]], np.float32), (F, 1, 1)),
        source_extrinsics=np.tile(np.eye(4, dtype=np.float32), (F, 1, 1)),
        edit_family="real",
    )
    common["target_xyz"], common["target_intrinsics"] = common["source_xyz"], common["source_intrinsics"]
    common["target_extrinsics"] = common["source_extrinsics"]
    recs = []
    for k, L in enumerate((3, 7)):
        recs.append(
            PairRecord.from_arrays(
                key=f"t{k}",
                source_video=np.zeros((F, 16, 16, 3), np.uint8),
                target_video=np.zeros((F, 16, 16, 3), np.uint8),
                codec="raw",
                text_embedding=np.full((L, 4), k + 1, np.float32),
                text_mask=np.ones(L, bool),
                **common,
            )
        )
    path = tmp_path / "s.array_record"
    write_shard(path, recs)
    cfg = LoaderConfig(
        batch_size=2,
        num_frames=5,
        image_size=(16, 16),
        max_tracks=16,
        min_tracks=4,
        max_drawn_tracks=8,
        text_len=5,
        shuffle=False,
        process_index=0,
        process_count=1,
    )
    b = next(make_iterator([path], cfg))
    assert b["text_embedding"].shape == (2, 5, 4) and b["text_mask"].shape == (2, 5)
    np.testing.assert_array_equal(b["text_mask"].sum(1), [3, 5])
    assert (b["text_embedding"][0, 3:] == 0).all() and (b["text_embedding"][0, :3] == 1).all()


def test_warp_frames_are_cropped_and_resized_like_the_target(tmp_path):
    """Records whose warp frames are their target frames: under random crops and a resize, every batch's
    warp_video equals its target_video exactly (one crop for all clips); records without warp frames are
    named."""
    rng = np.random.default_rng(5)
    F, N, H, W = 5, 12, 20, 28
    K = np.tile(np.array([[20, 0, W / 2], [0, 20, H / 2], [0, 0, 1]], np.float32), (F, 1, 1))
    E = np.tile(np.eye(4, dtype=np.float32), (F, 1, 1))
    xyz = (np.array([0, 0, 5.0]) + rng.normal(scale=0.5, size=(F, N, 3))).astype(np.float32)
    common = dict(
        source_xyz=xyz, target_xyz=xyz,
        source_visibility=np.ones((F, N), bool), target_visibility=np.ones((F, N), bool),
        source_intrinsics=K, target_intrinsics=K, source_extrinsics=E, target_extrinsics=E, edit_family="camera",
    )  # fmt: skip
    recs, plain = [], []
    for k in range(4):
        src, tgt = (rng.integers(0, 256, (F, H, W, 3), dtype=np.uint8) for _ in range(2))
        recs.append(
            PairRecord.from_arrays(
                key=f"w{k}", source_video=src, target_video=tgt, warp_video=tgt, codec="raw", **common
            )
        )
        plain.append(PairRecord.from_arrays(key=f"p{k}", source_video=src, target_video=tgt, codec="raw", **common))
    write_shard(tmp_path / "w.array_record", recs)
    write_shard(tmp_path / "p.array_record", plain)
    # coverage records whose target clip is their coverage clip: warp_coverage must equal target_video, but
    # for the displacement (channel 2), which counts pixels and so grows with the resize
    covered = []
    for k in range(4):
        cov = rng.integers(0, 3, (F, H, W), dtype=np.uint8)
        disp = np.repeat(rng.integers(0, 20, (F, 1, W), dtype=np.uint8), H, 1)  # constant down each column
        src = rng.integers(0, 256, (F, H, W, 3), dtype=np.uint8)
        tgt = coverage_video(cov, disp)
        rec = PairRecord.from_arrays(
            key=f"c{k}", source_video=src, target_video=tgt, warp_video=src, codec="raw", **common
        )
        rec.warp_coverage, rec.warp_displacement = cov, disp
        covered.append(rec)
    write_shard(tmp_path / "c.array_record", covered)
    stale = PairRecord.from_arrays(key="s", source_video=src, target_video=tgt, warp_video=src, codec="raw", **common)
    stale.warp_coverage = cov  # made before the displacement was stored
    write_shard(tmp_path / "s.array_record", [stale])
    cfg = LoaderConfig(
        batch_size=2, num_frames=5, image_size=(12, 16), max_tracks=16, min_tracks=4, max_drawn_tracks=8,
        crop_scale=(0.5, 0.9), with_warp=True, shuffle=True, process_index=0, process_count=1,
    )  # fmt: skip
    it = make_iterator([tmp_path / "w.array_record"], cfg)
    for _ in range(4):
        b = next(it)
        assert b["warp_video"].shape == b["target_video"].shape == (2, 5, 12, 16, 3)
        np.testing.assert_array_equal(b["warp_video"], b["target_video"])
        assert not np.array_equal(b["warp_video"], b["source_video"])
    with pytest.raises(ShardError, match="no warp frames"):
        next(make_iterator([tmp_path / "p.array_record"], cfg))
    cov_cfg = dataclasses.replace(cfg, with_coverage=True)
    assert "warp_coverage" not in next(make_iterator([tmp_path / "c.array_record"], cfg))
    it = make_iterator([tmp_path / "c.array_record"], cov_cfg)
    for _ in range(4):
        b = next(it)
        assert b["warp_coverage"].shape == (2, 5, 12, 16, 3) and b["warp_coverage"].dtype == np.uint8
        np.testing.assert_array_equal(b["warp_coverage"][..., :2], b["target_video"][..., :2])
        np.testing.assert_array_equal(b["warp_video"], b["source_video"])
    assert set(batch_spec(cov_cfg)) == set(b)
    # half-size crops (10 x 13 of the 20 x 28 record) are enlarged to 12 x 16, and the displacement with them
    b = next(make_iterator([tmp_path / "c.array_record"], dataclasses.replace(cov_cfg, crop_scale=(0.5, 0.5))))
    np.testing.assert_array_equal(b["warp_coverage"][..., :2], b["target_video"][..., :2])
    got, plain = (c[..., 2].astype(float) for c in (b["warp_coverage"], b["target_video"]))
    zoom = (12 / 10 + 16 / 13) / 2
    assert plain.max() > 10 and np.abs(got - zoom * plain).max() <= 1.5  # rounded before and after the resize
    with pytest.raises(ShardError, match="no warp_coverage"):
        next(make_iterator([tmp_path / "w.array_record"], cov_cfg))
    with pytest.raises(ShardError, match="no warp_displacement"):
        next(make_iterator([tmp_path / "s.array_record"], cov_cfg))


def test_corrupt_record_raises_with_name_or_is_skipped_and_counted(tmp_path):
    from dp_records import write_with_corrupt_record

    path = tmp_path / "bad.array_record"
    write_with_corrupt_record(path, bad_index=1, n=4)
    cfg = LoaderConfig(
        batch_size=1,
        num_frames=1,
        image_size=(8, 10),
        max_tracks=4,
        min_tracks=1,
        max_drawn_tracks=4,
        shuffle=False,
        repeat=False,
        process_index=0,
        process_count=1,
        read_threads=1,
    )
    with pytest.raises(ShardError, match=r"bad.array_record: record 1 .*corrupt"):
        list(make_iterator([path], cfg))
    before = skipped_records().get("corrupt", 0)
    got = list(make_iterator([path], LoaderConfig(**{**cfg.__dict__, "on_error": "skip"})))
    assert len(got) == 3 and skipped_records()["corrupt"] == before + 1


def test_config_from_a_training_preset_section():
    cfg = LoaderConfig.from_config(
        {
            "height": 64,
            "width": 48,
            "num_frames": 17,
            "max_tracks": 256,
            "min_tracks": 64,
            "workers": 0,
            "train_path": "",
            "synthetic_pairs": 32,
        },
        batch_size=2,
        seed=7,
    )
    assert cfg.image_size == (64, 48) and cfg.worker_count == 0 and cfg.batch_size == 2 and cfg.seed == 7
    with pytest.raises(ValueError, match="4k\\+1"):
        LoaderConfig(num_frames=16)


def test_batch_spec_describes_the_batches_the_loader_makes(tiny_dataset):
    """`batch_spec` (what the AOT planner compiles for) is exactly the keys, shapes and dtypes of a real batch."""
    b = next(make_iterator(tiny_dataset, CFG))
    spec = batch_spec(CFG)
    assert list(spec) == list(BATCH_KEYS) and set(spec) == set(b)
    for k, (shape, dtype) in spec.items():
        assert b[k].shape == shape and b[k].dtype == dtype, (k, b[k].shape, b[k].dtype, shape, dtype)
    lat = batch_spec(CFG, latent_shape=(2, 4, 6, 16))
    assert "source_video" not in lat and lat["target_latents"] == ((2, 2, 4, 6, 16), np.float32)
    text = batch_spec(LoaderConfig(**{**CFG.__dict__, "text_len": 5}), text_dim=4)
    assert text["text_embedding"] == ((2, 5, 4), np.float32) and text["text_mask"] == ((2, 5), np.bool_)
    with pytest.raises(ValueError, match="text_dim"):
        batch_spec(LoaderConfig(**{**CFG.__dict__, "text_len": 5}))
