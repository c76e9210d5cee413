"""Training metrics: TensorBoard event files, a JSONL log, and a loss-curve PNG.

Only process 0 writes. Event files are written with tensorboard's own writer (no TensorFlow needed)
and read back by TensorBoard or `tensorboard.backend.event_processing.event_accumulator`.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Mapping

import jax


class MetricsWriter:
    """Write scalar metrics per step to `<workdir>/tb/` (event files) and `<workdir>/metrics.jsonl`.

    Args:
      workdir: the run directory.
      prefix: a tag prefix ("train" or "val") applied to every scalar.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
        self.workdir = pathlib.Path(workdir)
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tb = EventFileWriter(str(self.workdir / "tb"))
            self._jsonl = open(self.workdir / "metrics.jsonl", "a", buffering=1)

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        from tensorboard.compat.proto import event_pb2, summary_pb2

        clean = {f"{prefix}/{k}": float(v) for k, v in scalars.items() if v is not None and math.isfinite(float(v))}
        values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in clean.items()]
        self._tb.add_event(
            event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values))
        )
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.close()
            self._jsonl.close()
            self._tb = None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics.jsonl file (later records for a step replace earlier ones: resumed runs)."""
    by_key: dict[tuple, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                prefix = next((k.split("/")[0] for k in rec if "/" in k), "")
                by_key[(prefix, rec["step"])] = rec
    return [by_key[k] for k in sorted(by_key, key=lambda k: (k[1], k[0]))]


def plot_loss_curve(jsonl_path: str | os.PathLike, out_png: str | os.PathLike) -> pathlib.Path:
    """A PNG of train loss (raw and smoothed) and validation loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    recs = read_jsonl(jsonl_path)
    tr = [(r["step"], r["train/loss"]) for r in recs if "train/loss" in r]
    va = [(r["step"], r["val/loss"]) for r in recs if "val/loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if tr:
        s, l = np.asarray(tr).T
        ax.plot(s, l, color="tab:blue", alpha=0.3, lw=1, label="train loss")
        k = max(1, len(l) // 20)
        if len(l) >= k > 1:
            sm = np.convolve(l, np.ones(k) / k, mode="valid")
            ax.plot(s[k - 1 :], sm, color="tab:blue", lw=2, label=f"train loss ({k}-step mean)")
    if va:
        s, l = np.asarray(va).T
        ax.plot(s, l, "o-", color="tab:orange", lw=2, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("rectified-flow loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = pathlib.Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.tmp-{os.getpid()}.png")
    try:  # a temporary sibling renamed into place: a killed run never leaves half a picture
        fig.savefig(tmp)
        os.replace(tmp, out_png)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return out_png
