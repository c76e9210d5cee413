"""Record schema round trips (no pickle) and ArrayRecord shards: manifest, resume, parallel, bad files."""

import pathlib

import numpy as np
import pytest
from dp_records import make_test_record, write_with_corrupt_record

from data_pipeline.schema import (
    RecordError,
    decode_frames,
    decode_record,
    encode_frames,
    encode_record,
)
from data_pipeline.shards import (
    MANIFEST,
    PairRecordSource,
    ShardError,
    load_manifest,
    verify_dataset,
    write_dataset,
    write_records,
)
from data_pipeline.synthetic import ALL_FAMILIES, SyntheticConfig, make_record


def test_round_trip_all_fields():
    rec = make_test_record(
        source_ids=np.array([0, 1, 2, 0], np.int32),
        text_embedding=np.ones((5, 6), np.float32),
        text_mask=np.array([1, 1, 1, 0, 0], bool),
        source_latents=np.zeros((1, 2, 2, 4), np.float32),
        source_depth=np.ones((3, 8, 10), np.float16),
        edit_components=("camera", "duplication"),
    )
    back = decode_record(encode_record(rec))
    for f in (
        "source_xyz",
        "target_xyz",
        "source_visibility",
        "source_ids",
        "text_embedding",
        "text_mask",
        "source_latents",
        "source_depth",
        "target_extrinsics",
    ):
        np.testing.assert_array_equal(getattr(back, f), getattr(rec, f))
    assert back.target_latents is None and back.metadata == {"a": [1, 2]}
    assert back.edit_components == ("camera", "duplication") and back.prompt == "two boxes"
    np.testing.assert_array_equal(back.video("source"), rec.video("source"))  # png is lossless
    assert back.video("target", [2]).shape == (1, 8, 10, 3)


@pytest.mark.parametrize("codec", ["jpeg", "png", "raw"])
def test_frame_codecs(codec):
    import cv2

    rng = np.random.default_rng(1)
    v = cv2.GaussianBlur(rng.integers(0, 256, (2, 16, 24, 3), dtype=np.uint8).reshape(32, 24, 3), (5, 5), 2).reshape(
        2, 16, 24, 3
    )
    back = decode_frames(encode_frames(v, codec, quality=95), codec, (16, 24))
    err = np.abs(back.astype(int) - v).mean()
    assert err == 0 if codec != "jpeg" else err < 6, err


def test_schema_rejects_bad_records():
    with pytest.raises(RecordError, match="source_xyz contains NaN"):
        make_test_record(source_xyz=np.full((3, 4, 3), np.nan, np.float32))
    with pytest.raises(RecordError, match="target_visibility must have shape"):
        make_test_record(target_visibility=np.zeros((2, 4), bool))
    with pytest.raises(RecordError, match="edit_family"):
        make_test_record(edit_family="teleport")
    with pytest.raises(RecordError, match="not allowed"):
        encode_record(make_test_record(source_latents=np.array([object()], dtype=object)))
    data = bytearray(encode_record(make_test_record()))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(RecordError, match="checksum"):
        decode_record(bytes(data))
    with pytest.raises(RecordError, match="magic"):
        decode_record(b"PICKLE" + bytes(data[6:]))


def test_warp_frames_round_trip_and_are_optional():
    warp = np.random.default_rng(3).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    rec = make_test_record(warp_video=warp)
    back = decode_record(encode_record(rec))
    np.testing.assert_array_equal(back.video("warp"), warp)  # png is lossless
    np.testing.assert_array_equal(back.video("warp", [1]), warp[1:2])
    plain = decode_record(encode_record(make_test_record()))
    assert plain.warp_frames is None
    with pytest.raises(ValueError, match="no warp frames"):
        plain.video("warp")
    with pytest.raises(ValueError, match="warp_video must have"):
        make_test_record(warp_video=warp[:2])
    rec.warp_frames = rec.warp_frames[:2]
    with pytest.raises(RecordError, match="warp_frames has 2 frames"):
        rec.validate()


