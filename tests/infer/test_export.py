"""`trackedit export` on a real (tiny) LoRA training run: the exported model reproduces the validation loss
the run itself logged, the EMA export holds the EMA adapters merged into the rebuilt random base, relative
--workdir/--out work from any folder, and the command's errors are one line."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_runs import env_for, run, train_cmd

from trackedit_jax.cli import main
from trackedit_jax.configuration import config_from_json
from trackedit_jax.convert.checkpoint_files import open_checkpoint
from trackedit_jax.infer.pretrained import load_pretrained
from trackedit_jax.models.wan.dit import WanDiT
from trackedit_jax.train.checkpointing import read_state_numpy

pytestmark = pytest.mark.xdist_group("train_runs")

STEPS = 3
RUN = [
    f"--config.train.num_steps={STEPS}",
    "--config.train.batch_size=2",
    f"--config.train.val_every={STEPS}",
    "--config.train.val_batches=1",
    "--config.train.warmup_steps=0",
    "--config.train.lr=1e-2",
    "--config.train.ema_decay=0.5",
    "--config.lora.mode=lora",
    "--config.checkpoint.every_steps=1",
]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """3 LoRA steps of the tiny preset on a random (allow_random_base) frozen base, EMA on, validation at
    the last step; trained with a relative --workdir (`cd runs && trackedit train --workdir lora_run`)."""
    from data_pipeline.synthetic import make_dataset

    data = tmp_path_factory.mktemp("pairs")
    make_dataset(data, num_pairs=4, num_frames=9, size=(32, 32), seed=0, workers=1, progress=False)
    runs = tmp_path_factory.mktemp("runs")
    run(train_cmd("lora_run", data, RUN), env_for(1, str(tmp_path_factory.mktemp("jax_cache"))), cwd=runs)
    return runs / "lora_run"


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    assert main(["export", "--workdir", str(lora_run), "--out", str(out)]) == 0
    return out


def _val_loss(model, vae, config, val_path) -> float:
    """The run's validation loss (train.loop._validate with one batch) recomputed with `model`."""
    from trackedit_jax.train.loop import make_iterator
    from trackedit_jax.train.step import validation_loss

    it = make_iterator(config, val_path, seed=12345, repeat=True)
    batch = {k: jnp.asarray(v) for k, v in next(it).items() if isinstance(v, np.ndarray) and v.dtype != object}
    size = (int(config.data.height), int(config.data.width))
    loss = nnx.jit(lambda m, v, b, k: validation_loss(m, v, b, k, config, size))
    return float(loss(model, vae, batch, jax.random.PRNGKey(0)))


def test_exported_model_reproduces_the_logged_validation_loss(lora_run, exported):
    logged = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val/loss"] for r in logged if r.get("step") == STEPS and "val/loss" in r]
    assert len(val) == 1
    config = config_from_json(lora_run / "config.json")
    pre = load_pretrained(exported)
    assert pre.config.wan.lora_rank == 0 and pre.config.source["step"] == STEPS and not pre.config.source["ema"]
    ours = _val_loss(pre.model, pre.vae, config, config.data.val_path)
    print(f"\nval loss: logged {val[0]!r}, exported model {ours!r}, rel diff {abs(ours - val[0]) / val[0]:.2e}")
    np.testing.assert_allclose(ours, val[0], rtol=2e-5)


def test_ema_export_merges_the_ema_adapters_into_the_rebuilt_base(lora_run, exported, tmp_path, capsys):
    from trackedit_jax.train import build

    out = tmp_path / "ema_model"
    argv = ["--workdir", str(lora_run), "--out", str(out), "--ema", "--step", "2"]
    argv += ["--sample-shift", "2.5", "--sample-steps", "3"]
    assert main(["export", *argv]) == 0
    assert "exported step 2 (EMA)" in capsys.readouterr().out
    config = config_from_json(lora_run / "config.json")
    _, state = read_state_numpy(lora_run / "checkpoints", 2)
    ema, params = state["ema"], state["params"]
    # the frozen random base, built here from the run's seed (not through the export code): the backbone
    # is the first module EditByTrack creates, so a lone WanDiT with the same Rngs has its values
    wan = build.wan_config(config)
    base = nnx.jit(lambda: WanDiT(wan, rngs=nnx.Rngs(int(config.train.seed))))()
    q_base = np.asarray(base.blocks.self_attn.q.kernel[...])
    a = ema["dit"]["blocks"]["self_attn"]["q"]["lora_a"]["value"]
    b = ema["dit"]["blocks"]["self_attn"]["q"]["lora_b"]["value"]
    assert np.abs(b).max() > 0 and np.abs(b - params["dit"]["blocks"]["self_attn"]["q"]["lora_b"]["value"]).max() > 0
    scale = float(config.lora.alpha) / int(config.lora.rank)
    with open_checkpoint(out / "transformer") as reader:
        for layer in range(q_base.shape[0]):
            expect = q_base[layer] + scale * a[layer] @ b[layer]  # (in, out); diffusers stores (out, in)
            np.testing.assert_allclose(reader.get(f"blocks.{layer}.attn1.to_q.weight").T, expect, atol=1e-6, rtol=0)
    pre = load_pretrained(out)
    np.testing.assert_array_equal(
        np.asarray(pre.model.conditioner.out.kernel[...]), ema["conditioner"]["out"]["kernel"]["value"]
    )
    assert pre.config.source["ema"] and pre.config.source["step"] == 2
    assert pre.config.sample_shift == 2.5 and config.diffusion.get("sample_shift", config.diffusion.shift) != 2.5
    assert pre.config.sample_steps == 3 and load_pretrained(exported).config.sample_steps == 50


