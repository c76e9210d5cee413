"""Real data: readers for tracker outputs and data sets -> canonical `Clip`; stage-2 pair construction.

read_tapip3d, read_tapvid3d, read_kubric, read_dycheck -> Clip(video, Camera, Tracks, fps)
make_pairs(clip, PairOptions(...)) -> [PairRecord]   two non-contiguous windows 1-5 s apart
ingest(fmt, inputs, out_dir, options=...)           the library behind `trackedit ingest`
"""

from data_pipeline.real.clip import Clip, IngestError
from data_pipeline.real.ingest import FORMATS, ingest, read_clip
from data_pipeline.real.pairs import PairOptions, make_pairs, stabilize_static_tracks, window_gap_range
from data_pipeline.real.readers import (
    kubric_camera,
    quaternion_to_matrix,
    read_dycheck,
    read_kubric,
    read_tapip3d,
    read_tapvid3d,
)

__all__ = [
    "Clip",
    "IngestError",
    "FORMATS",
    "ingest",
    "read_clip",
    "PairOptions",
    "make_pairs",
    "stabilize_static_tracks",
    "window_gap_range",
    "kubric_camera",
    "quaternion_to_matrix",
    "read_dycheck",
    "read_kubric",
    "read_tapip3d",
    "read_tapvid3d",
]