def test_warp_coverage_round_trips_and_comes_with_warp_frames():
    warp = np.random.default_rng(3).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    cov = np.random.default_rng(4).integers(0, 3, (3, 8, 10), dtype=np.uint8)
    rec = make_test_record(warp_video=warp)
    rec.warp_coverage = cov
    back = decode_record(encode_record(rec))
    np.testing.assert_array_equal(back.warp_coverage, cov)
    assert back.warp_coverage.dtype == np.uint8
    assert decode_record(encode_record(make_test_record(warp_video=warp))).warp_coverage is None
    rec.warp_coverage = cov[:, :4]
    with pytest.raises(RecordError, match="warp_coverage must be"):
        rec.validate()
    rec.warp_coverage = cov.astype(np.int32)
    with pytest.raises(RecordError, match="warp_coverage must be uint8"):
        rec.validate()
    plain = make_test_record()
    plain.warp_coverage = cov
    with pytest.raises(RecordError, match="comes with warp_frames"):
        plain.validate()


def test_warp_displacement_round_trips_and_comes_with_warp_coverage():
    warp = np.random.default_rng(3).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    cov = np.random.default_rng(4).integers(0, 3, (3, 8, 10), dtype=np.uint8)
    disp = np.random.default_rng(5).integers(0, 256, (3, 8, 10), dtype=np.uint8)
    rec = make_test_record(warp_video=warp)
    rec.warp_coverage, rec.warp_displacement = cov, disp
    back = decode_record(encode_record(rec))
    np.testing.assert_array_equal(back.warp_displacement, disp)
    assert back.warp_displacement.dtype == np.uint8
    rec.warp_displacement = disp[:, :4]
    with pytest.raises(RecordError, match="warp_displacement must be"):
        rec.validate()
    rec.warp_displacement = disp.astype(np.float32)
    with pytest.raises(RecordError, match="warp_displacement must be uint8"):
        rec.validate()
    rec.warp_coverage, rec.warp_displacement = None, disp
    with pytest.raises(RecordError, match="comes with warp_coverage"):
        rec.validate()


def test_every_family_in_a_generated_set(tiny_dataset):
    m = load_manifest(tiny_dataset)
    assert set(m["edit_family_counts"]) == set(ALL_FAMILIES)
    src = PairRecordSource(tiny_dataset)
    assert len(src) == 8 and m["num_shards"] == 3
    fams = [src.decode(i).edit_family for i in range(len(src))]
    assert sorted(fams) == sorted(ALL_FAMILIES)
    report = verify_dataset(tiny_dataset)
    assert report["bad_shards"] == [] and report["bad_records"] == [] and report["num_records"] == 8


class _FailAt:
    def __init__(self, fail_index, config):
        self.fail_index, self.config = fail_index, config

    def __call__(self, i):
        if i == self.fail_index:
            raise RuntimeError("simulated crash")
        return make_record(i, seed=1, config=self.config)


def test_resume_after_a_crash_and_workers_give_identical_shards(tmp_path):
    cfg = SyntheticConfig(num_frames=5, image_size=(16, 16), num_tracks=16)
    gen = {"name": "test", "seed": 1}
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_dataset(crashed, _FailAt(4, cfg), 6, generator=gen, records_per_shard=2, workers=2, progress=False)
    names = sorted(p.name for p in crashed.iterdir())
    assert "shard-00002-of-00003.array_record" not in names and MANIFEST not in names
    assert not [n for n in names if ".tmp-" in n], "a partial shard was left behind"
    with pytest.raises(ValueError, match="different configuration"):
        write_dataset(crashed, _FailAt(-1, cfg), 6, generator={"name": "other"}, records_per_shard=2, progress=False)
    done_before = {n for n in names if n.endswith(".array_record")}
    m = write_dataset(crashed, _FailAt(-1, cfg), 6, generator=gen, records_per_shard=2, progress=False)
    assert m["num_records"] == 6 and len(done_before) <= 2
    # the same data set from scratch in one process: byte-identical shards
    fresh = write_dataset(tmp_path / "fresh", _FailAt(-1, cfg), 6, generator=gen, records_per_shard=2, progress=False)
    assert [s["sha256"] for s in fresh["shards"]] == [s["sha256"] for s in m["shards"]]
    assert not (crashed / ".parts").exists()


