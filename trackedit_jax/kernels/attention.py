"""The one local attention dispatch: which kernel computes attention on the arrays it is given.

`attention(q, k, v, mask=None, impl="auto")` computes softmax(q k^T / sqrt(D)) v per head on whole
(unsplit) sequences; kernels are swapped here only. It knows nothing of meshes: models call
`trackedit_jax.parallel.attention.attention`, which adds context (sequence) parallelism over the mesh and
otherwise, or per shard, calls this function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trackedit_jax.kernels.chunked import chunked_attention
from trackedit_jax.kernels.flash_common import check_qkv

IMPLS = ("auto", "xla", "cudnn", "pallas_gpu", "pallas_tpu", "splash", "chunked")

# "auto" on GPU/TPU uses dense XLA attention while one head's logit matrix has at most this many
# entries (4 MiB of float32); above it a flash kernel is chosen.
AUTO_DENSE_MAX_LOGITS = 1 << 20
# "auto" on CPU: the chunked kernel once the score matrix is big enough for XLA's materialised
# softmax to fall out of cache (below this, per-block overhead makes plain XLA as fast or faster).
CHUNKED_MIN_SCORES = 256 * 256


def _xla(q, k, v, mask, bias=None):
    scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], jnp.float32))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _cudnn_usable(q: jax.Array) -> bool:
    # cuDNN's fused path: half precision, head dim a multiple of 8 and at most 128.
    return q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128


def select_impl(q: jax.Array, k: jax.Array, backend: str | None = None) -> str:
    """The implementation "auto" resolves to for these shapes on `backend` (default: jax.default_backend()).

    CPU: "chunked" when L_q * L_kv >= CHUNKED_MIN_SCORES, else "xla". GPU/TPU: "xla" while
    L_q * L_kv <= AUTO_DENSE_MAX_LOGITS; above, "splash" on TPU, and on GPU "cudnn" for
    bfloat16/float16 with head dim a multiple of 8 up to 128, "pallas_gpu" otherwise.
    """
    backend = backend or jax.default_backend()
    scores = q.shape[1] * k.shape[1]
    if backend == "cpu":
        return "chunked" if scores >= CHUNKED_MIN_SCORES else "xla"
    if scores <= AUTO_DENSE_MAX_LOGITS:
        return "xla"
    if backend == "tpu":
        return "splash"
    if backend in ("gpu", "cuda", "rocm"):
        return "cudnn" if backend != "rocm" and _cudnn_usable(q) else "pallas_gpu"
    return "chunked" if scores >= CHUNKED_MIN_SCORES else "xla"


def check_call(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, impl: str) -> None:
    """Validates the arguments of `attention`: (B, L, H, D) q/k/v of one dtype, a (B, L_kv) mask, a known impl."""
    check_qkv(q, k, v, mask)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")


def scale_queries(q: jax.Array, scale: float | None) -> jax.Array:
    """q (B, L_q, H, D) pre-multiplied so that the default 1 / sqrt(D) score scale becomes `scale`
    (same shape and dtype; q itself when `scale` is None). Every impl then supports a custom scale."""
    if scale is None:
        return q
    return (q.astype(jnp.float32) * (scale * q.shape[-1] ** 0.5)).astype(q.dtype)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    impl: str = "auto",
    interpret: bool = False,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Multi-head attention without a causal mask.

    Args:
      q: (B, L_q, H, D) queries.
      k, v: (B, L_kv, H, D) keys and values.
      mask: optional (B, L_kv) bool key-padding mask; True = attend. Rows whose keys are all masked
        return a uniform average over the masked keys' values (callers zero such rows themselves).
      impl: one of
        "auto"        pick by backend and size (see `select_impl`);
        "xla"         dense reference (materialises the (B, H, L_q, L_kv) logits);
        "chunked"     memory-linear pure JAX (query blocks, online softmax), the CPU default;
        "pallas_gpu"  our Pallas flash kernel lowered through Triton (`pallas_gpu.py`);
        "pallas_tpu"  our Pallas flash kernel lowered through Mosaic (`pallas_tpu.py`);
        "splash"      jax's TPU splash attention kernel (`vendor.py`);
        "cudnn"       cuDNN fused attention via jax.nn.dot_product_attention (CUDA only, bf16/f16).
      interpret: run the Pallas kernels ("pallas_gpu", "pallas_tpu", "splash") with the Pallas
        interpreter, which works on CPU (tests); ignored by the other impls.
      bias: optional additive score bias broadcastable to (B, H, L_q, L_kv) (e.g. T5's relative position
        bias); only the dense "xla" impl takes it ("auto" then resolves to "xla").
      scale: score scale; default 1 / sqrt(D). Applied by pre-scaling q, so every impl supports it.
    Returns:
      (B, L_q, H, D) in the dtype of `v`.

    Dtype policy: q, k and v share one dtype (float32, bfloat16 or float16; "cudnn" needs a half type).
    Every impl computes logits and softmax statistics in float32 and accumulates P @ V in float32, feeding
    the matmuls in the input dtype; the output is cast back to the input dtype.
    """
    check_call(q, k, v, mask, impl)
    q = scale_queries(q, scale)
    if bias is not None:
        if impl not in ("auto", "xla"):
            raise ValueError(f"bias is supported by impl='xla' only; got impl={impl!r}")
        return _xla(q, k, v, mask, bias)
    if impl == "auto":
        impl = select_impl(q, k)
    if impl == "xla":
        return _xla(q, k, v, mask)
    if impl == "chunked":
        return chunked_attention(q, k, v, mask)
    if impl == "pallas_gpu":
        from trackedit_jax.kernels.pallas_gpu import flash_attention_gpu

        return flash_attention_gpu(q, k, v, mask, interpret=interpret)
    if impl == "pallas_tpu":
        from trackedit_jax.kernels.pallas_tpu import flash_attention_tpu

        return flash_attention_tpu(q, k, v, mask, interpret=interpret)
    if impl == "splash":
        from trackedit_jax.kernels.vendor import splash_attention

        return splash_attention(q, k, v, mask, interpret=interpret)
    from trackedit_jax.kernels.vendor import cudnn_attention

    return cudnn_attention(q, k, v, mask)
