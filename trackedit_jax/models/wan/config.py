"""Configuration of the Wan 2.1 text-to-video DiT (`WanConfig`), its presets and the two JSON formats.

The official Wan2.1 `config.json` (`dim`, `num_heads`, `in_dim`, ...) and the diffusers one
(`num_attention_heads`, `attention_head_dim`, `in_channels`, ...) both map onto `WanConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

# Names accepted by `remat_policy`: what the backward pass may keep from the forward pass of a block.
#   none                         no rematerialisation (keep every activation; fastest, most memory)
#   full                         keep nothing inside a block (recompute the whole block)
#   dots_saveable                keep matmul outputs, recompute elementwise ops
#   dots_with_no_batch_dims      keep matmul outputs without batch dims (projections, not attention)
#   attention_out                keep only the attention outputs (named "attention_out")
#   block_io                     keep only values named "block_io" (the residual stream between sub-layers)
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims", "attention_out", "block_io")


def remat_policy_fn(name: str):
    """The `jax.checkpoint` policy for a `REMAT_POLICIES` name (None for "none" and "full")."""
    cp = jax.checkpoint_policies
    table = {
        "none": None,
        "full": None,
        "dots_saveable": cp.dots_saveable,
        "dots_with_no_batch_dims": cp.dots_with_no_batch_dims_saveable,
        "attention_out": cp.save_only_these_names("attention_out"),
        "block_io": cp.save_only_these_names("block_io"),
    }
    if name not in table:
        raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}; got {name!r}")
    return table[name]


def _as_dtype(value: Any, name: str) -> jnp.dtype:
    try:
        dt = jnp.dtype(value)
    except TypeError as e:
        raise ValueError(f"{name} must be a floating dtype such as 'float32' or 'bfloat16'; got {value!r}") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"{name} must be a floating dtype; got {dt}")
    return dt


@dataclasses.dataclass(frozen=True)
class WanConfig:
    """Hyper-parameters of the Wan 2.1 DiT.

    Attributes:
      dim: model width D (1536 for 1.3B, 5120 for 14B).
      num_heads: attention heads; head_dim = dim // num_heads must be even (RoPE pairs).
      num_layers: number of transformer blocks.
      ffn_dim: hidden width of the GELU-tanh feed-forward network.
      freq_dim: width of the sinusoidal timestep embedding.
      in_dim / out_dim: latent channels in and out (16 for Wan 2.1 T2V).
      text_dim: width of the text-encoder embeddings (4096 for UMT5-XXL).
      text_len: text length the official code pads prompts to (kept for export; the model itself
        accepts any text length, like diffusers).
      patch_size: (pt, ph, pw) of the 3D patch embedding.
      eps: epsilon of every LayerNorm / RMSNorm.
      qk_norm: RMS-normalise q and k over all heads (True in every released Wan 2.1 model).
      cross_attn_norm: affine LayerNorm before cross-attention (True in every released model).
      rope_max_seq_len: table length of the 3D RoPE (positions along each axis must be below it).
      rope_theta: RoPE base.
      param_dtype: dtype the parameters are stored in.
      dtype: compute dtype of matmuls and attention (norms, modulation and the residual stream stay
        float32 as in the reference).
      remat_policy: one of `REMAT_POLICIES`, applied to each scanned block.
      attention_impl: the local kernel `impl` passed to `trackedit_jax.parallel.attention.attention`
        ("auto", "xla", "chunked", ...).
      lora_rank: rank of the LoRA adapters on every block projection (0 = none).
      lora_alpha: LoRA scale numerator (scale = alpha / rank); None means alpha = rank (scale 1).
    """

    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    freq_dim: int = 256
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_max_seq_len: int = 1024
    rope_theta: float = 10000.0
    param_dtype: Any = "float32"
    dtype: Any = "float32"
    remat_policy: str = "none"
    attention_impl: str = "auto"
    lora_rank: int = 0
    lora_alpha: float | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("patch_size", tuple(int(p) for p in self.patch_size))
        set_("param_dtype", _as_dtype(self.param_dtype, "param_dtype"))
        set_("dtype", _as_dtype(self.dtype, "dtype"))
        for name in ("dim", "num_heads", "num_layers", "ffn_dim", "freq_dim", "in_dim", "out_dim", "text_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers (pt, ph, pw); got {self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim = dim // num_heads must be even and >= 6 for the 3D RoPE; got {self.head_dim}")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even; got {self.freq_dim}")
        remat_policy_fn(self.remat_policy)
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0; got {self.lora_rank}")

    # ----------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    @property
    def lora_scale(self) -> float:
        if self.lora_rank == 0:
            return 0.0
        alpha = self.lora_rank if self.lora_alpha is None else self.lora_alpha
        return float(alpha) / self.lora_rank

    def replace(self, **changes) -> WanConfig:
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------------------------
    # JSON formats
    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_official_json(cls, d: Mapping[str, Any], **overrides) -> WanConfig:
        """From the official Wan2.1 `config.json` (`dim`, `num_heads`, `num_layers`, `ffn_dim`, ...)."""
        model_type = d.get("model_type", "t2v")
        if model_type != "t2v":
            raise ValueError(
                f"only Wan 2.1 text-to-video checkpoints are supported; config has model_type={model_type!r}"
            )
        window = tuple(d.get("window_size", (-1, -1)))
        if window != (-1, -1):
            raise ValueError(f"windowed attention is not supported; config has window_size={window}")
        missing = [k for k in ("dim", "num_heads", "num_layers", "ffn_dim") if k not in d]
        if missing:
            raise ValueError(f"official Wan config lacks {missing}; got keys {sorted(d)}")
        kw = dict(
            dim=int(d["dim"]),
            num_heads=int(d["num_heads"]),
            num_layers=int(d["num_layers"]),
            ffn_dim=int(d["ffn_dim"]),
            freq_dim=int(d.get("freq_dim", 256)),
            in_dim=int(d.get("in_dim", 16)),
            out_dim=int(d.get("out_dim", 16)),
            text_dim=int(d.get("text_dim", 4096)),
            text_len=int(d.get("text_len", 512)),
            patch_size=tuple(d.get("patch_size", (1, 2, 2))),
            eps=float(d.get("eps", 1e-6)),
            qk_norm=bool(d.get("qk_norm", True)),
            cross_attn_norm=bool(d.get("cross_attn_norm", True)),
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_diffusers_json(cls, d: Mapping[str, Any], **overrides) -> WanConfig:
        """From a diffusers `WanTransformer3DModel` `config.json`."""
        for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            if d.get(key) is not None:
                raise ValueError(f"image-conditioned Wan models are not supported; config has {key}={d[key]!r}")
        heads = int(d.get("num_attention_heads", 40))
        kw = dict(
            dim=heads * int(d.get("attention_head_dim", 128)),
            num_heads=heads,
            num_layers=int(d.get("num_layers", 40)),
            ffn_dim=int(d.get("ffn_dim", 13824)),
            freq_dim=int(d.get("freq_dim", 256)),
            in_dim=int(d.get("in_channels", 16)),
            out_dim=int(d.get("out_channels") or d.get("in_channels", 16)),
            text_dim=int(d.get("text_dim", 4096)),
            patch_size=tuple(d.get("patch_size", (1, 2, 2))),
            eps=float(d.get("eps", 1e-6)),
            qk_norm=d.get("qk_norm", "rms_norm_across_heads") is not None,
            cross_attn_norm=bool(d.get("cross_attn_norm", True)),
            rope_max_seq_len=int(d.get("rope_max_seq_len", 1024)),
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], **overrides) -> WanConfig:
        """Either format, told apart by its keys (`dim` = official, `num_attention_heads` = diffusers)."""
        if "num_attention_heads" in d or d.get("_class_name") == "WanTransformer3DModel":
            return cls.from_diffusers_json(d, **overrides)
        if "dim" in d:
            return cls.from_official_json(d, **overrides)
        raise ValueError(f"config.json is neither the official Wan nor the diffusers format; keys: {sorted(d)}")

    def to_diffusers_json(self) -> dict[str, Any]:
        """The diffusers `WanTransformer3DModel` config (what `export_wan_transformer` writes)."""
        if not self.qk_norm:
            raise ValueError(
                "diffusers' WanTransformer3DModel always has q/k RMS norms; qk_norm=False cannot be exported"
            )
        return {
            "_class_name": "WanTransformer3DModel",
            "patch_size": list(self.patch_size),
            "num_attention_heads": self.num_heads,
            "attention_head_dim": self.head_dim,
            "in_channels": self.in_dim,
            "out_channels": self.out_dim,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.num_layers,
            "cross_attn_norm": self.cross_attn_norm,
            "qk_norm": "rms_norm_across_heads",
            "eps": self.eps,
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": self.rope_max_seq_len,
            "pos_embed_seq_len": None,
        }

    def to_official_json(self) -> dict[str, Any]:
        return {
            "model_type": "t2v",
            "dim": self.dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "ffn_dim": self.ffn_dim,
            "freq_dim": self.freq_dim,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "text_dim": self.text_dim,
            "text_len": self.text_len,
            "patch_size": list(self.patch_size),
            "eps": self.eps,
            "qk_norm": self.qk_norm,
            "cross_attn_norm": self.cross_attn_norm,
        }


def wan_1_3b(**overrides) -> WanConfig:
    """Wan2.1-T2V-1.3B: dim 1536, 12 heads, 30 layers, ffn 8960."""
    return WanConfig(**{**dict(dim=1536, num_heads=12, num_layers=30, ffn_dim=8960), **overrides})


def wan_14b(**overrides) -> WanConfig:
    """Wan2.1-T2V-14B: dim 5120, 40 heads, 40 layers, ffn 13824."""
    return WanConfig(**{**dict(dim=5120, num_heads=40, num_layers=40, ffn_dim=13824), **overrides})


def tiny(
    *,
    dim: int = 32,
    num_heads: int = 2,
    num_layers: int = 2,
    ffn_dim: int = 64,
    freq_dim: int = 32,
    in_dim: int = 4,
    out_dim: int = 4,
    text_dim: int = 32,
    **overrides,
) -> WanConfig:
    """A few-thousand-parameter Wan for tests (the diffusers test model has these sizes)."""
    return WanConfig(
        dim=dim,
        num_heads=num_heads,
        num_layers=num_layers,
        ffn_dim=ffn_dim,
        freq_dim=freq_dim,
        in_dim=in_dim,
        out_dim=out_dim,
        text_dim=text_dim,
        **{"rope_max_seq_len": 32, "text_len": 16, **overrides},
    )