def test_two_tasks_share_one_output(tmp_path):
    cfg = SyntheticConfig(num_frames=5, image_size=(16, 16), num_tracks=8)
    f = _FailAt(-1, cfg)
    gen = {"name": "tasks"}
    assert (
        write_dataset(tmp_path, f, 4, generator=gen, records_per_shard=1, task_index=1, num_tasks=2, progress=False)
        is None
    )
    m = write_dataset(tmp_path, f, 4, generator=gen, records_per_shard=1, task_index=0, num_tasks=2, progress=False)
    assert m is not None and m["num_records"] == 4 and len(PairRecordSource(tmp_path)) == 4


def test_write_records_is_all_or_nothing(tmp_path):
    def stream():
        yield make_test_record("a")
        yield make_test_record("b")
        raise ValueError("bad input file x.npz")

    with pytest.raises(ValueError, match="x.npz"):
        write_records(tmp_path, stream(), generator={}, records_per_shard=1)
    assert list(tmp_path.iterdir()) == []
    m = write_records(
        tmp_path,
        iter([make_test_record("a"), make_test_record("b"), make_test_record("c")]),
        generator={},
        records_per_shard=2,
    )
    assert m["num_records"] == 3 and m["num_shards"] == 2
    with pytest.raises(ValueError, match="already holds"):
        write_records(tmp_path, iter([make_test_record("d")]), generator={})


def _copy_dataset(src: pathlib.Path, dst: pathlib.Path):
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())


def test_truncated_shard_named_or_skipped(tiny_dataset, tmp_path):
    d = tmp_path / "ds"
    _copy_dataset(tiny_dataset, d)
    m = load_manifest(d)
    victim = d / m["shards"][1]["file"]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=f"{victim.name}.*(truncated|bytes)"):
        PairRecordSource(d)
    src = PairRecordSource(d, on_error="skip")
    assert len(src) == 8 - m["shards"][1]["num_records"]
    assert len(src.skipped_shards) == 1 and victim.name in src.skipped_shards[0][0]
    # without a manifest (shard files given directly) a truncated file is also refused by name
    with pytest.raises(ShardError, match=victim.name):
        PairRecordSource([victim])


def test_corrupt_record_named(tmp_path):
    path = tmp_path / "shard-00000-of-00001.array_record"
    write_with_corrupt_record(path, 2)
    src = PairRecordSource([path])
    assert src.decode(1).key == "r1"
    with pytest.raises(ShardError, match=rf"{path.name}: record 2 .*corrupt.*checksum"):
        src.decode(2)


def test_damaged_shard_bytes_named(tiny_dataset, tmp_path):
    d = tmp_path / "ds"
    _copy_dataset(tiny_dataset, d)
    m = load_manifest(d)
    victim = d / m["shards"][0]["file"]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # same size, so the manifest size check passes; the sha256 does not
    victim.write_bytes(bytes(raw))
    src = PairRecordSource(d)
    errors = []
    for i in range(len(src)):
        try:
            src.decode(i)
        except ShardError as e:
            errors.append((i, str(e)))
    assert errors, "a damaged shard must not decode silently"
    for i, msg in errors:
        path, local = src.locate(i)
        assert victim.name in msg and f"record {local}" in msg
    rep = verify_dataset(d)
    assert any(victim.name in f for f, _ in rep["bad_shards"])
