"""Thin wrappers around vendor attention kernels: TPU splash attention and cuDNN fused attention.

These are not ours; they adapt the project's (B, L, H, D) + (B, L_kv) key-padding-mask convention to
`jax.experimental.pallas.ops.tpu.splash_attention` and to `jax.nn.dot_product_attention(implementation=
"cudnn")`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from trackedit_jax.kernels.flash_common import (
    check_qkv,
    merge_fully_masked,
    pad_axis,
    round_up,
    split_fully_masked,
)

SPLASH_BLOCK = 512


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    block: int = SPLASH_BLOCK,
    interpret: bool = False,
) -> jax.Array:
    """TPU splash attention (jax's Pallas/Mosaic kernel), differentiable.

    Args:
      q: (B, L_q, H, D); k, v: (B, L_kv, H, D) (float32 or bfloat16).
      mask: optional (B, L_kv) bool key-padding mask, True = attend. It becomes splash segment ids
        (query id 1, attended keys 1, masked and padded keys 0). A batch element whose keys are all masked
        gets mean(v) over its real keys, as with "xla".
      block: tile for every splash block size (multiple of 128); shrunk for short sequences.
      interpret: run on CPU through the Pallas interpreter.
    Returns:
      (B, L_q, H, D) in q's dtype.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

    check_qkv(q, k, v, mask)
    if block % 128:
        raise ValueError(f"splash block must be a multiple of 128; got {block}")
    batch, len_q, heads, head_dim = q.shape
    len_kv = k.shape[1]
    block_q = min(block, round_up(len_q, 128))
    block_kv = min(block, round_up(len_kv, 128))
    len_q_pad, len_kv_pad = round_up(len_q, block_q), round_up(len_kv, block_kv)

    # Splash has no softmax scale: pre-scale q (exact in the gradient too, by the chain rule).
    qs = pad_axis(q * jnp.asarray(1.0 / math.sqrt(head_dim), q.dtype), 1, len_q_pad)
    kp, vp = pad_axis(k, 1, len_kv_pad), pad_axis(v, 1, len_kv_pad)
    need_segments = mask is not None or len_kv_pad != len_kv
    kernel = splash.make_splash_mha(
        splash_mask.MultiHeadMask([splash_mask.FullMask((len_q_pad, len_kv_pad))] * heads),
        block_sizes=splash.BlockSizes(
            block_q=block_q,
            block_kv=block_kv,
            block_kv_compute=block_kv,
            block_q_dkv=block_q,
            block_kv_dkv=block_kv,
            block_kv_dkv_compute=block_kv,
            block_q_dq=block_q,
            block_kv_dq=block_kv,
        ),
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )
    to_hld = lambda x: jnp.transpose(x, (0, 2, 1, 3))  # noqa: E731  splash works per example on (H, L, D)
    kernel_mask, has_key = split_fully_masked(mask)
    if need_segments:
        real = jnp.ones((batch, len_kv), jnp.int32) if mask is None else kernel_mask.astype(jnp.int32)
        kv_ids = pad_axis(real, 1, len_kv_pad)
        q_ids = jnp.ones((batch, len_q_pad), jnp.int32)
        out = jax.vmap(lambda a, b, c, qi, ki: kernel(a, b, c, segment_ids=splash.SegmentIds(q=qi, kv=ki)))(
            to_hld(qs), to_hld(kp), to_hld(vp), q_ids, kv_ids
        )
    else:
        out = jax.vmap(kernel)(to_hld(qs), to_hld(kp), to_hld(vp))
    return merge_fully_masked(to_hld(out)[:, :len_q], v, has_key)


class CudnnUnavailableError(RuntimeError):
    """impl="cudnn" was asked for where cuDNN cannot run."""


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """cuDNN fused attention through `jax.nn.dot_product_attention(implementation="cudnn")`.

    Args:
      q: (B, L_q, H, D); k, v: (B, L_kv, H, D) in bfloat16 or float16 (cuDNN's flash path has no float32).
      mask: optional (B, L_kv) bool key-padding mask.
    Raises:
      ValueError: float32 inputs (cast to bfloat16 yourself, or use impl="pallas_gpu"/"xla").
      CudnnUnavailableError: no CUDA GPU with cuDNN in this process (e.g. on CPU or TPU).
    """
    check_qkv(q, k, v, mask)
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"impl='cudnn' needs bfloat16 or float16 q/k/v; got {q.dtype}")
    try:
        return jax.nn.dot_product_attention(
            q, k, v, mask=None if mask is None else mask.astype(bool)[:, None, None, :], implementation="cudnn"
        )
    except RuntimeError as err:
        if "cuDNN" not in str(err):
            raise
        raise CudnnUnavailableError(
            f"impl='cudnn' needs a CUDA GPU with cuDNN (jax[cuda12]); this process has backend "
            f"{jax.default_backend()!r} ({err}). Use impl='auto', 'pallas_gpu' or 'xla'."
        ) from None
