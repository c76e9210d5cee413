"""Load a UMT5 encoder (transformers layout, safetensors) and a tokenizer file.

Weights: the keys of transformers' `UMT5EncoderModel` (``shared.weight``,
``encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o,relative_attention_bias}.weight``,
``encoder.block.{i}.layer.{0,1}.layer_norm.weight``, ``encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight``,
``encoder.final_layer_norm.weight``), e.g. the ``text_encoder/`` folder of a Wan2.1 diffusers repo. A full
`UMT5Model` / `UMT5ForConditionalGeneration` checkpoint also loads: its decoder and LM head are skipped.
Tensors stream one at a time into an abstract model; pickle files are refused.
"""

from __future__ import annotations

import os
import pathlib
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from trackedit_jax.convert.checkpoint_files import open_checkpoint
from trackedit_jax.convert.wan_vae import CheckpointMismatchError, fill_abstract_model
from trackedit_jax.models.text_tokenizer import PromptTokenizer
from trackedit_jax.models.wan.umt5 import TEXT_LEN, UMT5Config, UMT5Encoder


def our_path_to_transformers(path: str, embed_key: str = "shared.weight") -> str:
    """Our parameter path -> the transformers `UMT5EncoderModel` key."""
    if path == "embed_tokens":
        return embed_key
    if path == "final_norm.scale":
        return "encoder.final_layer_norm.weight"
    m = re.match(r"^blocks\.(\d+)\.(.*)$", path)
    if not m:
        raise KeyError(path)
    i, rest = m.groups()
    pre = f"encoder.block.{i}.layer"
    table = {
        "attn_norm.scale": f"{pre}.0.layer_norm.weight",
        "attn.relative_attention_bias": f"{pre}.0.SelfAttention.relative_attention_bias.weight",
        "ffn_norm.scale": f"{pre}.1.layer_norm.weight",
    }
    if rest in table:
        return table[rest]
    m = re.match(r"^attn\.([qkvo])\.kernel$", rest)
    if m:
        return f"{pre}.0.SelfAttention.{m.group(1)}.weight"
    m = re.match(r"^ffn\.(wi_0|wi_1|wi|wo)\.kernel$", rest)
    if m:
        return f"{pre}.1.DenseReluDense.{m.group(1)}.weight"
    raise KeyError(path)


def _infer_config(reader, embed_key: str) -> UMT5Config:
    keys = set(reader.keys())
    json_cfg = reader.config() or {}
    vocab, d_model = reader.shape(embed_key)
    layers = {int(m.group(1)) for k in keys if (m := re.match(r"^encoder\.block\.(\d+)\.", k))}
    if not layers or sorted(layers) != list(range(len(layers))):
        raise ValueError(f"{reader.path}: no contiguous encoder.block.<i> tensors; not a UMT5 encoder checkpoint")
    pre = "encoder.block.0.layer"
    buckets, heads = reader.shape(f"{pre}.0.SelfAttention.relative_attention_bias.weight")
    inner = reader.shape(f"{pre}.0.SelfAttention.q.weight")[0]
    gated = f"{pre}.1.DenseReluDense.wi_0.weight" in keys
    d_ff = reader.shape(f"{pre}.1.DenseReluDense.{'wi_0' if gated else 'wi'}.weight")[0]
    kw = dict(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=d_ff,
        num_layers=len(layers),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=int(json_cfg.get("relative_attention_max_distance", 128)),
        layer_norm_epsilon=float(json_cfg.get("layer_norm_epsilon", 1e-6)),
        feed_forward_proj=json_cfg.get("feed_forward_proj", "gated-gelu" if gated else "relu"),
    )
    if gated != kw["feed_forward_proj"].startswith("gated-"):
        raise ValueError(
            f"{reader.path}: config.json says feed_forward_proj={kw['feed_forward_proj']!r} but the "
            f"weights are {'gated' if gated else 'not gated'}"
        )
    return UMT5Config(**kw)


def _transpose_linear(arr: np.ndarray, target: tuple[int, ...], path: str) -> np.ndarray:
    """torch Linear (out, in) -> our kernel (in, out); embeddings and norms unchanged."""
    if path.endswith(".kernel"):
        if arr.ndim != 2:
            raise ValueError(f"expected a 2-D Linear weight for {path}")
        return arr.T
    return arr


def load_umt5_encoder(path: str | os.PathLike, *, dtype=jnp.float32, config: UMT5Config | None = None) -> UMT5Encoder:
    """Load a UMT5 encoder from transformers-layout safetensors (file, sharded index or directory).

    Args:
      path: e.g. a diffusers Wan repo's ``text_encoder/`` folder, or a ``model.safetensors``.
      dtype: parameter and compute dtype (umt5-xxl: jnp.bfloat16 needs ~11.4 GB of host memory).
      config: the architecture; inferred from the tensor shapes and `config.json` when None.
    Raises:
      FileNotFoundError, PickleCheckpointError, ValueError / CheckpointMismatchError naming tensors.
    """
    reader = open_checkpoint(path, prefer="model")
    with reader:
        keys = set(reader.keys())
        embed_key = "shared.weight" if "shared.weight" in keys else "encoder.embed_tokens.weight"
        if embed_key not in keys:
            raise CheckpointMismatchError(
                f"{reader.path}: not a transformers UMT5 checkpoint (no shared.weight / encoder.embed_tokens.weight); "
                f"found e.g. {sorted(keys)[:5]}"
            )
        if config is None:
            config = _infer_config(reader, embed_key)
        # Tied copies and the decoder / LM head of full seq2seq checkpoints are not ours.
        skip = {k for k in keys if k.startswith(("decoder.", "lm_head."))}
        skip |= {"shared.weight", "encoder.embed_tokens.weight"} - {embed_key}
        abstract = nnx.eval_shape(lambda: UMT5Encoder(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype))
        return fill_abstract_model(
            abstract,
            lambda ours: our_path_to_transformers(ours, embed_key),
            reader,
            _transpose_linear,
            dtype=dtype,
            what=f"UMT5 encoder ({config})",
            ignore_unused=skip,
        )


def load_tokenizer(path: str | os.PathLike, *, text_len: int = TEXT_LEN) -> PromptTokenizer:
    """Open the tokenizer the user supplies: a HF `tokenizer.json`, a sentencepiece `.model`
    (umt5's `spiece.model`), or a directory holding one of them (tokenizer.json preferred)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    if path.is_dir():
        for name in ("tokenizer.json", "spiece.model", "tokenizer.model"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json, spiece.model or tokenizer.model in this directory")
    if path.suffix == ".json":
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a HF tokenizers file ({e})") from e
    elif path.suffix == ".model":
        import sentencepiece as spm

        backend = spm.SentencePieceProcessor()
        try:
            backend.load(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a sentencepiece model ({e})") from e
    else:
        raise ValueError(f"{path}: expected a tokenizer.json (HF tokenizers) or a sentencepiece .model file")
    return PromptTokenizer(backend, text_len=text_len)
