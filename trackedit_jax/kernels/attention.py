"""The one attention entry point of the project.

`attention(q, k, v, mask=None, impl="auto")` computes softmax(q k^T / sqrt(D)) v per head.
Every model calls this function and nothing else, so kernels are swapped here only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from trackedit_jax.kernels.chunked import chunked_attention

IMPLS = ("auto", "xla", "chunked")

# "auto" on CPU: the chunked kernel once the score matrix is big enough for XLA's materialised
# softmax to fall out of cache (below this, per-block overhead makes plain XLA as fast or faster).
CHUNKED_MIN_SCORES = 256 * 256


def _check(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention expects q, k, v of shape (B, L, H, D); got q{q.shape}, k{k.shape}, v{v.shape}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, L_kv, H, D); got k{k.shape}, v{v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q (B, L_q, H, D) and k (B, L_kv, H, D) disagree: q{q.shape}, k{k.shape}")
    if mask is not None and mask.shape != (k.shape[0], k.shape[1]):
        raise ValueError(f"mask must be a (B, L_kv) = {(k.shape[0], k.shape[1])} key-padding mask; got {mask.shape}")


def _xla(q, k, v, mask):
    scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], jnp.float32))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    impl: str = "auto",
    interpret: bool = False,
) -> jax.Array:
    """Multi-head attention without a causal mask.

    Args:
      q: (B, L_q, H, D) queries.
      k, v: (B, L_kv, H, D) keys and values.
      mask: optional (B, L_kv) bool key-padding mask; True = attend. Rows whose keys are all masked
        return a uniform average over the masked keys' values (callers zero such rows themselves).
      impl: "auto", "xla" or "chunked" (memory-linear pure-JAX kernel, `kernels/chunked.py`).
        "auto" picks "chunked" on CPU when L_q * L_kv >= CHUNKED_MIN_SCORES, else "xla".
      interpret: run Pallas kernels in interpret mode (CPU testing).
    Returns:
      (B, L_q, H, D) in the dtype of `v`.
    """
    _check(q, k, v, mask)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    if impl == "auto" and jax.default_backend() == "cpu" and q.shape[1] * k.shape[1] >= CHUNKED_MIN_SCORES:
        impl = "chunked"
    if impl == "chunked":
        return chunked_attention(q, k, v, mask)
    return _xla(q, k, v, mask)
