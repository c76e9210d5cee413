"""`trackedit convert` (pickle -> safetensors, only with --trust-pickle) and `trackedit encode-text`."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from torch_reference import HAVE_TORCH, needs_torch

from trackedit_jax.cli import main
from trackedit_jax.convert import load_tokenizer, load_umt5_encoder, load_wan_vae
from trackedit_jax.convert.wan_vae import diffusers_to_official
from trackedit_jax.models.wan.umt5 import encode_prompts
from trackedit_jax.models.wan.vae import WanVAEConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
spm = pytest.importorskip("sentencepiece")

if HAVE_TORCH:
    import diffusers
    import torch
    import transformers

pytestmark = needs_torch


def read_all(path):
    with safe_open(str(path), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_convert_refuses_without_trust_and_leaves_nothing(tmp_path, capsys):
    src = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(2)}, src)
    out = tmp_path / "weights.safetensors"
    assert main(["convert", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "arbitrary code" in err and "--trust-pickle" in err
    assert not out.exists()


def test_convert_with_trust_writes_the_same_tensors(tmp_path, capsys):
    torch.manual_seed(0)
    weights = {
        "a.weight": torch.randn(3, 4),
        "a.bias": torch.randn(4).to(torch.bfloat16),
        "b.idx": torch.arange(5, dtype=torch.int64),
    }
    src = tmp_path / "ckpt.pt"
    torch.save({"state_dict": weights, "epoch": 3}, src)  # a training checkpoint wrapping the weights
    out = tmp_path / "converted.safetensors"
    assert main(["convert", "--trust-pickle", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 tensors" in printed and "weights_only" in printed
    tensors, meta = read_all(out)
    assert set(tensors) == set(weights)
    np.testing.assert_array_equal(tensors["a.weight"], weights["a.weight"].numpy())
    assert tensors["a.bias"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(tensors["a.bias"].astype(np.float32), weights["a.bias"].float().numpy())
    np.testing.assert_array_equal(tensors["b.idx"], np.arange(5))
    assert meta["converted_from"] == "ckpt.pt"
    assert main(["convert", "--trust-pickle", str(tmp_path / "missing.pth"), str(out)]) == 2
    assert main(["convert", "--trust-pickle", str(src), str(tmp_path / "out.bin")]) == 2


def test_official_vae_pth_converts_and_loads(tmp_path):
    """The user path for `Wan2.1_VAE.pth`: convert --trust-pickle, then load_wan_vae (official layout)."""
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1).eval()
    cfg = WanVAEConfig.tiny(base_dim=4)
    official = {diffusers_to_official(k, cfg): v for k, v in ref.state_dict().items()}
    torch.save(official, tmp_path / "Wan2.1_VAE.pth")
    out = tmp_path / "Wan2.1_VAE.safetensors"
    assert main(["convert", "--trust-pickle", str(tmp_path / "Wan2.1_VAE.pth"), str(out)]) == 0
    vae = load_wan_vae(out)
    assert vae.config == cfg
    kernel = np.asarray(vae.encoder.down_blocks[0].conv1.kernel[...])
    np.testing.assert_array_equal(
        kernel, ref.state_dict()["encoder.down_blocks.0.conv1.weight"].numpy().transpose(2, 3, 4, 1, 0)
    )


@pytest.fixture(scope="module")
def text_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode_text")
    corpus = ["a sheep walks across the field", "the camera pans to the left", "a windmill turns slowly"] * 30
    (root / "corpus.txt").write_text("\n".join(corpus))
    spm.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"),
        model_prefix=str(root / "spiece"),
        vocab_size=28,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    torch.manual_seed(0)
    cfg = transformers.UMT5Config(
        vocab_size=48, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4, dropout_rate=0.0
    )
    transformers.UMT5EncoderModel(cfg).eval().save_pretrained(str(root / "text_encoder"))
    return root


def test_encode_text_writes_embeddings_and_lengths(text_assets, tmp_path, capsys):
    prompts = ["a sheep walks across the field", "the camera pans"]
    (tmp_path / "more.txt").write_text("a windmill turns slowly\n\n")
    out = tmp_path / "emb.safetensors"
    argv = [
        "encode-text",
        "--encoder",
        str(text_assets / "text_encoder"),
        "--tokenizer",
        str(text_assets / "spiece.model"),
        "--prompt",
        prompts[0],
        "--prompt",
        prompts[1],
        "--prompt-file",
        str(tmp_path / "more.txt"),
        "--out",
        str(out),
        "--text-len",
        "64",
    ]
    assert main(argv) == 0
    assert "embeddings (3, 64, 16)" in capsys.readouterr().out
    tensors, meta = read_all(out)
    assert json.loads(meta["prompts"]) == prompts + ["a windmill turns slowly"]
    emb, lengths = tensors["embeddings"], tensors["lengths"]
    assert emb.shape == (3, 64, 16) and emb.dtype == np.float32 and lengths.dtype == np.int32
    expected, expected_len = encode_prompts(
        load_umt5_encoder(text_assets / "text_encoder"),
        load_tokenizer(text_assets / "spiece.model", text_len=64),
        prompts + ["a windmill turns slowly"],
    )
    np.testing.assert_array_equal(lengths, expected_len)
    np.testing.assert_allclose(emb, expected, rtol=1e-6, atol=1e-6)
    for e, n in zip(emb, lengths):
        assert 1 < n < 64 and not e[n:].any() and np.abs(e[:n]).sum(axis=1).min() > 0

    bf16 = tmp_path / "emb_bf16.safetensors"
    assert main(argv[:-4] + ["--out", str(bf16), "--dtype", "bfloat16"]) == 0
    t16, _ = read_all(bf16)
    assert t16["embeddings"].dtype == ml_dtypes.bfloat16 and t16["embeddings"].shape == (3, 512, 16)


def test_encode_text_user_errors(text_assets, tmp_path, capsys):
    base = [
        "encode-text",
        "--encoder",
        str(text_assets / "text_encoder"),
        "--tokenizer",
        str(text_assets / "spiece.model"),
    ]
    assert main(base + ["--out", str(tmp_path / "x.safetensors")]) == 2
    assert "no prompts" in capsys.readouterr().err
    assert main(base + ["--prompt", "a", "--out", str(tmp_path / "x.npz")]) == 2
    assert (
        main(
            [
                "encode-text",
                "--encoder",
                str(tmp_path / "nope"),
                "--tokenizer",
                str(text_assets / "spiece.model"),
                "--prompt",
                "a",
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 2
    )
    assert not list(tmp_path.glob("*.safetensors"))
