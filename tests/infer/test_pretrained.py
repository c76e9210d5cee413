"""The pretrained directory: round trips, LoRA merging, PyTorch loadability, atomic writes, clear errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from infer_assets import build_model, build_vae, randomize_zero_inits, tiny_config
from torch_reference import HAVE_TORCH, needs_torch

from trackedit_jax.infer.pretrained import (
    PretrainedConfig,
    PretrainedError,
    load_pretrained,
    read_pretrained_config,
    save_pretrained,
)
from trackedit_jax.models.edit_model import EditByTrack

if HAVE_TORCH:
    import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _inputs(config, seed=0, batch=1, f=3, h=4, w=4, n=12):
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    C = config.wan.in_dim
    z = jax.random.normal(k[0], (batch, f, h, w, C))
    x = jax.random.normal(k[1], (batch, f, h, w, C))
    src = jnp.concatenate(
        [jax.random.uniform(k[2], (batch, f, n, 2), minval=-1, maxval=1), jax.random.uniform(k[3], (batch, f, n, 1))],
        -1,
    )
    tgt = src + 0.1
    valid = jnp.ones((batch, f, n), bool)
    ctx = jax.random.normal(k[4], (batch, config.text_len, config.wan.text_dim))
    t = jnp.full((batch,), 700.0)
    return x, t, ctx, (z, src, tgt, valid, valid)


@nnx.jit
def _velocity_jit(model, inputs):
    x, t, ctx, src = inputs
    return model(x, t, ctx, model.encode_source(*src))


_dit_jit = nnx.jit(lambda dit, x, t, ctx: dit(x, t, ctx))


def _velocity(model, inputs):
    return np.asarray(_velocity_jit(model, inputs))


def _flat_params(module):
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def test_round_trip_gives_identical_outputs(tiny_parts, tiny_checkpoint):
    config, model, vae, _, _ = tiny_parts
    loaded = load_pretrained(tiny_checkpoint)
    assert loaded.config == config
    inputs = _inputs(config)
    np.testing.assert_array_equal(_velocity(loaded.model, inputs), _velocity(model, inputs))
    ours, theirs = _flat_params(loaded.vae), _flat_params(vae)
    assert ours.keys() == theirs.keys() and len(ours) > 50
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=str(k))
    assert loaded.text_encoder is not None and loaded.tokenizer.text_len == config.text_len
    # the conditioner really conditions (its zero-initialised output layer was randomised)
    x, t, ctx, (z, src, tgt, v1, v2) = inputs
    moved = _velocity(loaded.model, (x, t, ctx, (z, src, tgt + 0.3, v1, v2)))
    assert np.abs(moved - _velocity(loaded.model, inputs)).max() > 1e-4


@needs_torch
def test_lora_is_merged_and_the_backbone_loads_in_diffusers(tmp_path):
    from diffusers import WanTransformer3DModel

    config = tiny_config()
    model = build_model(config, seed=5, lora_rank=4)
    assert np.abs(np.asarray(model.dit.blocks.self_attn.q.lora_b[...])).max() > 0
    out = save_pretrained(tmp_path / "lora_model", config, model, build_vae(config))
    loaded = load_pretrained(out)
    assert loaded.model.dit.config.lora_rank == 0
    inputs = _inputs(config, seed=2)
    np.testing.assert_allclose(_velocity(loaded.model, inputs), _velocity(model, inputs), atol=2e-5, rtol=0)
    # PyTorch users get the merged backbone: diffusers' forward equals our merged DiT's
    ref = WanTransformer3DModel.from_pretrained(str(out / "transformer")).eval()
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 2, 4, 4, 16))
    ctx = jax.random.normal(jax.random.PRNGKey(4), (1, 7, config.wan.text_dim))
    t = jnp.asarray([400.0])
    ours = np.asarray(_dit_jit(loaded.model.dit, x, t, ctx))
    with torch.no_grad():
        theirs = (
            ref(
                torch.from_numpy(np.asarray(x).transpose(0, 4, 1, 2, 3).copy()),
                torch.tensor([400]),
                torch.from_numpy(np.array(ctx)),
            )
            .sample.numpy()
            .transpose(0, 2, 3, 4, 1)
        )
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)
    # and the unmerged model's backbone computes the same function
    np.testing.assert_allclose(np.asarray(_dit_jit(model.dit, x, t, ctx)), theirs, atol=2e-5, rtol=0)


@needs_torch
def test_text_encoder_is_written_in_the_transformers_layout(tiny_parts, tiny_checkpoint):
    import transformers

    _, _, _, encoder, _ = tiny_parts
    ref = transformers.UMT5EncoderModel.from_pretrained(str(tiny_checkpoint / "text_encoder")).eval()
    ids = np.array([[5, 9, 3, 1, 0, 0]], np.int32)
    mask = (ids > 0) | (np.arange(6) < 4)
    ours = np.asarray(encoder(ids, mask))
    with torch.no_grad():
        theirs = ref(
            input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=torch.from_numpy(mask.astype(np.int64))
        ).last_hidden_state.numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)


@needs_torch
def test_vae_is_written_in_the_diffusers_layout(tiny_parts, tiny_checkpoint):
    from diffusers import AutoencoderKLWan

    from trackedit_jax.infer.pipeline import _vae_encode

    _, _, vae, _, _ = tiny_parts
    ref = AutoencoderKLWan.from_pretrained(str(tiny_checkpoint / "vae")).eval()
    video = np.asarray(jax.random.uniform(jax.random.PRNGKey(5), (1, 9, 32, 32, 3), minval=-1, maxval=1))
    graphdef, state = nnx.split(vae)
    ours = np.asarray(_vae_encode(graphdef, state, jnp.asarray(video)))  # normalised latents
    with torch.no_grad():
        mean = ref.encode(torch.from_numpy(video.transpose(0, 4, 1, 2, 3).copy())).latent_dist.mean.numpy()
    m = np.asarray(ref.config.latents_mean, np.float32)
    s = np.asarray(ref.config.latents_std, np.float32)
    theirs = (mean.transpose(0, 2, 3, 4, 1) - m) / s
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_config_json_round_trip(tiny_parts):
    config = tiny_parts[0]
    again = PretrainedConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert again == config


def test_a_model_trained_only_at_pure_noise_samples_in_one_step(tiny_parts):
    """`diffusion.pure_noise_fraction = 1` exports a model whose one valid sampler is one step; the flag
    survives config.json, and asking for more steps is refused (here and by `EditPipeline.sample`)."""
    import dataclasses

    from trackedit_jax.configuration import load_config

    overrides = ["--config.diffusion.sample_steps=4"]
    one = PretrainedConfig.from_train_config(
        load_config("configs/demo_cpu.py", [*overrides, "--config.diffusion.pure_noise_fraction=1.0"])
    )
    assert one.one_step_only and one.sample_steps == 1
    assert PretrainedConfig.from_json(json.loads(json.dumps(one.to_json()))) == one
    with pytest.raises(ValueError, match="one step"):
        dataclasses.replace(one, sample_steps=4)
    most = PretrainedConfig.from_train_config(load_config("configs/demo_cpu.py", overrides))
    assert not most.one_step_only and most.sample_steps == 4
    # a config.json written before the flag existed reads as a model for any step count
    old = most.to_json()
    del old["sampling"]["one_step_only"]
    assert PretrainedConfig.from_json(old) == most


def test_the_source_gate_flag_survives_config_json():
    """`model.source_gate` is recorded by export and read back; a config.json without it reads as ungated."""
    from trackedit_jax.configuration import load_config

    gated = PretrainedConfig.from_train_config(load_config("configs/demo_cpu.py", ["--config.model.source_gate=true"]))
    assert gated.source_gate and gated.to_json()["model"]["source_gate"] is True
    assert PretrainedConfig.from_json(json.loads(json.dumps(gated.to_json()))) == gated
    old = gated.to_json()
    del old["model"]["source_gate"]
    assert not PretrainedConfig.from_json(old).source_gate


def test_a_gated_warp_model_round_trips(tmp_path):
    """A space-to-depth model with the warp prior and the source gate is saved and loaded with every parameter
    (the gate head included) and gives identical outputs."""
    from trackedit_jax.models.space_to_depth import SpaceToDepthConfig, SpaceToDepthVAE

    z = 3 * 4 * 4 * 4
    base = tiny_config()
    flags = dict(source_skip=True, warp_prior=True, source_gate=True)
    config = tiny_config(
        wan=base.wan.replace(in_dim=z, out_dim=z, num_layers=1), vae=SpaceToDepthConfig(), prediction="sample", **flags
    )
    model = nnx.jit(
        lambda: EditByTrack(config.wan, config.conditioner, rope_mode=config.rope_mode, rngs=nnx.Rngs(0), **flags)
    )()
    randomize_zero_inits(model)  # the head and the gate kernel start at zero
    loaded = load_pretrained(save_pretrained(tmp_path / "gated", config, model, SpaceToDepthVAE(config.vae)))
    assert loaded.config == config and loaded.config.source_gate
    ours, theirs = _flat_params(loaded.model), _flat_params(model)
    assert ours.keys() == theirs.keys() and any("gate_head" in str(k) for k in ours)
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=str(k))
    x, t, ctx, src = _inputs(config)
    prior = jax.random.normal(jax.random.PRNGKey(5), src[0].shape)
    run = nnx.jit(lambda m: m(x, t, ctx, m.encode_source(*src, prior_latents=prior)))
    np.testing.assert_array_equal(np.asarray(run(loaded.model)), np.asarray(run(model)))


def test_the_gate_coverage_flag_survives_config_json():
    """`model.gate_coverage` is recorded by export and read back; a config.json without it reads as off."""
    from trackedit_jax.configuration import load_config

    flags = [
        "--config.model.source_gate=true",
        "--config.model.warp_coverage=true",
        "--config.model.gate_coverage=true",
    ]
    cfg = PretrainedConfig.from_train_config(load_config("configs/demo_cpu.py", flags))
    assert cfg.gate_coverage and cfg.to_json()["model"]["gate_coverage"] is True
    assert PretrainedConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    old = cfg.to_json()
    del old["model"]["gate_coverage"]
    assert not PretrainedConfig.from_json(old).gate_coverage


def test_missing_pieces_are_named(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match="no config.json"):
        read_pretrained_config(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PretrainedError, match="is a file"):
        load_pretrained(tmp_path / "file")
    for piece, what in (
        ("conditioner.safetensors", "conditioner"),
        ("transformer", "Wan backbone"),
        ("vae", "VAE"),
        ("tokenizer", "tokenizer"),
    ):
        copy = tmp_path / f"without_{piece}"
        shutil.copytree(tiny_checkpoint, copy)
        target = copy / piece
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        with pytest.raises(PretrainedError, match=f"missing {piece}.*{what}"):
            load_pretrained(copy)
    bad = tmp_path / "bad_format"
    shutil.copytree(tiny_checkpoint, bad)
    data = json.loads((bad / "config.json").read_text())
    data["format"] = "something-else"
    (bad / "config.json").write_text(json.dumps(data))
    with pytest.raises(PretrainedError, match="not a trackedit pretrained config"):
        load_pretrained(bad)
    del data["model"]
    data["format"] = "trackedit-pretrained"
    (bad / "config.json").write_text(json.dumps(data))
    with pytest.raises(PretrainedError, match="malformed"):
        load_pretrained(bad)


def test_save_is_atomic_and_refuses_to_overwrite(tiny_parts, tiny_checkpoint, tmp_path):
    config, model, vae, _, tokenizer = tiny_parts
    out = tmp_path / "model"
    with pytest.raises(FileNotFoundError):  # fails after the backbone and conditioner were written
        save_pretrained(out, config, model, vae, tmp_path / "no_such_encoder", tokenizer)
    assert list(tmp_path.iterdir()) == []  # no directory, no temporary left behind
    save_pretrained(out, config, model, vae)
    with pytest.raises(FileExistsError):
        save_pretrained(out, config, model, vae)
    assert not (out / "text_encoder").exists()
    save_pretrained(
        out, config, model, vae, tiny_checkpoint / "text_encoder", tiny_checkpoint / "tokenizer", overwrite=True
    )
    assert (out / "text_encoder").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert load_pretrained(out).text_encoder is not None
    assert oct((out / "conditioner.safetensors").stat().st_mode & 0o777) != "0o600"  # not the temp file mode
    with pytest.raises(ValueError, match="does not describe the VAE"):
        other_vae = build_vae(tiny_config(vae=config.vae.__class__.tiny(base_dim=4)))
        save_pretrained(tmp_path / "x", config, model, other_vae)
