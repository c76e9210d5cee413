"""Memory-linear attention in pure JAX: query blocks x key blocks with an online softmax.

XLA's CPU attention materialises the whole (B, H, L_q, L_kv) score tensor and runs the softmax over it
out of cache; this kernel never holds more than one (B, H, block_q, block_kv) score block. Queries are
processed block by block (`lax.map`); keys either in one block (the common case, no rescaling needed)
or block by block with the flash-attention running max / running sum. The backward pass is a
`custom_vjp` that recomputes each score block from q, k and the saved per-row (max, log-sum) instead of
storing probabilities, so activation memory is O(L) as well.

Numerics: scores, softmax statistics and all accumulations are float32 whatever the input dtype; the
probability blocks are cast to the value dtype before the P @ V matmul (as flash attention does).

Masked keys (mask False) get the most negative finite float32 score, so a row whose keys are all masked
returns the uniform average of the values (the convention of `jax.nn.dot_product_attention`); keys
that only exist because a length was padded up to a block multiple get -inf and never contribute.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_KV = 2048

_MASKED = float(jnp.finfo(jnp.float32).min)
_EINSUM = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)


class _Plan(NamedTuple):
    """Static blocking of one call (hashable: it is a non-differentiable argument of the custom_vjp)."""

    len_q: int
    len_kv: int
    block_q: int
    block_kv: int
    num_q: int
    num_kv: int
    scale: float
    has_mask: bool

    @property
    def kv_padded(self) -> bool:
        return self.num_kv * self.block_kv != self.len_kv


def _balanced_blocks(length: int, block: int) -> tuple[int, int]:
    """(block size, number of blocks) covering `length` with at most `block` per block and the
    least padding: 2100 with block 2048 becomes 2 x 1050, not 2 x 2048."""
    num = max(1, -(-length // block))
    size = -(-length // num)
    return size, num


def _mask_scores(s, plan: _Plan, mask_block, kv_start):
    """Apply the user key mask and the block padding to a (B, H, bq, bk) float32 score block."""
    if plan.has_mask:
        s = jnp.where(mask_block[:, None, None, :], s, _MASKED)
    if plan.kv_padded:
        pos = kv_start + jax.lax.broadcasted_iota(jnp.int32, (1, 1, 1, s.shape[-1]), 3)
        s = jnp.where(pos < plan.len_kv, s, -jnp.inf)
    return s


def _split_blocks(x, num: int, block: int, axis: int):
    """(..., num*block, ...) -> (num, ..., block, ...) with the block index leading (for lax.map/scan)."""
    shape = x.shape[:axis] + (num, block) + x.shape[axis + 1 :]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _merge_blocks(x, axis: int):
    """Inverse of `_split_blocks`."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2 :])


# --------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------


def _forward_query_block(qb, k, v, mask, plan: _Plan):
    """One query block against all keys. qb (B,H,bq,D); k, v (B,H,Lkv_pad,D); mask (B,Lkv_pad) or None.

    Returns o (B,H,bq,D) float32, row max m (B,H,bq) of the unscaled scores, log of the row sum (B,H,bq).
    """
    if plan.num_kv == 1:
        s = _mask_scores(_EINSUM("bhqd,bhkd->bhqk", qb, k), plan, mask, 0)
        m = jnp.max(s, axis=-1)
        p = jnp.exp((s - m[..., None]) * plan.scale)
        l = jnp.sum(p, axis=-1)
        o = _EINSUM("bhqk,bhkd->bhqd", p.astype(v.dtype), v) / l[..., None]
        return o, m, jnp.log(l)

    kb = _split_blocks(k, plan.num_kv, plan.block_kv, 2)
    vb = _split_blocks(v, plan.num_kv, plan.block_kv, 2)
    mb = _split_blocks(mask, plan.num_kv, plan.block_kv, 1) if plan.has_mask else None
    starts = jnp.arange(plan.num_kv, dtype=jnp.int32) * plan.block_kv

    def step(carry, xs):
        m, l, acc = carry
        k_j, v_j, mask_j, start = xs
        s = _mask_scores(_EINSUM("bhqd,bhkd->bhqk", qb, k_j), plan, mask_j, start)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        correction = jnp.exp((m - m_new) * plan.scale)
        p = jnp.exp((s - m_new[..., None]) * plan.scale)
        l = l * correction + jnp.sum(p, axis=-1)
        acc = acc * correction[..., None] + _EINSUM("bhqk,bhkd->bhqd", p.astype(v_j.dtype), v_j)
        return (m_new, l, acc), None

    rows = qb.shape[:3]
    # The running max starts at the most negative finite value, not -inf: a block whose keys are all
    # padding (-inf) then gives exp(-inf) = 0 instead of exp(-inf + inf) = NaN.
    init = (
        jnp.full(rows, _MASKED, jnp.float32),
        jnp.zeros(rows, jnp.float32),
        jnp.zeros(rows + (v.shape[-1],), jnp.float32),
    )
    (m, l, acc), _ = jax.lax.scan(step, init, (kb, vb, mb, starts))
    return acc / l[..., None], m, jnp.log(l)


