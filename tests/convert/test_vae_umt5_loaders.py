"""Loaders for the Wan VAE (official + diffusers layouts) and the UMT5 encoder (transformers layout):
key mappings checked against diffusers' own converter, exact weights, sharded files, dtypes, errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file
from torch_reference import HAVE_TORCH, needs_torch

from trackedit_jax.convert import (
    CheckpointMismatchError,
    PickleCheckpointError,
    load_tokenizer,
    load_umt5_encoder,
    load_wan_vae,
    write_safetensors,
)
from trackedit_jax.convert.wan_vae import detect_layout, diffusers_to_official, official_to_diffusers
from trackedit_jax.models.wan.vae import WanVAEConfig

if HAVE_TORCH:
    import diffusers
    import torch
    import transformers

# The Wan 2.1 topology (dim_mult, 2 res blocks, temporal (F, T, T)) at a tiny width.
WAN_TOPOLOGY = dict(
    base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]
)


def flat_params(model) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


@pytest.fixture(scope="module")
def wan_topology_vae(tmp_path_factory):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(**WAN_TOPOLOGY).eval()
    root = tmp_path_factory.mktemp("vae_loaders")
    ref.save_pretrained(root / "diffusers")
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    return ref, sd, root


@needs_torch
def test_official_mapping_agrees_with_diffusers_converter(wan_topology_vae):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    _, sd, _ = wan_topology_vae
    cfg = WanVAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in WAN_TOPOLOGY.items()})
    official = {diffusers_to_official(k, cfg): v for k, v in sd.items()}
    assert len(official) == len(sd)
    assert {
        "encoder.conv1.weight",
        "conv1.weight",
        "conv2.weight",
        "decoder.head.2.weight",
        "decoder.upsamples.3.resample.1.weight",
        "decoder.upsamples.4.shortcut.weight",
        "encoder.middle.1.to_qkv.weight",
        "decoder.middle.2.residual.6.weight",
    } <= set(official)
    # diffusers' single-file converter (written for the released Wan 2.1 VAE) maps our official keys back.
    back = convert_wan_vae_to_diffusers(dict(official))
    assert set(back) == set(sd)
    assert all(back[k] is official[diffusers_to_official(k, cfg)] for k in sd)
    assert detect_layout(official) == "official" and detect_layout(sd) == "diffusers"
    for nrb in (1, 2, 3):
        c = WanVAEConfig.tiny(num_res_blocks=nrb)
        keys = [f"decoder.up_blocks.{i}.resnets.{j}.conv1.weight" for i in range(4) for j in range(nrb + 1)]
        keys += [f"decoder.up_blocks.{i}.upsamplers.0.resample.1.weight" for i in range(3)]
        assert [official_to_diffusers(diffusers_to_official(k, c), c) for k in keys] == keys


@needs_torch
def test_both_layouts_load_the_same_exact_weights(wan_topology_vae, tmp_path):
    ref, sd, root = wan_topology_vae
    cfg_expected = WanVAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in WAN_TOPOLOGY.items()})
    ours_d = load_wan_vae(root / "diffusers")
    assert ours_d.config == cfg_expected  # inferred from shapes (+ latents stats from config.json)
    official = {diffusers_to_official(k, cfg_expected): v for k, v in sd.items()}
    save_file(official, str(tmp_path / "Wan2.1_VAE.safetensors"))
    ours_o = load_wan_vae(tmp_path / "Wan2.1_VAE.safetensors")
    assert ours_o.config == cfg_expected
    pd, po = flat_params(ours_d), flat_params(ours_o)
    assert pd.keys() == po.keys() and len(pd) == len(sd)
    for k in pd:
        np.testing.assert_array_equal(pd[k], po[k])
    # Spot checks of the layout conversions against the torch tensors.
    np.testing.assert_array_equal(pd["encoder.conv_in.kernel"], sd["encoder.conv_in.weight"].transpose(2, 3, 4, 1, 0))
    np.testing.assert_array_equal(
        pd["decoder.up_blocks.0.upsamplers.0.resample.kernel"],
        sd["decoder.up_blocks.0.upsamplers.0.resample.1.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        pd["encoder.mid_block.attentions.0.to_qkv.kernel"],
        sd["encoder.mid_block.attentions.0.to_qkv.weight"][:, :, 0, 0].T,
    )
    np.testing.assert_array_equal(pd["decoder.norm_out.gamma"], sd["decoder.norm_out.gamma"].reshape(-1))


@needs_torch
def test_sharded_bf16_and_errors(wan_topology_vae, tmp_path):
    _, sd, root = wan_topology_vae
    files = write_safetensors(sd, tmp_path / "sharded", max_shard_bytes=20_000)
    assert len(files) > 2
    index = tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json"
    reference = flat_params(load_wan_vae(root / "diffusers"))
    sharded = load_wan_vae(index, dtype=jnp.bfloat16)
    params = flat_params(sharded)
    assert all(v.dtype == jnp.bfloat16 for v in params.values())
    for k, v in params.items():
        np.testing.assert_array_equal(v, reference[k].astype(jnp.bfloat16))
    assert sharded.encoder.conv_in.dtype == jnp.bfloat16  # compute dtype follows

    missing = dict(sd)
    del missing["decoder.mid_block.resnets.1.conv2.bias"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(
        CheckpointMismatchError, match=r"1 missing tensors \['decoder\.mid_block\.resnets\.1\.conv2\.bias'\]"
    ):
        load_wan_vae(tmp_path / "missing.safetensors")
    extra = dict(sd, **{"encoder.extra.weight": np.zeros(3, np.float32)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="unexpected tensors.*encoder.extra.weight"):
        load_wan_vae(tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"has shape \(16,\); the model expects \(32,\)"):
        load_wan_vae(
            root / "diffusers",
            config=WanVAEConfig(
                **{**{k: tuple(v) if isinstance(v, list) else v for k, v in WAN_TOPOLOGY.items()}, "base_dim": 8}
            ),
        )
    save_file({"foo.weight": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a Wan VAE checkpoint"):
        load_wan_vae(tmp_path / "other.safetensors")
    (tmp_path / "Wan2.1_VAE.pth").write_bytes(b"not really a pickle")
    with pytest.raises(PickleCheckpointError, match="trust-pickle"):
        load_wan_vae(tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(FileNotFoundError):
        load_wan_vae(tmp_path / "nope.safetensors")


def _tiny_t5_config(**kw):
    base = dict(
        vocab_size=64,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=3,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=40,
        dropout_rate=0.0,
    )
    base.update(kw)
    return transformers.UMT5Config(**base)


@needs_torch
def test_umt5_loader_exact_weights_and_config(tmp_path):
    torch.manual_seed(0)
    ref = transformers.UMT5EncoderModel(_tiny_t5_config()).eval()
    ref.save_pretrained(tmp_path / "text_encoder")
    model = load_umt5_encoder(tmp_path / "text_encoder")
    cfg = model.config
    assert (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads) == (64, 16, 4, 24, 3, 4)
    assert (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance) == (16, 40)  # 40 from config.json
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    p = flat_params(model)
    np.testing.assert_array_equal(p["embed_tokens"], sd["shared.weight"])
    np.testing.assert_array_equal(p["blocks.2.attn.q.kernel"], sd["encoder.block.2.layer.0.SelfAttention.q.weight"].T)
    np.testing.assert_array_equal(
        p["blocks.1.attn.relative_attention_bias"],
        sd["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"],
    )
    np.testing.assert_array_equal(p["blocks.0.ffn.wo.kernel"], sd["encoder.block.0.layer.1.DenseReluDense.wo.weight"].T)
    np.testing.assert_array_equal(p["final_norm.scale"], sd["encoder.final_layer_norm.weight"])
    bf16 = load_umt5_encoder(tmp_path / "text_encoder" / "model.safetensors", dtype=jnp.bfloat16)
    assert all(v.dtype == jnp.bfloat16 for v in flat_params(bf16).values())


@needs_torch
def test_umt5_loader_accepts_full_seq2seq_and_rejects_others(tmp_path):
    torch.manual_seed(1)
    full = transformers.UMT5ForConditionalGeneration(_tiny_t5_config(num_decoder_layers=1)).eval()
    full.save_pretrained(tmp_path / "umt5")
    model = load_umt5_encoder(tmp_path / "umt5")  # decoder and lm_head skipped
    np.testing.assert_array_equal(flat_params(model)["embed_tokens"], full.state_dict()["shared.weight"].numpy())
    enc_sd = {k: v.numpy() for k, v in transformers.UMT5EncoderModel(_tiny_t5_config()).state_dict().items()}
    del enc_sd["encoder.block.1.layer.1.layer_norm.weight"]
    save_file(enc_sd, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="encoder.block.1.layer.1.layer_norm.weight"):
        load_umt5_encoder(tmp_path / "broken.safetensors")
    save_file({"foo": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="not a transformers UMT5 checkpoint"):
        load_umt5_encoder(tmp_path / "other.safetensors")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(PickleCheckpointError):
        load_umt5_encoder(tmp_path / "pytorch_model.bin")


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "vocab.txt")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a HF tokenizers file"):
        load_tokenizer(tmp_path / "tokenizer.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(empty)


@needs_torch
def test_diffusers_vae_with_other_z_dim_keeps_default_statistics_loads_with_a_warning(tmp_path):
    """diffusers saves its 16-entry default latents_mean/latents_std whatever z_dim is: we ignore them
    with a warning (neutral statistics) and encode/decode as diffusers does."""
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    ref.save_pretrained(tmp_path / "vae")
    saved = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert saved["z_dim"] == 4 and len(saved["latents_mean"]) == len(saved["latents_std"]) == 16
    with pytest.warns(UserWarning, match=r"vae/config\.json: latents_mean/latents_std have 16/16 entries, not z_dim=4"):
        ours = load_wan_vae(tmp_path / "vae")
    assert ours.config.z_dim == 4
    assert ours.config.latents_mean == (0.0,) * 4 and ours.config.latents_std == (1.0,) * 4
    video = np.random.default_rng(0).uniform(-1, 1, (1, 5, 16, 24, 3)).astype(np.float32)
    with torch.no_grad():
        mu = ref.encode(torch.from_numpy(video.transpose(0, 4, 1, 2, 3).copy())).latent_dist.mean
        recon = ref.decode(mu).sample
    mu, recon = mu.numpy().transpose(0, 2, 3, 4, 1), recon.numpy().transpose(0, 2, 3, 4, 1)
    latents = np.asarray(ours.encode(jnp.asarray(video)))
    decoded = np.asarray(ours.decode(jnp.asarray(mu)))
    assert latents.shape == (1, 2, 2, 3, 4) and decoded.shape == video.shape
    assert np.linalg.norm(latents - mu) / np.linalg.norm(mu) <= 1e-4
    assert np.linalg.norm(decoded - recon) / np.linalg.norm(recon) <= 1e-4
    np.testing.assert_array_equal(ours.normalize_latents(jnp.asarray(mu)), mu)  # neutral statistics
