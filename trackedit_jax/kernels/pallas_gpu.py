"""Our Pallas flash attention for GPUs, lowered through Triton.

Online-softmax forward (FlashAttention-2 structure: one program per (query block, batch, head), looping
over key blocks), and a Pallas backward in two kernels under `jax.custom_vjp`: dK/dV (one program per key
block, looping over query blocks) and dQ (one program per query block, looping over key blocks). The
forward saves only the per-row log-sum-exp; the backward recomputes the probabilities.

Layout is the project's (B, L, H, D) and is read in place through BlockSpecs (no transposes). Sequence
lengths that are not multiples of the tiles are padded and the padding is masked (see `flash_common`);
the head dim is zero-padded to a power of two (Triton tiles must be powers of two), which changes neither
the logits nor the output columns we keep.

`interpret=True` runs the same kernels with the Pallas interpreter (CPU tests). Lowering for CUDA emits
the `__gpu$xla.gpu.triton` custom call; on a machine without a GPU, lower inside `lowering_for_gpu(...)`
(which names the target GPU); `tests/kernels/test_lowering.py` exports this way from a CPU machine.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from trackedit_jax.kernels.flash_common import (
    NT,
    TN,
    BlockSizes,
    check_qkv,
    dot,
    key_bias,
    merge_fully_masked,
    next_pow2,
    pad_axis,
    round_up,
    running_max_shift,
    split_fully_masked,
)

TRITON_CUSTOM_CALL = "__gpu$xla.gpu.triton"
DEFAULT_BLOCKS = BlockSizes(block_q=64, block_k=64)
# The `device_kind` an H100 SXM reports; Triton lowering reads the compute capability (9.0) from it.
H100_DEVICE_KIND = "NVIDIA H100 80GB HBM3"


@contextlib.contextmanager
def lowering_for_gpu(device_kind: str = H100_DEVICE_KIND) -> Iterator[None]:
    """Lower the Pallas GPU kernels for `device_kind` (e.g. "NVIDIA A100-SXM4-80GB") inside this context.

    For ahead-of-time export (`jax.export(..., platforms=["cuda"])`) from a machine without that GPU: Triton
    lowering needs a target architecture, which JAX takes from the abstract device of the current abstract
    mesh. The context keeps the current mesh's axes (a `jax.set_mesh` mesh stays in force) and only names the
    device. JAX releases whose Triton lowering does not read it target compute capability 9.0 when no GPU is
    present.
    """
    target = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=None, platform="gpu")
    mesh = jax.sharding.get_abstract_mesh().update(abstract_device=target)
    with jax.sharding.use_abstract_mesh(mesh):
        yield


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# ----------------------------------------------------------------------------- kernels


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, scale, block_k, has_bias):
    if has_bias:
        bias_ref, o_ref, lse_ref = refs
    else:
        bias_ref, (o_ref, lse_ref) = None, refs
    q = q_ref[...]
    block_q, head_dim = q.shape
    num_k_blocks = k_ref.shape[0] // block_k

    def body(j, carry):
        acc, m_prev, l_prev = carry
        rows = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        k = k_ref[rows, :]
        v = v_ref[rows, :]
        s = dot(q, k, NT) * scale
        if bias_ref is not None:
            s = s + bias_ref[rows][None, :]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
        shift = running_max_shift(m_next)
        alpha = jnp.exp(m_prev - shift)
        p = jnp.exp(s - shift[:, None])
        l_next = alpha * l_prev + jnp.sum(p, axis=1)
        acc = acc * alpha[:, None] + dot(p.astype(v.dtype), v)
        return acc, m_next, l_next

    init = (
        jnp.zeros((block_q, head_dim), jnp.float32),
        jnp.full((block_q,), -jnp.inf, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
    )
    acc, m, l = lax.fori_loop(0, num_k_blocks, body, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def _dkv_kernel(q_ref, k_ref, v_ref, *refs, scale, block_q, has_bias):
    if has_bias:
        bias_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
    else:
        bias_ref = None
        do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
    k = k_ref[...]
    v = v_ref[...]
    bias = bias_ref[...][None, :] if bias_ref is not None else None
    num_q_blocks = q_ref.shape[0] // block_q

    def body(i, carry):
        dk, dv = carry
        rows = pl.ds(pl.multiple_of(i * block_q, block_q), block_q)
        q = q_ref[rows, :]
        do = do_ref[rows, :]
        lse = lse_ref[rows]
        delta = delta_ref[rows]
        s = dot(q, k, NT) * scale
        if bias is not None:
            s = s + bias
        p = jnp.exp(s - lse[:, None])
        dv = dv + dot(p.astype(do.dtype), do, TN)
        dp = dot(do, v, NT)
        ds = p * (dp - delta[:, None])
        dk = dk + dot(ds.astype(q.dtype), q, TN)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, num_q_blocks, body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, *refs, scale, block_k, has_bias):
    if has_bias:
        bias_ref, do_ref, lse_ref, delta_ref, dq_ref = refs
    else:
        bias_ref = None
        do_ref, lse_ref, delta_ref, dq_ref = refs
    q = q_ref[...]
    do = do_ref[...]
    lse = lse_ref[...]
    delta = delta_ref[...]
    num_k_blocks = k_ref.shape[0] // block_k

    def body(j, dq):
        rows = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        k = k_ref[rows, :]
        v = v_ref[rows, :]
        s = dot(q, k, NT) * scale
        if bias_ref is not None:
            s = s + bias_ref[rows][None, :]
        p = jnp.exp(s - lse[:, None])
        dp = dot(do, v, NT)
        ds = p * (dp - delta[:, None])
        return dq + dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(0, num_k_blocks, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


# ----------------------------------------------------------------------------- pallas_calls


def _compiler_params(head_dim: int, num_warps: int | None, num_stages: int):
    warps = num_warps if num_warps is not None else (4 if head_dim <= 64 else 8)
    return pltriton.CompilerParams(num_warps=warps, num_stages=num_stages)


def _forward(q, k, v, bias, *, scale, blocks, interpret, num_warps, num_stages):
    batch, len_q, heads, head_dim = q.shape
    len_kv = k.shape[1]
    block_q, block_k = blocks.block_q, blocks.block_k
    has_bias = bias is not None
    in_specs = [
        pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, h: (b, i, h, 0)),
        pl.BlockSpec((None, len_kv, None, head_dim), lambda i, b, h: (b, 0, h, 0)),
        pl.BlockSpec((None, len_kv, None, head_dim), lambda i, b, h: (b, 0, h, 0)),
    ]
    args = [q, k, v]
    if has_bias:
        in_specs.append(pl.BlockSpec((None, len_kv), lambda i, b, h: (b, 0)))
        args.append(bias)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, scale=scale, block_k=block_k, has_bias=has_bias),
        grid=(len_q // block_q, batch, heads),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, h: (b, i, h, 0)),
            pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, len_q), jnp.float32),
        ],
        compiler_params=_compiler_params(head_dim, num_warps, num_stages),
        interpret=interpret,
        name="trackedit_flash_fwd_gpu",
    )(*args)


def _backward(q, k, v, bias, o, lse, do, *, scale, blocks, interpret, num_warps, num_stages):
    batch, len_q, heads, head_dim = q.shape
    len_kv = k.shape[1]
    has_bias = bias is not None
    # delta_i = sum_d dO_id O_id: a cheap row reduction, left to XLA (fuses with the cotangent).
    delta = jnp.einsum("blhd,blhd->bhl", o.astype(jnp.float32), do.astype(jnp.float32))
    params = _compiler_params(head_dim, num_warps, num_stages)

    # dK, dV: one program per key block.
    block_q, block_k = blocks.dkv
    full_q = pl.BlockSpec((None, len_q, None, head_dim), lambda j, b, h: (b, 0, h, 0))
    tile_k = pl.BlockSpec((None, block_k, None, head_dim), lambda j, b, h: (b, j, h, 0))
    full_row = pl.BlockSpec((None, None, len_q), lambda j, b, h: (b, h, 0))
    in_specs = [full_q, tile_k, tile_k]
    args = [q, k, v]
    if has_bias:
        in_specs.append(pl.BlockSpec((None, block_k), lambda j, b, h: (b, j)))
        args.append(bias)
    in_specs += [full_q, full_row, full_row]
    args += [do, lse, delta]
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, block_q=block_q, has_bias=has_bias),
        grid=(len_kv // block_k, batch, heads),
        in_specs=in_specs,
        out_specs=[tile_k, tile_k],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        interpret=interpret,
        name="trackedit_flash_dkv_gpu",
    )(*args)

    # dQ: one program per query block.
    block_q, block_k = blocks.dq
    tile_q = pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, h: (b, i, h, 0))
    full_k = pl.BlockSpec((None, len_kv, None, head_dim), lambda i, b, h: (b, 0, h, 0))
    tile_row = pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))
    in_specs = [tile_q, full_k, full_k]
    args = [q, k, v]
    if has_bias:
        in_specs.append(pl.BlockSpec((None, len_kv), lambda i, b, h: (b, 0)))
        args.append(bias)
    in_specs += [tile_q, tile_row, tile_row]
    args += [do, lse, delta]
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, block_k=block_k, has_bias=has_bias),
        grid=(len_q // block_q, batch, heads),
        in_specs=in_specs,
        out_specs=tile_q,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        interpret=interpret,
        name="trackedit_flash_dq_gpu",
    )(*args)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _flash(q, k, v, bias, scale, blocks, interpret, num_warps, num_stages):
    o, _ = _forward(
        q, k, v, bias, scale=scale, blocks=blocks, interpret=interpret, num_warps=num_warps, num_stages=num_stages
    )
    return o


def _flash_fwd(q, k, v, bias, scale, blocks, interpret, num_warps, num_stages):
    o, lse = _forward(
        q, k, v, bias, scale=scale, blocks=blocks, interpret=interpret, num_warps=num_warps, num_stages=num_stages
    )
    return o, (q, k, v, bias, o, lse)


def _flash_bwd(scale, blocks, interpret, num_warps, num_stages, residuals, do):
    q, k, v, bias, o, lse = residuals
    dq, dk, dv = _backward(
        q,
        k,
        v,
        bias,
        o,
        lse,
        do,
        scale=scale,
        blocks=blocks,
        interpret=interpret,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return dq, dk, dv, (None if bias is None else jnp.zeros_like(bias))


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------- public entry


def flash_attention_gpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
    num_warps: int | None = None,
    num_stages: int = 2,
) -> jax.Array:
    """Flash attention (no causal mask) as a Pallas/Triton kernel, differentiable.

    Args:
      q: (B, L_q, H, D); k, v: (B, L_kv, H, D); float32, bfloat16 or float16, one dtype for all three.
      mask: optional (B, L_kv) bool key-padding mask, True = attend.
      block_sizes: tiles (powers of two, >= 16; Triton's dot needs 16). Defaults to 64 x 64; tiles larger
        than the padded sequence are shrunk.
      interpret: run with the Pallas interpreter (any backend; slow; for tests).
      num_warps, num_stages: Triton launch parameters.
    Returns:
      (B, L_q, H, D) in q's dtype. Logits, softmax statistics and accumulators are float32.
    """
    check_qkv(q, k, v, mask)
    blocks = (block_sizes or DEFAULT_BLOCKS).clipped(q.shape[1], k.shape[1], fit=lambda n: max(16, next_pow2(n)))
    for name, value in blocks.items():
        if not _is_pow2(value) or value < 16:
            raise ValueError(f"block_sizes.{name} must be a power of two >= 16 for the Triton kernel; got {value}")
    batch, len_q, _, head_dim = q.shape
    len_kv = k.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    len_q_pad = round_up(len_q, blocks.q_multiple())
    len_kv_pad = round_up(len_kv, blocks.k_multiple())
    dim_pad = max(16, next_pow2(head_dim))
    qp = pad_axis(pad_axis(q, 1, len_q_pad), 3, dim_pad)
    kp = pad_axis(pad_axis(k, 1, len_kv_pad), 3, dim_pad)
    vp = pad_axis(pad_axis(v, 1, len_kv_pad), 3, dim_pad)
    kernel_mask, has_key = split_fully_masked(mask)
    bias = key_bias(kernel_mask, batch, len_kv, len_kv_pad)
    out = _flash(qp, kp, vp, bias, scale, blocks, interpret, num_warps, num_stages)
    return merge_fully_masked(out[:, :len_q, :, :head_dim], v, has_key)
