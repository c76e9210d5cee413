"""Our Pallas flash attention for TPUs, lowered through Mosaic.

TPU structure: every kernel is a 4-D grid (batch, head, outer block, inner block) whose last axis is the
sequential ("arbitrary") reduction; running statistics and accumulators live in VMEM scratch and are
initialised on the first inner step and written out on the last (Pallas pipelines the HBM<->VMEM copies).

  forward  grid (B, H, q blocks, k blocks): online softmax; m and l are kept lane-replicated (bq, 128)
           and the log-sum-exp leaves the kernel as (B, H, L_q, 128), of which lane 0 is kept.
  dK/dV    grid (B, H, k blocks, q blocks): recomputes P from the saved log-sum-exp.
  dQ       grid (B, H, q blocks, k blocks).

Rows of the log-sum-exp and of delta = rowsum(dO * O) enter the backward kernels as (1, block_q) rows
and the key bias as a (1, block_k) row, so every block has a lane dimension that is a multiple of 128
(or the full array). q/k/v are read in place from the (B, L, H*D) view when D is a multiple of 128 (Wan:
D = 128), otherwise from a (B, H, L, D) transpose.

Sequence lengths are padded to the tiles and masked (`flash_common`). `interpret=True` (or a
`pltpu.InterpretParams`) runs on CPU. Lowering emits `tpu_custom_call`; see tests/kernels/test_lowering.py.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from trackedit_jax.kernels.flash_common import (
    NT,
    BlockSizes,
    check_qkv,
    dot,
    key_bias,
    merge_fully_masked,
    pad_axis,
    round_up,
    running_max_shift,
    split_fully_masked,
)

MOSAIC_CUSTOM_CALL = "tpu_custom_call"
DEFAULT_BLOCKS = BlockSizes(block_q=512, block_k=512, block_q_dkv=512, block_k_dkv=512, block_q_dq=512, block_k_dq=512)
LANES = 128


# ----------------------------------------------------------------------------- layouts


class _Layout:
    """How a (B, L, H, D) tensor is tiled: in place as (B, L, H*D) or transposed to (B, H, L, D)."""

    def __init__(self, head_dim: int):
        self.flat = head_dim % LANES == 0
        self.head_dim = head_dim

    def to_kernel(self, x):
        b, l, h, d = x.shape
        return x.reshape(b, l, h * d) if self.flat else jnp.transpose(x, (0, 2, 1, 3))

    def from_kernel(self, x, heads):
        if self.flat:
            b, l, _ = x.shape
            return x.reshape(b, l, heads, self.head_dim)
        return jnp.transpose(x, (0, 2, 1, 3))

    def tile(self, block: int, seq_axis: int) -> pl.BlockSpec:
        """Spec of a (block, D) tile; grid index `seq_axis` (2 or 3) selects the sequence block."""
        d = self.head_dim
        if self.flat:
            return pl.BlockSpec((None, block, d), lambda b, h, i, j: (b, (i, j)[seq_axis - 2], h))
        return pl.BlockSpec((None, None, block, d), lambda b, h, i, j: (b, h, (i, j)[seq_axis - 2], 0))


def _row_spec(block: int, seq_axis: int) -> pl.BlockSpec:
    """(1, block) slice of a (B, H, 1, L) per-query row (log-sum-exp, delta)."""
    return pl.BlockSpec((None, None, 1, block), lambda b, h, i, j: (b, h, 0, (i, j)[seq_axis - 2]))


def _bias_spec(block: int, seq_axis: int) -> pl.BlockSpec:
    """(1, block) slice of the (B, 1, L_kv) key bias."""
    return pl.BlockSpec((None, 1, block), lambda b, h, i, j: (b, 0, (i, j)[seq_axis - 2]))


def _params(interpret):
    del interpret
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


# ----------------------------------------------------------------------------- kernels


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, scale, has_bias):
    if has_bias:
        bias_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
    else:
        bias_ref = None
        o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
    j = pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    q = q_ref[...]
    k = k_ref[...]
    v = v_ref[...]
    s = dot(q, k, NT) * scale
    if bias_ref is not None:
        s = s + bias_ref[...]
    m_prev = m_scr[...]  # (bq, 128), every lane holds the row maximum
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    shift = running_max_shift(m_next)
    alpha = jnp.exp(m_prev - shift)
    p = jnp.exp(s - shift[:, :1])
    l_scr[...] = alpha * l_scr[...] + jnp.sum(p, axis=1, keepdims=True)
    acc_scr[...] = acc_scr[...] * alpha[:, :1] + dot(p.astype(v.dtype), v)
    m_scr[...] = m_next

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        l = l_scr[...]
        o_ref[...] = (acc_scr[...] / l[:, :1]).astype(o_ref.dtype)
        lse_ref[...] = m_scr[...] + jnp.log(l)


def _probs_and_dscores(q, k, v, bias, do, lse_row, delta_row, scale):
    """Recomputed P (bq, bk) and dS = P * (dO V^T - delta), both float32."""
    s = dot(q, k, NT) * scale
    if bias is not None:
        s = s + bias
    p = jnp.exp(s - jnp.expand_dims(lse_row[0], -1))
    dp = dot(do, v, NT)
    ds = p * (dp - jnp.expand_dims(delta_row[0], -1))
    return p, ds


def _dkv_kernel(q_ref, k_ref, v_ref, *refs, scale, has_bias):
    if has_bias:
        bias_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_scr, dv_scr = refs
    else:
        bias_ref = None
        do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_scr, dv_scr = refs
    i = pl.program_id(3)

    @pl.when(i == 0)
    def _init():
        dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
        dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

    q = q_ref[...]
    do = do_ref[...]
    bias = bias_ref[...] if bias_ref is not None else None
    p, ds = _probs_and_dscores(q, k_ref[...], v_ref[...], bias, do, lse_ref[...], delta_ref[...], scale)
    dv_scr[...] += dot(p.T.astype(do.dtype), do)
    dk_scr[...] += dot(ds.T.astype(q.dtype), q)

    @pl.when(i == pl.num_programs(3) - 1)
    def _finish():
        dk_ref[...] = (dk_scr[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, *refs, scale, has_bias):
    if has_bias:
        bias_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_scr = refs
    else:
        bias_ref = None
        do_ref, lse_ref, delta_ref, dq_ref, dq_scr = refs
    j = pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)

    k = k_ref[...]
    bias = bias_ref[...] if bias_ref is not None else None
    _, ds = _probs_and_dscores(q_ref[...], k, v_ref[...], bias, do_ref[...], lse_ref[...], delta_ref[...], scale)
    dq_scr[...] += dot(ds.astype(k.dtype), k)

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = (dq_scr[...] * scale).astype(dq_ref.dtype)


# ----------------------------------------------------------------------------- pallas_calls


def _forward(q, k, v, bias, *, layout, heads, scale, blocks, interpret):
    """q/k/v in kernel layout; returns o (kernel layout) and the (B, H, 1, L_q) log-sum-exp."""
    batch = q.shape[0]
    len_q = q.shape[-2] if not layout.flat else q.shape[1]
    len_kv = k.shape[-2] if not layout.flat else k.shape[1]
    d = layout.head_dim
    bq, bk = blocks.block_q, blocks.block_k
    has_bias = bias is not None
    in_specs = [layout.tile(bq, 2), layout.tile(bk, 3), layout.tile(bk, 3)]
    args = [q, k, v]
    if has_bias:
        in_specs.append(_bias_spec(bk, 3))
        args.append(bias)
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, scale=scale, has_bias=has_bias),
        grid=(batch, heads, len_q // bq, len_kv // bk),
        in_specs=in_specs,
        out_specs=[
            layout.tile(bq, 2),
            pl.BlockSpec((None, None, bq, LANES), lambda b, h, i, j: (b, h, i, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, len_q, LANES), jnp.float32),
        ],
        scratch_shapes=[
            pltpu.VMEM((bq, LANES), jnp.float32),
            pltpu.VMEM((bq, LANES), jnp.float32),
            pltpu.VMEM((bq, d), jnp.float32),
        ],
        compiler_params=_params(interpret),
        interpret=interpret,
        name="trackedit_flash_fwd_tpu",
    )(*args)
    return o, lse[..., 0][:, :, None, :]


def _backward(q, k, v, bias, o, lse, do, *, layout, heads, scale, blocks, interpret):
    batch = q.shape[0]
    len_q = q.shape[-2] if not layout.flat else q.shape[1]
    len_kv = k.shape[-2] if not layout.flat else k.shape[1]
    d = layout.head_dim
    has_bias = bias is not None
    # delta_i = sum_d dO_id O_id (cheap row reduction, left to XLA), as (B, H, 1, L_q) rows.
    o4 = layout.from_kernel(o, heads).astype(jnp.float32)
    do4 = layout.from_kernel(do, heads).astype(jnp.float32)
    delta = jnp.einsum("blhd,blhd->bhl", o4, do4)[:, :, None, :]

    # dK, dV: grid (B, H, k blocks, q blocks).
    bq, bk = blocks.dkv
    in_specs = [layout.tile(bq, 3), layout.tile(bk, 2), layout.tile(bk, 2)]
    args = [q, k, v]
    if has_bias:
        in_specs.append(_bias_spec(bk, 2))
        args.append(bias)
    in_specs += [layout.tile(bq, 3), _row_spec(bq, 3), _row_spec(bq, 3)]
    args += [do, lse, delta]
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, has_bias=has_bias),
        grid=(batch, heads, len_kv // bk, len_q // bq),
        in_specs=in_specs,
        out_specs=[layout.tile(bk, 2), layout.tile(bk, 2)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
        compiler_params=_params(interpret),
        interpret=interpret,
        name="trackedit_flash_dkv_tpu",
    )(*args)

    # dQ: grid (B, H, q blocks, k blocks).
    bq, bk = blocks.dq
    in_specs = [layout.tile(bq, 2), layout.tile(bk, 3), layout.tile(bk, 3)]
    args = [q, k, v]
    if has_bias:
        in_specs.append(_bias_spec(bk, 3))
        args.append(bias)
    in_specs += [layout.tile(bq, 2), _row_spec(bq, 2), _row_spec(bq, 2)]
    args += [do, lse, delta]
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, has_bias=has_bias),
        grid=(batch, heads, len_q // bq, len_kv // bk),
        in_specs=in_specs,
        out_specs=layout.tile(bq, 2),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
        compiler_params=_params(interpret),
        interpret=interpret,
        name="trackedit_flash_dq_tpu",
    )(*args)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _flash(q, k, v, bias, heads, head_dim, scale, blocks, interpret):
    o, _ = _forward(
        q, k, v, bias, layout=_Layout(head_dim), heads=heads, scale=scale, blocks=blocks, interpret=interpret
    )
    return o


def _flash_fwd(q, k, v, bias, heads, head_dim, scale, blocks, interpret):
    o, lse = _forward(
        q, k, v, bias, layout=_Layout(head_dim), heads=heads, scale=scale, blocks=blocks, interpret=interpret
    )
    return o, (q, k, v, bias, o, lse)


def _flash_bwd(heads, head_dim, scale, blocks, interpret, residuals, do):
    q, k, v, bias, o, lse = residuals
    dq, dk, dv = _backward(
        q,
        k,
        v,
        bias,
        o,
        lse,
        do,
        layout=_Layout(head_dim),
        heads=heads,
        scale=scale,
        blocks=blocks,
        interpret=interpret,
    )
    return dq, dk, dv, (None if bias is None else jnp.zeros_like(bias))


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------- public entry


def flash_attention_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    block_sizes: BlockSizes | None = None,
    interpret=False,
) -> jax.Array:
    """Flash attention (no causal mask) as a Pallas/Mosaic TPU kernel, differentiable.

    Args:
      q: (B, L_q, H, D); k, v: (B, L_kv, H, D); float32 or bfloat16, one dtype for all three.
      mask: optional (B, L_kv) bool key-padding mask, True = attend.
      block_sizes: tiles, multiples of 128 (they are the lane dimension of the log-sum-exp and bias rows).
        Default 512 x 512 everywhere; tiles larger than the 128-rounded sequence are shrunk.
      interpret: False, True (the generic Pallas interpreter) or a `pltpu.InterpretParams` (the TPU
        interpreter); anything but False runs on CPU.
    Returns:
      (B, L_q, H, D) in q's dtype. Logits, softmax statistics and accumulators are float32.
    """
    check_qkv(q, k, v, mask)
    blocks = (block_sizes or DEFAULT_BLOCKS).clipped(q.shape[1], k.shape[1], fit=lambda n: round_up(n, LANES))
    for name, value in blocks.items():
        if value % LANES:
            raise ValueError(f"block_sizes.{name} must be a multiple of {LANES} for the TPU kernel; got {value}")
    batch, len_q, heads, head_dim = q.shape
    len_kv = k.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    len_q_pad = round_up(len_q, blocks.q_multiple())
    len_kv_pad = round_up(len_kv, blocks.k_multiple())
    layout = _Layout(head_dim)
    qp = layout.to_kernel(pad_axis(q, 1, len_q_pad))
    kp = layout.to_kernel(pad_axis(k, 1, len_kv_pad))
    vp = layout.to_kernel(pad_axis(v, 1, len_kv_pad))
    kernel_mask, has_key = split_fully_masked(mask)
    bias = key_bias(kernel_mask, batch, len_kv, len_kv_pad)
    if bias is not None:
        bias = bias[:, None, :]
    out = _flash(qp, kp, vp, bias, heads, head_dim, scale, blocks, interpret)
    return merge_fully_masked(layout.from_kernel(out, heads)[:, :len_q], v, has_key)
