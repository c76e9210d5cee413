"""UMT5 encoder and prompt tokenisation against transformers' `UMT5EncoderModel` / T5 tokenizer and the
diffusers Wan pipeline's own `_get_t5_prompt_embeds` (random tiny weights, a tokenizer trained here)."""

import os
import types

import numpy as np
import pytest
from torch_reference import HAVE_TORCH, needs_torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads

spm = pytest.importorskip("sentencepiece")

from trackedit_jax.convert.umt5 import load_tokenizer, load_umt5_encoder  # noqa: E402
from trackedit_jax.models.text_tokenizer import PromptTokenizer, clean_prompt  # noqa: E402
from trackedit_jax.models.wan.umt5 import encode_prompts, relative_position_buckets  # noqa: E402

if HAVE_TORCH:
    import torch
    import transformers

pytestmark = needs_torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A sheep walks across a green field in the sun.",
    "Camera pans slowly to the left while the windmill turns.",
    "Ein Schaf läuft über die Wiese.",
    "Un mouton marche dans le champ.",
    "a red car drives along the road at night",
]
PROMPTS = [
    "A sheep walks, happily!",
    "  camera   pans &amp; the windmill\tturns  ",
    "Ein Schaf läuft über die Wiese, und die Kamera folgt ihm langsam. " * 40,  # longer than 512 tokens
]


def rel_l2(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A random tiny UMT5 encoder (transformers layout) and a sentencepiece vocabulary trained here."""
    root = tmp_path_factory.mktemp("umt5")
    (root / "corpus.txt").write_text("\n".join(CORPUS * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"),
        model_prefix=str(root / "spiece"),
        vocab_size=60,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    tok_dir = root / "tokenizer"
    tok_dir.mkdir()
    (tok_dir / "spiece.model").write_bytes((root / "spiece.model").read_bytes())
    (tok_dir / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer", "extra_ids": 0}')
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    hf_tok.save_pretrained(str(root / "hf_tokenizer"))  # writes tokenizer.json
    torch.manual_seed(0)
    cfg = transformers.UMT5Config(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
    )
    ref = transformers.UMT5EncoderModel(cfg).eval()
    with torch.no_grad():  # non-trivial norm scales
        for name, p in ref.named_parameters():
            if "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    ref.save_pretrained(str(root / "text_encoder"))
    return types.SimpleNamespace(root=root, hf_tok=hf_tok, ref=ref, encoder=load_umt5_encoder(root / "text_encoder"))


def test_relative_position_buckets_match_transformers():
    from transformers.models.umt5.modeling_umt5 import UMT5Attention

    for buckets, max_distance in [(32, 128), (32, 20), (16, 64)]:
        cfg = transformers.UMT5Config(
            vocab_size=8,
            d_model=8,
            d_kv=2,
            num_heads=4,
            d_ff=8,
            num_layers=1,
            relative_attention_num_buckets=buckets,
            relative_attention_max_distance=max_distance,
        )
        attn = UMT5Attention(cfg, has_relative_attention_bias=True)
        L = 300  # past max_distance: covers the exact, logarithmic and clipped buckets
        rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]
        np.testing.assert_array_equal(
            relative_position_buckets(L, L, buckets, max_distance), attn._relative_position_bucket(rel).numpy()
        )


def test_encoder_matches_transformers_with_padding(assets):
    L = 48
    ids = torch.randint(3, 64, (3, L), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(3, L, dtype=torch.long)
    mask[0, :] = 1
    mask[1, :17] = 1
    mask[2, :3] = 1
    with torch.no_grad():
        ref = assets.ref(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    ours = np.asarray(assets.encoder(ids.numpy(), mask.numpy().astype(bool)))
    err = rel_l2(ours, ref)
    print(f"UMT5 encoder rel L2 (all positions, 3 padding patterns): {err:.2e}")
    assert err <= 1e-5
    for b in range(3):
        valid = mask[b].numpy().astype(bool)
        assert rel_l2(ours[b][valid], ref[b][valid]) <= 1e-5
    # Padded tokens must not influence real positions.
    ids2 = ids.numpy().copy()
    ids2[1, 17:] = 5
    ours2 = np.asarray(assets.encoder(ids2, mask.numpy().astype(bool)))
    np.testing.assert_allclose(ours2[1, :17], ours[1, :17], rtol=1e-5, atol=1e-6)


def test_tokenizer_matches_transformers_and_both_file_formats_agree(assets):
    hf = assets.hf_tok(
        PROMPTS,
        padding="max_length",
        max_length=512,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
    )
    for path in (
        assets.root / "spiece.model",
        assets.root / "hf_tokenizer" / "tokenizer.json",
        assets.root / "hf_tokenizer",
    ):
        tok = load_tokenizer(path)
        assert isinstance(tok, PromptTokenizer) and tok.text_len == 512
        ids, mask = tok(PROMPTS)
        assert ids.shape == mask.shape == (3, 512)
        # transformers does not clean; compare on prompts that cleaning leaves unchanged, and on the
        # cleaned version of the one it changes.
        np.testing.assert_array_equal(ids[[0, 2]], np.array(hf["input_ids"])[[0, 2]])
        np.testing.assert_array_equal(mask[[0, 2]], np.array(hf["attention_mask"], bool)[[0, 2]])
        cleaned = assets.hf_tok(clean_prompt(PROMPTS[1]), padding="max_length", max_length=512, truncation=True)
        np.testing.assert_array_equal(ids[1], cleaned["input_ids"])
        assert mask[2].all() and ids[2, -1] == 1  # truncated, still ends with EOS
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    assert clean_prompt(PROMPTS[1]) == prompt_clean(PROMPTS[1]) == "camera pans & the windmill turns"


def test_encode_prompts_matches_the_wan_pipeline(assets):
    from diffusers.pipelines.wan.pipeline_wan import WanPipeline

    # Call the pipeline's own embedding code with our tiny tokenizer and encoder.
    fake_pipe = types.SimpleNamespace(
        tokenizer=assets.hf_tok, text_encoder=assets.ref, _execution_device=torch.device("cpu")
    )
    with torch.no_grad():
        ref = WanPipeline._get_t5_prompt_embeds(fake_pipe, prompt=PROMPTS, max_sequence_length=512).numpy()
    tok = load_tokenizer(assets.root / "spiece.model")
    embeddings, lengths = encode_prompts(assets.encoder, tok, PROMPTS, batch_size=2)
    assert embeddings.shape == ref.shape == (3, 512, 32)
    err = rel_l2(embeddings, ref)
    print(f"encode_prompts vs WanPipeline._get_t5_prompt_embeds rel L2: {err:.2e}; lengths {lengths.tolist()}")
    assert err <= 1e-5
    assert lengths[2] == 512 and lengths[0] < 30
    for i, n in enumerate(lengths):
        assert not embeddings[i, n:].any()
        assert np.abs(embeddings[i, n - 1]).sum() > 0


def test_input_validation(assets):
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        assets.encoder(np.zeros((4,), np.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        assets.encoder(np.zeros((1, 4), np.int32), np.ones((1, 5), bool))
    with pytest.raises(ValueError, match="empty"):
        encode_prompts(assets.encoder, load_tokenizer(assets.root / "spiece.model"), [])
    with pytest.raises(ValueError, match="tokenizers.Tokenizer or a sentencepiece"):
        PromptTokenizer(object())