def _forward(q, k, v, mask, plan: _Plan):
    """q (B,H,Lq_pad,D), k/v (B,H,Lkv_pad,D) -> o (B,H,Lq_pad,D) in v.dtype, m, log_l (B,H,Lq_pad)."""
    if plan.num_q == 1:
        o, m, log_l = _forward_query_block(q, k, v, mask, plan)
        return o.astype(v.dtype), m, log_l
    qb = _split_blocks(q, plan.num_q, plan.block_q, 2)
    o, m, log_l = jax.lax.map(lambda x: _forward_query_block(x, k, v, mask, plan), qb)
    return _merge_blocks(o, 2).astype(v.dtype), _merge_blocks(m, 2), _merge_blocks(log_l, 2)


# --------------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------------


def _backward_block(qb, dob, m, log_l, delta, k_j, v_j, mask_j, start, plan: _Plan):
    """Gradients of one (query block, key block) pair, recomputing the probabilities.

    Returns dq (B,H,bq,D) for this key block and dk_j^T, dv_j^T (B,H,D,bk) for this query block, f32.
    dk and dv come out transposed on purpose: written as (q-block)^T-contractions with the big
    (bq, bk) matrix as the right operand, XLA's CPU dot needs no transpose of that matrix (the
    (bk, D)-shaped form costs an extra copy of the whole score block and ran 2x slower).
    """
    s = _mask_scores(_EINSUM("bhqd,bhkd->bhqk", qb, k_j), plan, mask_j, start)
    p = jnp.exp((s - m[..., None]) * plan.scale - log_l[..., None])
    dv_t = _EINSUM("bhqd,bhqk->bhdk", dob, p.astype(dob.dtype))
    dp = _EINSUM("bhqd,bhkd->bhqk", dob, v_j)
    ds = p * (dp - delta[..., None]) * plan.scale
    if plan.has_mask:
        # A masked score is a constant, not a function of q and k: no gradient flows through it (this
        # matters only for rows whose keys are all masked, where p is uniform instead of 0).
        ds = jnp.where(mask_j[:, None, None, :], ds, 0.0)
    dq = _EINSUM("bhqk,bhkd->bhqd", ds.astype(k_j.dtype), k_j)
    dk_t = _EINSUM("bhqd,bhqk->bhdk", qb, ds.astype(qb.dtype))
    return dq, dk_t, dv_t


def _backward_query_block(qb, dob, m, log_l, delta, k, v, mask, plan: _Plan):
    """One query block against all key blocks -> dq (B,H,bq,D), dk^T and dv^T (B,H,D,Lkv_pad), all f32."""
    if plan.num_kv == 1:
        return _backward_block(qb, dob, m, log_l, delta, k, v, mask, 0, plan)

    kb = _split_blocks(k, plan.num_kv, plan.block_kv, 2)
    vb = _split_blocks(v, plan.num_kv, plan.block_kv, 2)
    mb = _split_blocks(mask, plan.num_kv, plan.block_kv, 1) if plan.has_mask else None
    starts = jnp.arange(plan.num_kv, dtype=jnp.int32) * plan.block_kv

    def step(dq, xs):
        k_j, v_j, mask_j, start = xs
        dq_j, dk_j, dv_j = _backward_block(qb, dob, m, log_l, delta, k_j, v_j, mask_j, start, plan)
        return dq + dq_j, (dk_j, dv_j)

    dq, (dk_t, dv_t) = jax.lax.scan(step, jnp.zeros(qb.shape, jnp.float32), (kb, vb, mb, starts))
    return dq, _merge_blocks(dk_t, 3), _merge_blocks(dv_t, 3)


