"""Hand-made pair records for the data_pipeline tests (imported by name; pytest puts this folder on sys.path)."""

import pathlib

import numpy as np

from data_pipeline.schema import PairRecord, encode_record


def make_test_record(key="k", F=3, N=4, H=8, W=10, codec="png", **kw):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (F, H, W, 3), dtype=np.uint8)
    fields = dict(
        source_xyz=rng.normal(size=(F, N, 3)).astype(np.float32),
        target_xyz=rng.normal(size=(F, N, 3)).astype(np.float32),
        source_visibility=rng.uniform(size=(F, N)) < 0.5,
        target_visibility=rng.uniform(size=(F, N)) < 0.5,
        source_intrinsics=np.tile(np.eye(3, dtype=np.float32), (F, 1, 1)),
        target_intrinsics=np.tile(np.eye(3, dtype=np.float32), (F, 1, 1)),
        source_extrinsics=np.tile(np.eye(4, dtype=np.float32), (F, 1, 1)),
        target_extrinsics=np.tile(np.eye(4, dtype=np.float32), (F, 1, 1)),
        edit_family="duplication",
        prompt="two boxes",
        metadata={"a": [1, 2]},
    )
    fields.update(kw)
    return PairRecord.from_arrays(key=key, source_video=video, target_video=video[::-1].copy(), codec=codec, **fields)


def write_with_corrupt_record(path: pathlib.Path, bad_index: int, n: int = 4) -> None:
    """A valid shard except record `bad_index`, whose payload has one flipped byte (fails its crc32)."""
    from data_pipeline.shards import write_shard

    recs = []
    for i in range(n):
        b = bytearray(encode_record(make_test_record(f"r{i}")))
        if i == bad_index:
            b[len(b) // 2] ^= 0x55
        recs.append(bytes(b))
    write_shard(path, recs)
