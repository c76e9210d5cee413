"""The UMT5 text encoder (Wan's `umt5-xxl` text path) in Flax NNX.

Per block: RMS norm -> multi-head self-attention with a learned relative-position bias of its own
(UMT5, unlike T5, gives every layer its own bucket table; scores are not scaled by 1/sqrt(d)) ->
residual -> RMS norm -> gated-GELU feed-forward (gelu_new(x W0) * (x W1)) W_o -> residual. A final
RMS norm closes the stack. Matches transformers' `UMT5EncoderModel`.

`encode_prompts` reproduces how the Wan pipelines build text conditioning: prompts cleaned, tokenised
to `text_len` (512) with EOS, encoded with the padding mask, and every position past the prompt's
length set to zero.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trackedit_jax.models.layers import gelu_tanh
from trackedit_jax.models.text_tokenizer import PromptTokenizer
from trackedit_jax.models.wan.vae_layers import host_normal  # numpy-drawn init: fast on CPU
from trackedit_jax.parallel.attention import attention
from trackedit_jax.parallel.rules import param

TEXT_LEN = 512  # Wan's text length


@dataclasses.dataclass(frozen=True)
class UMT5Config:
    """Architecture of a UMT5 encoder (field names as in transformers' `UMT5Config`)."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    def __post_init__(self):
        for name in (
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_heads",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.feed_forward_proj.removeprefix("gated-") not in ACTIVATIONS:
            raise ValueError(
                f"feed_forward_proj {self.feed_forward_proj!r} not supported; known: gated-gelu, "
                f"gated-relu, gated-silu, relu, gelu"
            )

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        act = self.feed_forward_proj.removeprefix("gated-")
        # transformers maps "gated-gelu" to the tanh approximation ("gelu_new").
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

    @classmethod
    def umt5_xxl(cls) -> UMT5Config:
        """google/umt5-xxl, the text encoder of Wan 2.1 (5.7B parameters in the encoder)."""
        return cls()

    @classmethod
    def tiny(cls, **overrides) -> UMT5Config:
        kw = dict(
            vocab_size=128,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_hf(cls, cfg: Mapping) -> UMT5Config:
        """From a transformers `config.json` dict (extra fields ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


ACTIVATIONS = {
    "gelu_new": gelu_tanh,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def relative_position_buckets(query_len: int, key_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 buckets of (key position - query position): (query_len, key_len) int32.

    Half the buckets for each direction; in each half, exact buckets for |d| < num_buckets / 4, then
    logarithmic bins up to `max_distance`. Computed in float32 like the reference so every bin edge
    lands in the same bucket.
    """
    rel = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    dist = np.abs(rel)
    max_exact = half // 2
    is_small = dist < max_exact
    with np.errstate(divide="ignore"):
        log_ratio = np.log(dist.astype(np.float32) / np.float32(max_exact)) / np.float32(
            math.log(max_distance / max_exact)
        )
    large = max_exact + np.where(is_small, 0, log_ratio * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (out + np.where(is_small, dist, large)).astype(np.int32)


class T5RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * scale, no mean subtraction, no bias; computed in fp32."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), ("norm",), param_dtype)
        self.eps = eps

    def __call__(self, x, dtype):
        xf = x.astype(jnp.float32)
        var = jnp.mean(xf * xf, axis=-1, keepdims=True)
        return (self.scale[...].astype(jnp.float32) * (xf * jax.lax.rsqrt(var + self.eps))).astype(dtype)


class Dense(nnx.Module):
    """y = x @ kernel (no bias); kernel (in, out)."""

    def __init__(self, din: int, dout: int, axes, *, rngs: nnx.Rngs, param_dtype=jnp.float32, std: float = 0.02):
        self.kernel = param(rngs, host_normal(lambda _: std), (din, dout), axes, param_dtype)

    def __call__(self, x):
        return jnp.einsum("...i,io->...o", x, self.kernel[...].astype(x.dtype))


class UMT5Attention(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        inner = cfg.num_heads * cfg.d_kv
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.q = Dense(cfg.d_model, inner, ("embed", "heads"), **kw)
        self.k = Dense(cfg.d_model, inner, ("embed", "heads"), **kw)
        self.v = Dense(cfg.d_model, inner, ("embed", "heads"), **kw)
        self.o = Dense(inner, cfg.d_model, ("heads", "embed"), **kw)
        self.relative_attention_bias = param(
            rngs,
            host_normal(lambda _: 0.02),
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            (None, None),
            param_dtype,
        )
        self.num_heads = cfg.num_heads
        self.d_kv = cfg.d_kv

    def __call__(self, x, buckets, mask):
        """x (B, L, D); buckets (L, L) int; mask (B, L) bool key padding -> (B, L, D)."""
        B, L, _ = x.shape
        shape = (B, L, self.num_heads, self.d_kv)
        q, k, v = self.q(x).reshape(shape), self.k(x).reshape(shape), self.v(x).reshape(shape)
        bias = jnp.take(self.relative_attention_bias[...], buckets, axis=0)  # (L, L, H)
        bias = bias.transpose(2, 0, 1)[None].astype(jnp.float32)
        # T5 attention: an additive relative-position bias and no 1/sqrt(d) scaling
        y = attention(q, k, v, mask=mask, bias=bias, scale=1.0, impl="xla")
        return self.o(y.reshape(B, L, -1))


class UMT5FeedForward(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        if cfg.is_gated:
            self.wi_0 = Dense(cfg.d_model, cfg.d_ff, ("embed", "mlp"), **kw)
            self.wi_1 = Dense(cfg.d_model, cfg.d_ff, ("embed", "mlp"), **kw)
            self.wi = None
        else:
            self.wi_0 = self.wi_1 = None
            self.wi = Dense(cfg.d_model, cfg.d_ff, ("embed", "mlp"), **kw)
        self.wo = Dense(cfg.d_ff, cfg.d_model, ("mlp", "embed"), **kw)
        self.act = cfg.activation

    def __call__(self, x):
        act = ACTIVATIONS[self.act]
        h = act(self.wi_0(x)) * self.wi_1(x) if self.wi is None else act(self.wi(x))
        return self.wo(h)


class UMT5Block(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.attn_norm = T5RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, **kw)
        self.attn = UMT5Attention(cfg, **kw)
        self.ffn_norm = T5RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, **kw)
        self.ffn = UMT5FeedForward(cfg, **kw)

    def __call__(self, x, buckets, mask, dtype):
        x = x + self.attn(self.attn_norm(x, dtype), buckets, mask).astype(x.dtype)
        return x + self.ffn(self.ffn_norm(x, dtype)).astype(x.dtype)


class UMT5Encoder(nnx.Module):
    """UMT5 encoder: token ids (B, L) + padding mask -> hidden states (B, L, d_model)."""

    def __init__(self, config: UMT5Config | None = None, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.config = config or UMT5Config()
        cfg = self.config
        self.embed_tokens = param(
            rngs, host_normal(lambda _: 1.0), (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), param_dtype
        )
        self.blocks = nnx.List([UMT5Block(cfg, rngs=rngs, param_dtype=param_dtype) for _ in range(cfg.num_layers)])
        self.final_norm = T5RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, rngs=rngs, param_dtype=param_dtype)
        self.dtype = dtype

    def forward(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Traceable forward (see `__call__`)."""
        cfg = self.config
        L = input_ids.shape[1]
        buckets = jnp.asarray(
            relative_position_buckets(L, L, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        )
        mask = attention_mask.astype(bool)
        x = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype)
        for block in self.blocks:
            x = block(x, buckets, mask, self.dtype)
        return self.final_norm(x, self.dtype)

    def __call__(self, input_ids, attention_mask=None) -> jax.Array:
        """Encode tokens.

        Args:
          input_ids: (B, L) integer token ids.
          attention_mask: (B, L) bool/int, True/1 = real token; None = all real.
        Returns:
          (B, L, d_model) in the model dtype. Padded positions hold whatever the network computes
          there (they attend to the real tokens); `encode_prompts` zeroes them as Wan does.
        """
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, L); got shape {input_ids.shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integers; got dtype {input_ids.dtype}")
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        attention_mask = jnp.asarray(attention_mask)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {input_ids.shape}; got {attention_mask.shape}"
            )
        return _encoder_jit(self, input_ids.astype(jnp.int32), attention_mask.astype(bool))


@nnx.jit
def _encoder_jit(model: UMT5Encoder, input_ids, attention_mask):
    return model.forward(input_ids, attention_mask)


def encode_prompts(
    encoder: UMT5Encoder,
    tokenizer: PromptTokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt embeddings as the Wan pipelines feed them to the DiT.

    Each prompt is cleaned and tokenised to `tokenizer.text_len` tokens (EOS appended, truncated,
    padded), encoded with its padding mask, and every position at or past its token count is zeroed.

    Returns:
      embeddings: (N, text_len, d_model) numpy array in the encoder's dtype.
      lengths: (N,) int32 token counts (including EOS).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    embeds, lengths = [], []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        ids, mask = tokenizer(batch)
        n = len(batch)
        if n < batch_size and len(prompts) > batch_size:
            # Keep one compiled shape: pad the last batch with copies of its first row.
            ids = np.concatenate([ids, np.repeat(ids[:1], batch_size - n, 0)])
            mask = np.concatenate([mask, np.repeat(mask[:1], batch_size - n, 0)])
        hidden = encoder(ids, mask)[:n]
        hidden = jnp.where(jnp.asarray(mask[:n])[..., None], hidden, 0)
        embeds.append(np.asarray(hidden))
        lengths.append(mask[:n].sum(axis=1).astype(np.int32))
    return np.concatenate(embeds), np.concatenate(lengths)