def test_export_takes_paths_relative_to_the_working_directory(lora_run, exported, tmp_path, monkeypatch, capsys):
    """`trackedit export --workdir ../runs/lora_run --out model` from another folder (orbax refuses relative
    checkpoint paths; the CLI makes every path absolute) writes the same model as absolute paths do."""
    monkeypatch.chdir(tmp_path)
    workdir = os.path.relpath(lora_run, tmp_path)
    assert not os.path.isabs(workdir) and (lora_run / "checkpoints").is_dir()
    assert main(["export", "--workdir", workdir, "--out", "model"]) == 0
    assert f"of {lora_run} to {tmp_path / 'model'}:" in capsys.readouterr().out
    assert load_pretrained(tmp_path / "model").config.source["workdir"] == str(lora_run)
    with open_checkpoint(tmp_path / "model" / "transformer") as ours, open_checkpoint(exported / "transformer") as ref:
        assert sorted(ours.keys()) == sorted(ref.keys())
        for key in ref.keys():
            np.testing.assert_array_equal(ours.get(key), ref.get(key))


def test_export_errors_are_one_line(lora_run, exported, tmp_path, capsys):
    cases = [
        (["--workdir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")], "run directory not found"),
        (["--workdir", str(tmp_path), "--out", str(tmp_path / "b")], "no checkpoints/ folder"),
        (["--workdir", str(lora_run), "--out", str(tmp_path / "c"), "--step", "99"], "no checkpoint for step 99"),
        (["--workdir", str(lora_run), "--out", str(exported)], "exists; pass --overwrite"),
        (
            ["--workdir", str(lora_run), "--out", str(tmp_path / "d"), "--wan-path", str(tmp_path / "no.safetensors")],
            "init.wan_path",
        ),
        (["--workdir", str(lora_run), "--out", str(tmp_path / "e"), "--tokenizer", "x"], "go together"),
        (["--workdir", str(lora_run), "--out", str(tmp_path / "f"), "--sample-shift", "nan"], "--sample-shift"),
        (["--workdir", str(lora_run), "--out", str(tmp_path / "g"), "--sample-steps", "0"], "--sample-steps"),
    ]
    for argv, message in cases:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_loads_the_frozen_base_from_wan_path(lora_run, tmp_path):
    """A run trained on a pretrained base (`init.wan_path`): the export reads that base and merges the adapters
    into it (here the run's adapters on another random base, written in the diffusers layout)."""
    from trackedit_jax.convert.wan_transformer import export_wan_transformer
    from trackedit_jax.train import build

    config = config_from_json(lora_run / "config.json")
    wan = build.wan_config(config).replace(lora_rank=0, lora_alpha=None)
    other = nnx.jit(lambda: WanDiT(wan, rngs=nnx.Rngs(99)))()
    export_wan_transformer(other, tmp_path / "base")
    out = tmp_path / "model"
    assert main(["export", "--workdir", str(lora_run), "--out", str(out), "--wan-path", str(tmp_path / "base")]) == 0
    _, state = read_state_numpy(lora_run / "checkpoints")
    a = state["params"]["dit"]["blocks"]["ffn"]["up"]["lora_a"]["value"]
    b = state["params"]["dit"]["blocks"]["ffn"]["up"]["lora_b"]["value"]
    up = np.asarray(other.blocks.ffn.up.kernel[...])
    scale = float(config.lora.alpha) / int(config.lora.rank)
    with open_checkpoint(out / "transformer") as reader:
        for layer in range(up.shape[0]):
            np.testing.assert_allclose(
                reader.get(f"blocks.{layer}.ffn.net.0.proj.weight").T,
                up[layer] + scale * a[layer] @ b[layer],
                atol=1e-6,
                rtol=0,
            )
    assert load_pretrained(out).config.source["step"] == STEPS
