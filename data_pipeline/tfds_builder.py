"""TFDS builder for the synthetic pair set (array_record files, readable with `tfds.data_source` and no
TensorFlow installed).

    from data_pipeline.tfds_builder import TrackeditSynthetic
    builder = TrackeditSynthetic(config="smoke", data_dir=DIR, file_format="array_record")
    builder.download_and_prepare()
    ds = tfds.data_source("trackedit_synthetic/smoke", data_dir=DIR, split="train")
    example = ds[0]   # dict of numpy arrays (Text -> bytes, ClassLabel -> int)

Features are plain (zlib-encoded) tensors: TFDS image/video features need TensorFlow to encode.
Examples are `data_pipeline.synthetic.generate_pair(seed, i, ...)`, identical to `make-data synthetic`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline.schema import EDIT_FAMILIES


@dataclasses.dataclass
class TrackeditSyntheticConfig(tfds.core.BuilderConfig):
    num_pairs: int = 8
    num_frames: int = 17
    height: int = 64
    width: int = 64
    num_tracks: int = 1024
    seed: int = 0


class TrackeditSynthetic(tfds.core.GeneratorBasedBuilder):
    """Procedural source/target clip pairs with exact 3D tracks (see data_pipeline.synthetic)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release (generator version 1)."}
    BUILDER_CONFIGS = [
        TrackeditSyntheticConfig(
            name="smoke",
            description="3 pairs, 5 frames of 16x24 (tests)",
            num_pairs=3,
            num_frames=5,
            height=16,
            width=24,
            num_tracks=64,
        ),
        TrackeditSyntheticConfig(
            name="tiny_cpu",
            description="256 pairs, 17 frames of 64x64",
            num_pairs=256,
            num_frames=17,
            height=64,
            width=64,
            num_tracks=1024,
        ),
        TrackeditSyntheticConfig(
            name="paper",
            description="2000 pairs, 81 frames of 384x672",
            num_pairs=2000,
            num_frames=81,
            height=384,
            width=672,
            num_tracks=1024,
        ),
    ]
    DEFAULT_CONFIG_NAME = "smoke"

    # TFDS looks for a checksums file next to the builder's code through `importlib_resources`, which
    # this environment lacks (a tfds dependency not installed on Python >= 3.9); nothing is downloaded,
    # so there are no checksums to find.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        F, H, W = c.num_frames, c.height, c.width
        T = tfds.features.Tensor

        def clip():
            return {
                "video": T(shape=(F, H, W, 3), dtype=np.uint8, encoding="zlib"),
                "xyz": T(shape=(F, None, 3), dtype=np.float32, encoding="zlib"),
                "visibility": T(shape=(F, None), dtype=np.bool_, encoding="zlib"),
                "intrinsics": T(shape=(F, 3, 3), dtype=np.float32),
                "extrinsics": T(shape=(F, 4, 4), dtype=np.float32),
            }

        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "key": tfds.features.Text(),
                    "source": clip(),
                    "target": clip(),
                    "source_ids": T(shape=(None,), dtype=np.int32),
                    "edit_family": tfds.features.ClassLabel(names=list(EDIT_FAMILIES)),
                    "prompt": tfds.features.Text(),
                }
            ),
            homepage="https://arxiv.org/abs/2512.02015",
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        from data_pipeline.synthetic import SyntheticConfig, generate_pair

        c = self.builder_config
        cfg = SyntheticConfig(num_frames=c.num_frames, image_size=(c.height, c.width), num_tracks=c.num_tracks)
        for i in range(c.num_pairs):
            p = generate_pair(c.seed, i, cfg)
            key = f"synthetic-s{c.seed}-{i:08d}"
            yield (
                key,
                {
                    "key": key,
                    "source": {
                        "video": p.source_render["rgb"],
                        "xyz": p.source_xyz.astype(np.float32),
                        "visibility": p.source_visibility,
                        "intrinsics": p.source.intrinsics.astype(np.float32),
                        "extrinsics": p.source.extrinsics().astype(np.float32),
                    },
                    "target": {
                        "video": p.target_render["rgb"],
                        "xyz": p.target_xyz.astype(np.float32),
                        "visibility": p.target_visibility,
                        "intrinsics": p.target.intrinsics.astype(np.float32),
                        "extrinsics": p.target.extrinsics().astype(np.float32),
                    },
                    "source_ids": p.source_ids.astype(np.int32),
                    "edit_family": EDIT_FAMILIES.index(p.family),
                    "prompt": p.prompt,
                },
            )
