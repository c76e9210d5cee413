"""`trackedit export` and `trackedit edit` killed in the middle of writing, and `export` run out of disk
(RLIMIT_FSIZE): nothing appears at the output paths (a SIGKILL leaves only a hidden `.NAME.tmp-*` folder
beside them); the full-disk case fails in one line and leaves the previous export intact; a re-run
after a kill completes."""

import shutil

import numpy as np
import pytest
from crashes import cli, kill_when, one_line_error, run
from infer_assets import scene
from train_runs import env_for, train_cmd
from train_runs import run as run_training

from trackedit_jax.geometry.io import save_tracks
from trackedit_jax.infer.pretrained import read_pretrained_config
from trackedit_jax.media import write_video

pytestmark = pytest.mark.xdist_group("crash_export")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One step of the tiny preset (random frozen base): a run `trackedit export` can read."""
    from data_pipeline.synthetic import make_dataset

    data = tmp_path_factory.mktemp("pairs")
    make_dataset(data, num_pairs=2, num_frames=9, size=(32, 32), seed=0, workers=1, progress=False)
    wd = tmp_path_factory.mktemp("runs") / "run"
    extra = ["--config.train.num_steps=1", "--config.train.batch_size=2", "--config.checkpoint.every_steps=1"]
    run_training(train_cmd(wd, data, extra), env_for(1, str(tmp_path_factory.mktemp("jax_cache"))))
    return wd


def _kill_until_landed(cmd, ready, outputs, attempts=5):
    """SIGKILL at the kill point; a fast command can finish between two polls, so remove what it wrote
    and retry."""
    for _ in range(attempts):
        status = kill_when(cmd, ready)
        if status == -9:
            return status
        for path in outputs:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    raise AssertionError(f"the kill never landed in {attempts} attempts")


def test_export_killed_then_rerun_then_out_of_disk(workdir, tmp_path):
    out = tmp_path / "model"
    cmd = cli("export", "--workdir", str(workdir), "--out", str(out))
    _kill_until_landed(cmd, lambda: any(tmp_path.glob(".model.tmp-*")), [out])
    assert not out.exists()  # the killed export's files are only in its hidden temporary folder

    assert run(cmd).returncode == 0
    assert read_pretrained_config(out).num_frames == 9
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = run([*cmd, "--overwrite"], fsize=32 << 10)  # every weights file of the model is larger
    line = one_line_error(proc, "export")
    assert "File too large" in line or "os error 27" in line, line
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "model")
    assert len(leftovers) <= 1  # only the killed export's temporary folder; the failed one removed its own


@pytest.fixture(scope="module")
def edit_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit_inputs")
    rng = np.random.default_rng(0)
    write_video(root / "in.mp4", rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8), fps=8)
    tracks, camera = scene(9, (32, 32), num_points=24, seed=1)
    save_tracks(root / "src.npz", tracks, camera)
    (root / "edit.yaml").write_text("camera:\n  - {op: dolly, distance: 0.2}\n")
    return root


@pytest.mark.xdist_group("crash_edit")  # beside the export test, not after it
def test_edit_killed_while_writing_leaves_no_partial_output(tiny_checkpoint, edit_inputs, tmp_path):
    out = tmp_path / "edited.mp4"
    cmd = cli(
        "edit", "--video", str(edit_inputs / "in.mp4"), "--tracks", str(edit_inputs / "src.npz"),
        "--edit", str(edit_inputs / "edit.yaml"), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
        "--steps", "1", "--quiet",
    )  # fmt: skip
    sidecars = [tmp_path / "edited.json", tmp_path / "edited_side_by_side.mp4"]
    # The hidden folder appears just before the first video is written: the kill lands while writing.
    _kill_until_landed(cmd, lambda: any(tmp_path.glob(".edited.tmp-*")), [out, *sidecars])
    assert not out.exists() and not (tmp_path / "edited.json").exists()
    assert not (tmp_path / "edited_side_by_side.mp4").exists()
