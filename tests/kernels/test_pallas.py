"""Our Pallas flash kernels (and the splash wrapper) in interpret mode against jax.nn.dot_product_attention.

The reference runs in float32 on the same (possibly bf16-rounded) inputs. Shapes are small because the
Pallas interpreter is slow; they still cover lengths that are not multiples of the tiles, L_q != L_kv,
several tiles per axis, key-padding masks, both TPU layouts (D = 128 in place, D = 64 transposed), a head
dim that is not a power of two (GPU pads it) and separately configured backward tiles.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trackedit_jax.kernels import attention
from trackedit_jax.kernels.attention import select_impl
from trackedit_jax.kernels.flash_common import BlockSizes
from trackedit_jax.kernels.pallas_gpu import flash_attention_gpu
from trackedit_jax.kernels.pallas_tpu import flash_attention_tpu
from trackedit_jax.kernels.vendor import CudnnUnavailableError, cudnn_attention, splash_attention

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _inputs(seed, batch, len_q, len_kv, heads, head_dim, dtype, masked):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((batch, n, heads, head_dim)).astype(np.float32) for n in (len_q, len_kv, len_kv))
    mask = None
    if masked:
        mask = rng.random((batch, len_kv)) < 0.7
        mask[0, : len_kv // 2] = False  # whole leading key tiles masked: exercises the running-max guard
        mask[:, -1] = True  # every query keeps at least one key
        mask = jnp.asarray(mask)
    cot = jnp.asarray(rng.standard_normal((batch, len_q, heads, head_dim)).astype(np.float32))
    return (*(jnp.asarray(x, dtype) for x in (q, k, v)), mask, cot)


def _reference(q, k, v, mask):
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None, None, :])


def _check_against_reference(fn, q, k, v, mask, cot, dtype):
    tol = TOL[dtype]

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v, mask).astype(jnp.float32) * cot)

    out = fn(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(_reference(q, k, v, mask)), atol=tol, rtol=0)
    grads = jax.grad(loss(fn), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(_reference), argnums=(0, 1, 2))(q, k, v)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.dtype == dtype
        err = np.abs(np.asarray(g, np.float32) - np.asarray(r)).max()
        assert err <= tol, f"d{name}: max error {err:.3g}"


def _random_case(seed, head_dims, blocks):
    """A shape drawn at random (seeded, so failures reproduce), lengths from 1 up to a few tiles."""
    rng = np.random.default_rng(seed)
    return (
        seed,
        int(rng.integers(1, 3)),
        int(rng.integers(1, 200)),
        int(rng.integers(1, 200)),
        int(rng.integers(1, 3)),
        int(rng.choice(head_dims)),
        jnp.float32,
        bool(rng.integers(2)),
        blocks,
    )


# (seed, B, L_q, L_kv, H, D, dtype, masked, block sizes)
GPU_CASES = [
    (0, 2, 50, 70, 2, 24, jnp.float32, True, BlockSizes(16, 32)),
    (1, 1, 33, 100, 3, 64, jnp.float32, False, BlockSizes(32, 16, block_q_dkv=16, block_k_dkv=64)),
    (2, 2, 64, 40, 2, 32, jnp.bfloat16, True, BlockSizes(32, 32)),
    _random_case(10, (16, 40, 64), BlockSizes(32, 32)),
]


@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"seed{c[0]}")
def test_pallas_gpu_matches_reference(case):
    seed, b, lq, lk, h, d, dtype, masked, blocks = case
    q, k, v, mask, cot = _inputs(seed, b, lq, lk, h, d, dtype, masked)
    fn = lambda q, k, v, m: flash_attention_gpu(q, k, v, m, block_sizes=blocks, interpret=True)  # noqa: E731
    _check_against_reference(fn, q, k, v, mask, cot, dtype)


TPU_CASES = [
    (3, 2, 150, 260, 2, 64, jnp.float32, True, BlockSizes(128, 128)),  # transposed layout, 2x3 tiles
    (4, 1, 130, 100, 2, 128, jnp.float32, True, BlockSizes(128, 128)),  # in-place (B, L, H*D) layout
    (5, 1, 200, 129, 1, 128, jnp.bfloat16, True, BlockSizes(256, 128, block_q_dq=128, block_k_dkv=256)),
    _random_case(11, (32, 128), BlockSizes(128, 128)),
]


@pytest.mark.parametrize("case", TPU_CASES, ids=lambda c: f"seed{c[0]}")
def test_pallas_tpu_matches_reference(case):
    seed, b, lq, lk, h, d, dtype, masked, blocks = case
    q, k, v, mask, cot = _inputs(seed, b, lq, lk, h, d, dtype, masked)
    fn = lambda q, k, v, m: flash_attention_tpu(q, k, v, m, block_sizes=blocks, interpret=True)  # noqa: E731
    _check_against_reference(fn, q, k, v, mask, cot, dtype)


def test_splash_forward_matches_reference():
    q, k, v, mask, _ = _inputs(6, 3, 90, 140, 2, 64, jnp.float32, True)
    mask = mask.at[2].set(False)  # one batch element with every key masked
    out = splash_attention(q, k, v, mask, interpret=True)
    np.testing.assert_allclose(out, attention(q, k, v, mask=mask, impl="xla"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
def test_dispatch_and_fully_masked_rows(impl):
    # Through attention(): batch 0 is partly masked, batch 1 entirely. A fully masked row gets the
    # uniform average over its real keys and the gradients of "xla" (no gradient through masked logits).
    q, k, v, _, cot = _inputs(8, 2, 20, 30, 2, 16, jnp.float32, False)
    mask = jnp.ones((2, 30), bool).at[0, ::3].set(False).at[1].set(False)

    def loss(impl):
        return lambda q, k, v: jnp.sum(attention(q, k, v, mask=mask, impl=impl, interpret=True) * cot)

    np.testing.assert_allclose(
        attention(q, k, v, mask=mask, impl=impl, interpret=True),
        attention(q, k, v, mask=mask, impl="xla"),
        atol=1e-5,
        rtol=0,
    )
    for g, r in zip(jax.grad(loss(impl), (0, 1, 2))(q, k, v), jax.grad(loss("xla"), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=0)


def test_auto_selection_by_backend_and_size():
    small = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
    big = jnp.zeros((1, 4096, 2, 64), jnp.bfloat16)
    assert select_impl(small, small, "tpu") == "xla"
    assert select_impl(big, big, "tpu") == "splash"
    assert select_impl(big, big, "gpu") == "cudnn"
    assert select_impl(big.astype(jnp.float32), big.astype(jnp.float32), "gpu") == "pallas_gpu"
    assert select_impl(jnp.zeros((1, 4096, 2, 96), jnp.float16), big[..., :1].repeat(96, -1), "gpu") == "cudnn"
    assert select_impl(jnp.zeros((1, 4096, 2, 256), jnp.bfloat16), jnp.zeros((1, 4096, 2, 256)), "gpu") == "pallas_gpu"
    assert select_impl(big, big, "cpu") in ("chunked", "xla")


def test_cudnn_fails_clearly_off_gpu():
    q = jnp.zeros((1, 8, 1, 16), jnp.bfloat16)
    if jax.default_backend() == "gpu":
        pytest.skip("cuDNN may be present")
    with pytest.raises(CudnnUnavailableError, match="needs a CUDA GPU"):
        attention(q, q, q, impl="cudnn")
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        cudnn_attention(q.astype(jnp.float32), q.astype(jnp.float32), q.astype(jnp.float32))


def test_bad_arguments_are_named():
    q = jnp.zeros((1, 8, 1, 16))
    long = jnp.zeros((1, 100, 1, 16))
    with pytest.raises(ValueError, match="power of two"):
        flash_attention_gpu(long, long, long, block_sizes=BlockSizes(24, 16), interpret=True)
    with pytest.raises(ValueError, match="multiple of 128"):
        flash_attention_tpu(
            jnp.zeros((1, 300, 1, 16)),
            jnp.zeros((1, 300, 1, 16)),
            jnp.zeros((1, 300, 1, 16)),
            block_sizes=BlockSizes(192, 128),
            interpret=True,
        )
    with pytest.raises(ValueError, match="key-padding mask"):
        attention(q, q, q, mask=jnp.ones((1, 9), bool), impl="pallas_gpu", interpret=True)
    with pytest.raises(ValueError, match="impl must be one of"):
        attention(q, q, q, impl="flash")
