"""launch/colab.ipynb executed top to bottom with nbclient on the CPU: its parameters cell is replaced by
tiny settings (the package "installed" from this checkout with pip's --dry-run, so the shared environment is
left as it is), the cells tagged `accelerator` are dropped, and what the notebook wrote is read back: the
demo videos, the real clip's edit at the built-in model's grid and the tiny run's metrics and checkpoint."""

import json
import os
import pathlib

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from trackedit_jax.media import read_video

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "launch" / "colab.ipynb"
TRAIN_STEPS = 2

PARAMETERS = f"""
REPO_URL = "unused: the checkout exists"
CHECKOUT = {str(REPO)!r}
PIP_ARGS = ["--dry-run", "--no-deps", "--no-build-isolation", "-e", CHECKOUT]
JAX_EXTRA = ""
DEMO_STEPS = 1
EDIT_STEPS = 1
TRAIN_STEPS = {TRAIN_STEPS}
TRAIN_OVERRIDES = ["--config.data.synthetic_pairs=4", "--config.hardware.peak_flops_per_device=1e11"]
"""


def _tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def test_notebook_cells_are_tagged():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert [i for i, c in enumerate(nb.cells) if "parameters" in _tags(c)] == [2]
    accel = [c for c in nb.cells if "accelerator" in _tags(c)]
    assert accel and 'jax.default_backend() in ("tpu", "gpu")' in accel[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


@pytest.mark.slow
def test_notebook_runs_on_cpu(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in _tags(c)]
    params.source = PARAMETERS
    nb.cells = [c for c in nb.cells if "accelerator" not in _tags(c)]
    env_before = os.environ.get("XLA_FLAGS")
    # the kernel and its `trackedit` subprocesses: one CPU device, as on a Colab CPU runtime
    os.environ["XLA_FLAGS"] = ""
    try:
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        if env_before is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = env_before

    for name in ("source", "ground_truth", "warp", "edited", "side_by_side"):
        assert (tmp_path / "demo_out" / f"{name}.mp4").is_file()
    edited, _ = read_video(tmp_path / "edits" / "sheep_arc.mp4")
    clip, _ = read_video(REPO / "launch" / "assets" / "sheep_clip.mp4")
    assert edited.shape == (clip.shape[0], 64, 64, 3)  # all 17 frames, on the built-in model's 64x64 grid
    meta = json.loads((tmp_path / "edits" / "sheep_arc.json").read_text())
    assert meta["settings"]["num_steps"] == 1 and meta["inputs"]["num_source_tracks"] == 400
    assert meta["inputs"]["edit_log"] == ["camera: arc", "camera: dolly"]

    records = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == list(range(1, TRAIN_STEPS + 1))
    assert np.all(np.isfinite([r["train/loss"] for r in records if "train/loss" in r]))
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / str(TRAIN_STEPS)).is_dir()
    # the shown videos came back as cell outputs
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("text/html" in o.get("data", {}) for o in outputs) >= 2