def _backward(q, k, v, mask, o, m, log_l, do, plan: _Plan):
    """-> dq (B,H,Lq_pad,D), dk and dv (B,H,Lkv_pad,D), float32."""
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)  # (B,H,Lq_pad)
    if plan.num_q == 1:
        dq, dk_t, dv_t = _backward_query_block(q, do, m, log_l, delta, k, v, mask, plan)
    else:
        xs = tuple(_split_blocks(x, plan.num_q, plan.block_q, 2) for x in (q, do, m, log_l, delta))

        def step(carry, x):
            dk_acc, dv_acc = carry
            dq, dk_t, dv_t = _backward_query_block(*x, k, v, mask, plan)
            return (dk_acc + dk_t, dv_acc + dv_t), dq

        zeros = jnp.zeros(k.shape[:2] + (k.shape[3], k.shape[2]), jnp.float32)
        (dk_t, dv_t), dq = jax.lax.scan(step, (zeros, zeros), xs)
        dq = _merge_blocks(dq, 2)
    return dq, jnp.swapaxes(dk_t, 2, 3), jnp.swapaxes(dv_t, 2, 3)


# --------------------------------------------------------------------------------------------------
# custom_vjp core on the blocked (B, H, L, D) layout
# --------------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _core(q, k, v, mask, plan: _Plan):
    return _forward(q, k, v, mask, plan)[0]


def _core_fwd(q, k, v, mask, plan: _Plan):
    o, m, log_l = _forward(q, k, v, mask, plan)
    return o, (q, k, v, mask, o, m, log_l)


def _core_bwd(plan: _Plan, residuals, do):
    q, k, v, mask, o, m, log_l = residuals
    dq, dk, dv = _backward(q, k, v, mask, o, m, log_l, do, plan)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_core.defvjp(_core_fwd, _core_bwd)


def _pad_axis(x, axis: int, new_length: int, value=0):
    if x.shape[axis] == new_length:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, new_length - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def chunked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    block_q: int = DEFAULT_BLOCK_Q,
    block_kv: int = DEFAULT_BLOCK_KV,
) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v per head, with memory linear in the sequence lengths.

    Args:
      q: (B, L_q, H, D) queries.
      k, v: (B, L_kv, H, D) keys and values (any L_q, L_kv; they need not be block multiples).
      mask: optional (B, L_kv) bool key-padding mask, True = attend.
      block_q: queries per block (the peak score block is B*H*block_q*block_kv float32 values).
      block_kv: keys per block; when L_kv <= block_kv all keys form one block and no running
        rescaling is needed (the fast path).
    Returns:
      (B, L_q, H, D) in the dtype of `v`. Differentiable in q, k, v (custom VJP, recomputing blocks).
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"expected q (B,L_q,H,D), k = v (B,L_kv,H,D); got q{q.shape}, k{k.shape}, v{v.shape}")
    if block_q < 1 or block_kv < 1:
        raise ValueError(f"block sizes must be positive; got block_q={block_q}, block_kv={block_kv}")
    batch, len_q, _, head_dim = q.shape
    len_kv = k.shape[1]
    if mask is not None and mask.shape != (batch, len_kv):
        raise ValueError(f"mask must have shape (B, L_kv) = {(batch, len_kv)}; got {mask.shape}")
    bq, nq = _balanced_blocks(len_q, block_q)
    bk, nk = _balanced_blocks(len_kv, block_kv)
    plan = _Plan(len_q, len_kv, bq, bk, nq, nk, 1.0 / math.sqrt(head_dim), mask is not None)

    qt = _pad_axis(jnp.swapaxes(q, 1, 2), 2, nq * bq)
    kt = _pad_axis(jnp.swapaxes(k, 1, 2), 2, nk * bk)
    vt = _pad_axis(jnp.swapaxes(v, 1, 2), 2, nk * bk)
    mask_p = None if mask is None else _pad_axis(mask.astype(bool), 1, nk * bk, value=False)
    out = _core(qt, kt, vt, mask_p, plan)
    return jnp.swapaxes(out[:, :, :len_q], 1, 2)
