"""`trackedit demo` and `trackedit eval` on the built-in model (few sampling steps)."""

import json
import math

import numpy as np
import pytest

from trackedit_jax.cli import main
from trackedit_jax.infer.builtin import BUILTIN_MODEL

pytestmark = pytest.mark.xdist_group("builtin_model")


@pytest.fixture(scope="module")
def pipe():
    from trackedit_jax.infer.pipeline import EditPipeline

    return EditPipeline.from_pretrained(BUILTIN_MODEL)


def test_builtin_model_is_small_and_complete():
    files = [p for p in BUILTIN_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    cfg = json.loads((BUILTIN_MODEL / "config.json").read_text())
    assert cfg["vae"]["kind"] == "space_to_depth"


@pytest.fixture(scope="module")
def demo(pipe, tmp_path_factory):
    """(output folder, scores) of one demo run with the model's default sampling (what `make demo` runs)."""
    from trackedit_jax.eval.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(pipe, out)


def test_demo_writes_its_files_with_finite_scores(pipe, demo):
    from trackedit_jax.eval.demo import DEMO_FILES
    from trackedit_jax.media import read_video

    out, scores = demo
    for name in DEMO_FILES:
        assert (out / name).stat().st_size > 0, name
    video, _ = read_video(out / "edited.mp4")
    cfg = pipe.config
    assert video.shape == (cfg.num_frames, 4 * cfg.height, 4 * cfg.width, 3)
    for method in ("model", "copy", "warp"):
        assert all(math.isfinite(v) for v in scores[method].values()), scores[method]


# The acceptance bar of the built-in model on the demo scene (a camera arc plus an object moved behind another).
def test_demo_model_beats_copy_in_the_edit_region(demo):
    _, scores = demo
    assert scores["model"]["edit_psnr"] > scores["copy"]["edit_psnr"]


def test_eval_on_two_generated_pairs(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "--make-pairs", "2", "--seed", "991", "--steps", "1", "--out", str(out), "--videos", "1"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["num_pairs"] == 2
    for method in ("model", "copy", "warp"):
        assert set(result["methods"][method]) == {"psnr", "ssim", "masked_psnr", "edit_psnr", "epe"}
        assert math.isfinite(result["methods"][method]["psnr"])
    assert set(result["by_family"]) == {"camera", "object_path"}  # families in rotation
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 2
    for name in ("report.md", "edit_psnr.png", "psnr.png", "epe.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "videos").glob("*.mp4"))) == 1
    assert "model" in capsys.readouterr().out


def test_eval_refuses_pairs_off_the_model_grid_in_one_line(tmp_path, capsys):
    from data_pipeline.synthetic import make_dataset

    data = tmp_path / "small"
    make_dataset(data, num_pairs=1, num_frames=9, size=(32, 32), seed=3, num_tracks=32, progress=False)
    assert main(["eval", "--data", str(data), "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model's grid" in err, err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_eval_refuses_more_steps_than_a_one_step_model_has_in_one_line(tmp_path, capsys):
    """A model exported with `sampling.one_step_only` (trained only at pure noise): `--steps 3` fails with
    one line and leaves no report folder."""
    from infer_assets import one_step_copy

    model = one_step_copy(BUILTIN_MODEL, tmp_path / "one_step")
    out = tmp_path / "r"
    args = ["eval", "--checkpoint", str(model), "--make-pairs", "1", "--seed", "991", "--out", str(out)]
    assert main([*args, "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "samples in one step; got 3 steps" in err, err
    assert not out.exists()


def test_eval_needs_a_pair_source(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--out", "x"])
    assert "--data" in capsys.readouterr().err


def test_pairs_carry_depth_covisibility_and_occlusion_labels():
    from trackedit_jax.eval.pairs import synthetic_pair

    pair = synthetic_pair(991, 0, num_frames=9, size=(32, 32))
    assert pair.source_depth.shape == (9, 32, 32)
    assert pair.covisible.shape == (9, 32, 32) and 0.05 < pair.covisible.mean() <= 1.0
    assert isinstance(pair.occlusion_change, bool)
    assert np.all(pair.source_video.shape == pair.target_video.shape)
