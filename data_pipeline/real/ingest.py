"""Convert real tracker outputs / data sets into pair-record shards (the library behind `trackedit ingest`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from data_pipeline.real.clip import IngestError
from data_pipeline.real.pairs import PairOptions, make_pairs
from data_pipeline.real.readers import READERS

FORMATS = tuple(READERS)
DEFAULT_FPS = {"tapip3d": 10.0, "tapvid3d": 10.0, "kubric": 12.0, "dycheck": None}
_log = logging.getLogger(__name__)


def read_clip(fmt: str, path: str | os.PathLike, *, fps: float | None = None, **kwargs):
    """One input -> canonical Clip with the reader of `fmt` (one of FORMATS)."""
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    fps = fps if fps is not None else DEFAULT_FPS[fmt]  # dycheck: None = read extra.json
    return READERS[fmt](path, fps=fps, **kwargs)


def ingest(
    fmt: str,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    options: PairOptions = PairOptions(),
    fps: float | None = None,
    on_error: str = "raise",
    records_per_shard: int = 64,
    reader_kwargs: dict | None = None,
    progress: bool = True,
) -> dict:
    """Read every input, cut stage-2 pairs, write them as a new data set in out_dir (all or nothing).

    on_error="raise": the first bad input aborts with an error naming it and nothing is written.
    on_error="skip": bad inputs are skipped; the manifest lists them under "skipped_inputs".
    Returns the manifest.
    """
    from data_pipeline.shards import write_records

    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip'; got {on_error!r}")
    if not inputs:
        raise ValueError("no inputs given")
    skipped: list = []
    rng = np.random.default_rng(options.seed)

    def records():
        it = inputs
        if progress:
            from tqdm import tqdm

            it = tqdm(inputs, desc=f"ingest {fmt}", unit="clip", dynamic_ncols=True)
        for path in it:
            try:
                clip = read_clip(fmt, path, fps=fps, **(reader_kwargs or {}))
                recs = make_pairs(clip, options, rng)
            except (IngestError, FileNotFoundError, ValueError) as e:
                if on_error == "raise":
                    raise
                _log.warning("skipping %s: %s", path, e)
                skipped.append({"file": str(path), "reason": str(e)})
                continue
            yield from recs

    generator = {
        "name": "trackedit-ingest",
        "format": fmt,
        "inputs": [str(p) for p in inputs],
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(options).items()},
        "fps": fps,
        "reader_kwargs": reader_kwargs or {},
    }
    extra = {"skipped_inputs": skipped}
    return write_records(out_dir, records(), generator=generator, records_per_shard=records_per_shard, extra=extra)
