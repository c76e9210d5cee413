"""The chunked (memory-linear) attention against jax.nn.dot_product_attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trackedit_jax.kernels.attention import attention
from trackedit_jax.kernels.chunked import chunked_attention

# (B, L_q, L_kv, H, D, block_q, block_kv, masked): single and multiple blocks on both axes, lengths
# that are not block multiples, L_q != L_kv, tiny lengths.
SHAPES = [
    (2, 37, 53, 3, 16, 8, 16, True),
    (1, 100, 100, 2, 8, 32, 4096, False),
    (2, 5, 300, 2, 8, 256, 64, True),
    (1, 64, 7, 1, 4, 16, 3, False),
    (3, 129, 65, 2, 32, 64, 64, True),
    (1, 1, 1, 1, 8, 4, 4, False),
]


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ref = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / ref) if ref > 0 else float(np.linalg.norm(a))


def _data(seed, b, lq, lk, h, d, masked):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, n, h, d)).astype(np.float32) for n in (lq, lk, lk))
    mask = None
    if masked:
        mask = rng.random((b, lk)) > 0.3
        mask[0] = False  # a sample whose keys are all masked
        mask[-1, 0] = True
    w = rng.standard_normal((b, lq, h, d)).astype(np.float32)
    return q, k, v, mask, w


def _reference(q, k, v, mask):
    m = None if mask is None else mask[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=m)


def _value_and_grads(fn, q, k, v, w):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(w.astype(out.dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + ("-masked" if s[-1] else ""))
def test_forward_and_gradients_match_fp32(shape):
    b, lq, lk, h, d, bq, bk, masked = shape
    q, k, v, mask, w = _data(0, b, lq, lk, h, d, masked)
    ours = jax.jit(
        lambda q, k, v: chunked_attention(q, k, v, None if mask is None else jnp.asarray(mask), block_q=bq, block_kv=bk)
    )
    ref = jax.jit(lambda q, k, v: _reference(q, k, v, None if mask is None else jnp.asarray(mask)))
    out, grads = _value_and_grads(ours, q, k, v, w)
    out_ref, grads_ref = _value_and_grads(ref, q, k, v, w)
    assert out.shape == (b, lq, h, d) and out.dtype == jnp.float32
    assert _rel(out, out_ref) <= 1e-5
    for name, g, g_ref in zip("qkv", grads, grads_ref):
        assert _rel(g, g_ref) <= 1e-5, name


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[4]], ids=["multi-block", "odd-lengths"])
def test_forward_and_gradients_match_bf16(shape):
    b, lq, lk, h, d, bq, bk, masked = shape
    q, k, v, mask, w = _data(1, b, lq, lk, h, d, masked)
    q16, k16, v16 = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    m = jnp.asarray(mask)
    out, grads = _value_and_grads(
        lambda q, k, v: chunked_attention(q, k, v, m, block_q=bq, block_kv=bk), q16, k16, v16, w
    )
    # reference: the same bf16 inputs, attention computed in float32
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    out_ref, grads_ref = _value_and_grads(lambda q, k, v: _reference(q, k, v, m), f32(q16), f32(k16), f32(v16), w)
    assert out.dtype == jnp.bfloat16
    assert _rel(out, out_ref) <= 2e-2
    for name, g, g_ref in zip("qkv", grads, grads_ref):
        assert g.dtype == jnp.bfloat16
        assert _rel(g, g_ref) <= 2e-2, name


def test_dispatch():
    q, k, v, mask, _ = _data(2, 2, 300, 260, 2, 8, True)
    m = jnp.asarray(mask)
    xla = attention(q, k, v, mask=m, impl="xla")
    assert _rel(attention(q, k, v, mask=m, impl="chunked"), xla) <= 1e-5
    # "auto" on CPU takes the chunked kernel (a custom VJP) for long sequences and XLA for short ones
    assert "custom_vjp_call" in str(jax.make_jaxpr(lambda q, k, v: attention(q, k, v, impl="auto"))(q, k, v))
    short = _data(3, 1, 16, 16, 2, 8, False)[:3]
    assert "custom_vjp_call" not in str(jax.make_jaxpr(lambda q, k, v: attention(q, k, v, impl="auto"))(*short))
    with pytest.raises(ValueError, match=r"mask must be a \(B, L_kv\)"):
        attention(q, k, v, mask=m[:, :10], impl="chunked")
    with pytest.raises(ValueError, match="block sizes must be positive"):
        chunked_attention(q, k, v, block_q=0)


def _temp_bytes(impl: str, length: int) -> int:
    spec = jax.ShapeDtypeStruct((1, length, 8, 64), jnp.float32)
    grad = jax.jit(jax.grad(lambda q, k, v: attention(q, k, v, impl=impl).sum(), argnums=(0, 1, 2)))
    return grad.lower(spec, spec, spec).compile().memory_analysis().temp_size_in_bytes


def test_peak_memory_is_linear_in_length():
    """XLA's buffer assignment for forward+backward: doubling the length doubles the chunked kernel's
    working memory (plus a constant) but quadruples XLA attention's (the materialised scores)."""
    chunked = [_temp_bytes("chunked", n) for n in (2048, 4096, 8192)]
    xla = [_temp_bytes("xla", n) for n in (2048, 4096)]
    print("temp MiB chunked", [c / 2**20 for c in chunked], "xla", [x / 2**20 for x in xla])
    assert chunked[2] / chunked[1] < 2.3 and chunked[1] / chunked[0] < 2.3
    assert xla[1] / xla[0] > 3.5
    assert chunked[1] < xla[1] / 8
