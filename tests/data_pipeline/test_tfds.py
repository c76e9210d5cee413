"""The TFDS builder writes array_record files that tfds.data_source reads back without TensorFlow."""

import importlib.util

import numpy as np


def test_build_and_read_without_tensorflow(tmp_path):
    assert importlib.util.find_spec("tensorflow") is None, "this test proves the path works without TF"
    import tensorflow_datasets as tfds

    from data_pipeline.schema import EDIT_FAMILIES
    from data_pipeline.synthetic import SyntheticConfig, generate_pair
    from data_pipeline.tfds_builder import TrackeditSynthetic

    builder = TrackeditSynthetic(config="smoke", data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    assert list(tmp_path.rglob("*.array_record*")), "no array_record files written"
    ds = tfds.data_source("trackedit_synthetic/smoke", data_dir=str(tmp_path), split="train")
    assert len(ds) == 3
    seen = set()
    for i in range(len(ds)):
        ex = ds[i]
        key = ex["key"].decode() if isinstance(ex["key"], bytes) else ex["key"]
        idx = int(key.rsplit("-", 1)[1])
        seen.add(idx)
        ref = generate_pair(0, idx, SyntheticConfig(num_frames=5, image_size=(16, 24), num_tracks=64))
        np.testing.assert_array_equal(ex["source"]["video"], ref.source_render["rgb"])
        np.testing.assert_array_equal(ex["target"]["video"], ref.target_render["rgb"])
        np.testing.assert_array_equal(ex["target"]["xyz"], ref.target_xyz.astype(np.float32))
        np.testing.assert_array_equal(ex["source"]["visibility"], ref.source_visibility)
        np.testing.assert_array_equal(ex["source"]["extrinsics"], ref.source.extrinsics().astype(np.float32))
        assert EDIT_FAMILIES[int(ex["edit_family"])] == ref.family
    assert seen == {0, 1, 2}
