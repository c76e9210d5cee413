"""Procedural synthetic pairs with exact 3D tracks (numpy ray casting of analytic primitives).

Public API:
  make_dataset(out_dir, num_pairs, num_frames, size, seed, workers=1, ...)  -> manifest dict
  generate_pair(seed, index, SyntheticConfig(...)) -> SyntheticPair (scenes, renders, tracks)
  make_record(index, seed=, config=) -> PairRecord
"""

from data_pipeline.synthetic.edits import ALL_FAMILIES, BASE_FAMILIES, apply_edit
from data_pipeline.synthetic.generator import (
    VIS_EPS,
    SyntheticConfig,
    SyntheticPair,
    generate_pair,
    make_dataset,
    make_record,
    pair_to_record,
    track_positions,
    track_visibility,
)

__all__ = [
    "ALL_FAMILIES",
    "BASE_FAMILIES",
    "VIS_EPS",
    "SyntheticConfig",
    "SyntheticPair",
    "apply_edit",
    "generate_pair",
    "make_dataset",
    "make_record",
    "pair_to_record",
    "track_positions",
    "track_visibility",
]
