"""Our kernels LOWER for their hardware from this CPU-only machine.

`jax.export` with platforms=["cuda"] / ["tpu"] runs the whole Pallas lowering (Triton IR for GPU, Mosaic
for TPU, including Mosaic's block-shape rules) for the forward AND the backward pass (value_and_grad:
one forward kernel plus the dK/dV and dQ kernels). The only safety check disabled is the custom-call
serialisation check for the kernel's custom-call target. Compiling the result needs the real hardware.
GPU exports run inside `lowering_for_gpu()`, which names the target GPU (an H100) for Triton.
"""

import contextlib
import re

import jax
import jax.numpy as jnp
import pytest

from trackedit_jax.kernels import attention
from trackedit_jax.kernels.pallas_gpu import TRITON_CUSTOM_CALL, flash_attention_gpu, lowering_for_gpu
from trackedit_jax.kernels.pallas_tpu import MOSAIC_CUSTOM_CALL, flash_attention_tpu
from trackedit_jax.kernels.vendor import splash_attention


def _export(fn, platform, target, shapes):
    with lowering_for_gpu() if platform == "cuda" else contextlib.nullcontext():
        exported = jax.export.export(
            jax.jit(fn), platforms=[platform], disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(target)]
        )(*shapes)
    assert exported.platforms == (platform,)
    return re.findall(r"stablehlo\.custom_call @([\w$.]+)", exported.mlir_module())


def _value_and_grad(kernel):
    def fn(q, k, v, mask):
        loss = lambda q, k, v: jnp.sum(kernel(q, k, v, mask).astype(jnp.float32) ** 2)  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    return fn


def _shapes(batch, len_q, len_kv, heads, head_dim, dtype):
    return (
        jax.ShapeDtypeStruct((batch, len_q, heads, head_dim), dtype),
        jax.ShapeDtypeStruct((batch, len_kv, heads, head_dim), dtype),
        jax.ShapeDtypeStruct((batch, len_kv, heads, head_dim), dtype),
        jax.ShapeDtypeStruct((batch, len_kv), jnp.bool_),
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_pallas_gpu_lowers_to_triton(dtype):
    shapes = _shapes(2, 1000, 777, 4, 128, dtype)
    fwd = _export(lambda q, k, v, m: flash_attention_gpu(q, k, v, m), "cuda", TRITON_CUSTOM_CALL, shapes)
    assert fwd == [TRITON_CUSTOM_CALL]
    both = _export(_value_and_grad(flash_attention_gpu), "cuda", TRITON_CUSTOM_CALL, shapes)
    assert both == [TRITON_CUSTOM_CALL] * 3  # forward, dK/dV, dQ


def test_pallas_gpu_without_the_check_disabled_is_refused():
    # Documents why the one check is disabled: Triton custom calls carry no compatibility guarantee.
    with lowering_for_gpu(), pytest.raises(ValueError, match="custom calls"):
        jax.export.export(jax.jit(flash_attention_gpu), platforms=["cuda"])(
            *_shapes(1, 64, 64, 1, 64, jnp.bfloat16)[:3]
        )


@pytest.mark.parametrize("head_dim", [128, 64])  # in-place (B, L, H*D) tiles and the transposed layout
def test_pallas_tpu_lowers_to_mosaic(head_dim):
    shapes = _shapes(2, 1000, 1300, 4, head_dim, jnp.bfloat16)
    fwd = _export(lambda q, k, v, m: flash_attention_tpu(q, k, v, m), "tpu", MOSAIC_CUSTOM_CALL, shapes)
    assert fwd == [MOSAIC_CUSTOM_CALL]
    both = _export(_value_and_grad(flash_attention_tpu), "tpu", MOSAIC_CUSTOM_CALL, shapes)
    assert both == [MOSAIC_CUSTOM_CALL] * 3


def test_splash_lowers_to_mosaic():
    shapes = _shapes(2, 1000, 1000, 4, 128, jnp.bfloat16)
    both = _export(_value_and_grad(splash_attention), "tpu", MOSAIC_CUSTOM_CALL, shapes)
    assert len(both) >= 3 and set(both) == {MOSAIC_CUSTOM_CALL}


def test_dispatch_lowers_through_attention():
    shapes = _shapes(1, 512, 512, 2, 128, jnp.bfloat16)
    for impl, platform, target in (
        ("pallas_gpu", "cuda", TRITON_CUSTOM_CALL),
        ("pallas_tpu", "tpu", MOSAIC_CUSTOM_CALL),
    ):
        calls = _export(lambda q, k, v, m, impl=impl: attention(q, k, v, mask=m, impl=impl), platform, target, shapes)
        assert calls == [target]
