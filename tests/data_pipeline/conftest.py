"""Shared tiny synthetic data sets for the data_pipeline tests."""

import pytest

from data_pipeline.synthetic import make_dataset

TINY = dict(num_pairs=8, num_frames=9, size=(32, 40), seed=5)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """8 pairs (one per synthetic edit family) of 9 frames at 32x40, 3 shards."""
    out = tmp_path_factory.mktemp("tiny_dataset")
    make_dataset(
        out,
        TINY["num_pairs"],
        TINY["num_frames"],
        TINY["size"],
        TINY["seed"],
        records_per_shard=3,
        num_tracks=96,
        progress=False,
    )
    return out
