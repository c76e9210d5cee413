"""Configuration errors name their field before anything compiles; the paper-size step compiles AOT."""

import subprocess
import sys

import numpy as np
import pytest
from train_runs import REPO, env_for

from trackedit_jax.configuration import apply_overrides, load_config
from trackedit_jax.train.build import ConfigError, validate_config


def _tiny(*overrides):
    return load_config("tiny_cpu", list(overrides))


@pytest.mark.parametrize(
    "overrides, devices, field",
    [
        (["--config.mesh.data=3"], 8, "mesh"),
        (["--config.mesh.data=2", "--config.mesh.fsdp=-1", "--config.mesh.tensor=3"], 8, "mesh.fsdp=-1"),
        (["--config.mesh.data=-1", "--config.train.batch_size=3"], 2, "train.batch_size"),
        (["--config.init.allow_random_base=false"], 1, "init.wan_path"),
        (["--config.init.wan_path=/nonexistent/wan"], 1, "init.wan_path"),
        (["--config.data.num_frames=16"], 1, "data.num_frames"),
        (["--config.data.height=40"], 1, "data.height"),
        (["--config.data.min_tracks=500"], 1, "data.min_tracks"),
        (["--config.data.train_path=/nonexistent/shards"], 1, "data.train_path"),
        (["--config.model.conditioner.sampling=nearest"], 1, "model"),
        (["--config.model.source_skip=true"], 1, "model.source_skip"),  # tiny_cpu predicts the velocity
        (["--config.model.source_gate=true"], 1, "model.source_gate"),  # tiny_cpu has no warp prior
        (["--config.model.gate_coverage=true"], 1, "model.gate_coverage"),  # tiny_cpu has no source gate
        (["--config.diffusion.gate_weight=1.0"], 1, "diffusion.gate_weight"),  # tiny_cpu has no source gate
        (["--config.diffusion.weighting=snr"], 1, "diffusion.weighting"),
    ],
)
def test_bad_config_names_the_field(overrides, devices, field):
    with pytest.raises(ConfigError) as e:
        validate_config(_tiny(*overrides), num_devices=devices)
    assert field in str(e.value)


def test_stage2_needs_init_from():
    with pytest.raises(ConfigError, match="init_from"):
        validate_config(
            load_config("wan1_3b_stage2", ["--config.init.allow_random_base=true", "--config.data.synthetic_pairs=1"]),
            num_devices=1,
        )


def test_overrides_are_typed_and_checked():
    c = _tiny("--config.train.lr=1e-3", "--config.model.wan.remat_policy=none", "--config.lora.mode=lora")
    assert c.train.lr == 1e-3 and c.model.wan.remat_policy == "none" and c.lora.mode == "lora"
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(c, ["--config.train.lrr=1"])
    with pytest.raises(ValueError, match="expected a int"):
        apply_overrides(c, ["--config.train.num_steps=many"])


def test_paper_setting_compiles_ahead_of_time_on_16_devices(tmp_path):
    """Wan 1.3B + LoRA 64, 81 frames at 384x672 (2 x 21 x 24 x 42 tokens), abstract weights, 16 devices."""
    proc = subprocess.run(
        [sys.executable, "-m", "trackedit_jax.cli", "plan", "--config", "wan1_3b_stage1", "--simulate-devices", "16"],
        env=env_for(1, str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split("  ", 1) for line in proc.stdout.splitlines() if "  " in line)
    assert lines["devices"].strip() == "16"
    assert lines["tokens per example (paired)"].strip() == "42,336"
    peak_gib = float(lines["peak estimate per device"].split()[0])
    assert 0 < peak_gib < 80, proc.stdout  # fits an 80 GB accelerator with full remat


def test_one_text_len_and_the_planned_batch_is_the_loaders():
    """`text.text_len` is the one prompt length (an older config's `model.wan.text_len` is not read), and the
    batch the planner compiles for is the loader's `batch_spec` with latents of the VAE's grid and text."""
    import jax

    from data_pipeline.loader import BATCH_KEYS
    from trackedit_jax.parallel.mesh import make_mesh
    from trackedit_jax.train import build
    from trackedit_jax.train.setup import TrainingSetup

    c = _tiny("--config.text.text_len=12")
    assert "text_len" not in c.model.wan and build.wan_config(c).text_len == 12
    old = _tiny()
    old.model.wan.text_len = 99  # what configs saved before this change carry
    assert build.wan_config(old).text_len == 16
    batch = TrainingSetup.create(c, make_mesh({"data": 1}, devices=jax.devices()[:1])).abstract_batch()
    want = set(BATCH_KEYS) - {"source_video", "target_video"}
    assert set(batch) == want | {"source_latents", "target_latents", "text_embedding", "text_mask"}
    # tiny_cpu: batch 2, 17 frames at 64x64 through the tiny Wan VAE (frames 1 + 4k -> 1 + k, pixels / 8)
    assert batch["source_latents"].shape == (2, 5, 8, 8, 16) and batch["target_latents"].dtype == np.float32
    assert batch["text_embedding"].shape == (2, 12, 32) and batch["source_xyz"].shape == (2, 17, 256, 3)
