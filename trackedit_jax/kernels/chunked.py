"""Memory-linear attention in pure JAX: query blocks x key blocks with an online softmax.

XLA's CPU attention materialises the whole (B, H, L_q, L_kv) score tensor and runs the softmax over it
out of cache. This kernel loops over the B*H (batch, head) sequences and, within one, over query blocks
(`lax.map`); keys form one block (short key sets such as text: no rescaling) or are scanned block by block
with the flash-attention running max and running sum. At most one (block_q, block_kv) score block is
alive, so the working set stays in cache and memory is linear in the sequence lengths. The backward pass
is a `custom_vjp` that recomputes each score block from q, k and the saved per-row statistics instead of
storing probabilities.

Numerics: scores, softmax statistics and every accumulation are float32 whatever the input dtype; the
probability blocks are cast to the value dtype before the P @ V matmul (as flash attention does).

Masked keys (mask False) get the most negative finite float32 score, so a row whose keys are all masked
returns the uniform average of the values (the convention of `jax.nn.dot_product_attention`); keys that
only exist because a length was padded up to a block multiple get -inf and never contribute.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from trackedit_jax.kernels.flash_common import balanced_blocks, check_qkv, pad_axis, varying_axes

DEFAULT_BLOCK_Q = 2048
DEFAULT_BLOCK_KV = 512

_MASKED = float(jnp.finfo(jnp.float32).min)


def _zeros(like: jax.Array, *deps: jax.Array) -> jax.Array:
    """float32 zeros shaped like `like` that carry the manual-axis (vma) types of `like` and `deps`:
    loop carries inside `shard_map` (context parallelism) must vary over the same mesh axes as the
    values the loop body adds to them."""
    z = jnp.zeros_like(like, jnp.float32)
    for d in deps:
        z = z + jnp.zeros_like(d.reshape(-1)[:1], jnp.float32).reshape(())
    return z


def _block_dot(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """A 2-D block product in float32, written as a dot_general with a unit BATCH axis.

    Remat policies such as `dots_with_no_batch_dims_saveable` keep the outputs of the model's
    projections (dots without batch axes); with a batch axis, the per-block score products in here
    are never saved, which would otherwise store the whole L x L score matrix for the backward pass.
    XLA removes the unit axis, so the compiled code is unchanged.
    """
    lhs, rest = spec.split(",")
    rhs, out = rest.split("->")
    return jnp.einsum(f"z{lhs},z{rhs}->z{out}", a[None], b[None], preferred_element_type=jnp.float32)[0]


class _Plan(NamedTuple):
    """Static blocking of one call (hashable: it is a non-differentiable argument of the custom_vjp)."""

    len_kv: int
    block_q: int
    block_kv: int
    num_q: int
    num_kv: int
    has_mask: bool

    @property
    def kv_padded(self) -> bool:
        return self.num_kv * self.block_kv != self.len_kv


def _split(x, num: int):
    """(num*block, ...) -> (num, block, ...)."""
    return x.reshape((num, x.shape[0] // num) + x.shape[1:])


def _merge(x):
    """(num, block, ...) -> (num*block, ...)."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _mask_scores(s, plan: _Plan, mask_j, kv_start):
    """Apply the key mask (bk,) and the block padding to a (bq, bk) float32 score block."""
    if plan.has_mask:
        s = jnp.where(mask_j[None, :], s, _MASKED)
    if plan.kv_padded:
        pos = kv_start + jax.lax.broadcasted_iota(jnp.int32, (1, s.shape[-1]), 1)
        s = jnp.where(pos < plan.len_kv, s, -jnp.inf)
    return s


def _kv_blocks(k, v, mask, plan: _Plan):
    """Key/value/mask blocks (num_kv, bk, ...) and their start offsets, the xs of a key scan."""
    mb = _split(mask, plan.num_kv) if plan.has_mask else None
    starts = jnp.arange(plan.num_kv, dtype=jnp.int32) * plan.block_kv
    return _split(k, plan.num_kv), _split(v, plan.num_kv), mb, starts


# --------------------------------------------------------------------------------------------------
# forward, one (L, D) sequence at a time
# --------------------------------------------------------------------------------------------------


def _forward_query_block(qb, k, v, mask, plan: _Plan):
    """qb (bq, D) against all keys k, v (Lkv_pad, D), mask (Lkv_pad,) or None.

    Returns o (bq, D) float32, the row max m (bq,) of the scores and log of the row sum (bq,).
    """
    if plan.num_kv == 1:
        s = _mask_scores(_block_dot("qd,kd->qk", qb, k), plan, mask, 0)
        m = jnp.max(s, axis=-1)
        p = jnp.exp(s - m[:, None])
        l = jnp.sum(p, axis=-1)
        o = _block_dot("qk,kd->qd", p.astype(v.dtype), v) / l[:, None]
        return o, m, jnp.log(l)

    def step(carry, xs):
        m, l, acc = carry
        k_j, v_j, mask_j, start = xs
        s = _mask_scores(_block_dot("qd,kd->qk", qb, k_j), plan, mask_j, start)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[:, None])
        l = l * correction + jnp.sum(p, axis=-1)
        acc = acc * correction[:, None] + _block_dot("qk,kd->qd", p.astype(v_j.dtype), v_j)
        return (m_new, l, acc), None

    rows = qb.shape[0]
    # The running max starts at the most negative finite value, not -inf: a block whose keys are all
    # padding (-inf) then gives exp(-inf) = 0 instead of exp(-inf + inf) = NaN.
    zero_rows = _zeros(qb[:, 0], k, v)
    init = (zero_rows + _MASKED, zero_rows, _zeros(jnp.broadcast_to(qb[:, :1], (rows, v.shape[-1])), k, v))
    (m, l, acc), _ = jax.lax.scan(step, init, _kv_blocks(k, v, mask, plan))
    return acc / l[:, None], m, jnp.log(l)


def _forward_sequence(q, k, v, mask, plan: _Plan, stats: bool):
    """q (Lq_pad, D), k/v (Lkv_pad, D) -> o (Lq_pad, D) in v.dtype, and with `stats` the row max m and
    log_l (Lq_pad,) float32 the backward pass needs (without, they are not even computed)."""

    def block(qb):
        o, m, log_l = _forward_query_block(qb, k, v, mask, plan)
        return (o.astype(v.dtype), m, log_l) if stats else o.astype(v.dtype)

    if plan.num_q == 1:
        return block(q)
    return jax.tree.map(_merge, jax.lax.map(block, _split(q, plan.num_q)))


# --------------------------------------------------------------------------------------------------
# backward, one (L, D) sequence at a time
# --------------------------------------------------------------------------------------------------


def _backward_block(qb, dob, qb_t, dob_t, m, log_l, delta, k_j, v_j, mask_j, start, plan: _Plan):
    """Gradients of one (query block, key block) pair, recomputing the probabilities.

    qb_t, dob_t are qb, dob (bq, D) transposed, (D, bq). Returns dq (bq, D) for this key block and
    dk_j^T, dv_j^T (D, bk) for this query block, float32.
    dk and dv come out transposed on purpose, as (D, bq) @ (bq, bk): a plain row-major matmul, which
    XLA:CPU gives to YNNPACK. The (bk, D) form would copy the whole score block transposed first (2x
    slower), and contracting q and the score block over their shared leading axis without the small
    transposed copies sends the product to XLA's slower Eigen dot (fwd+bwd of 2048 tokens x 8 heads:
    5% slower).
    """
    s = _mask_scores(_block_dot("qd,kd->qk", qb, k_j), plan, mask_j, start)
    # (s - m) - log_l, not s - (m + log_l): m is the huge masked value for rows without keys.
    p = jnp.exp((s - m[:, None]) - log_l[:, None])
    dv_t = _block_dot("dq,qk->dk", dob_t, p.astype(dob.dtype))
    dp = _block_dot("qd,kd->qk", dob, v_j)
    ds = p * (dp - delta[:, None])
    if plan.has_mask:
        # A masked score is a constant, not a function of q and k: no gradient flows through it (this
        # matters only for rows whose keys are all masked, where p is uniform instead of 0).
        ds = jnp.where(mask_j[None, :], ds, 0.0)
    dq = _block_dot("qk,kd->qd", ds.astype(k_j.dtype), k_j)
    dk_t = _block_dot("dq,qk->dk", qb_t, ds.astype(qb.dtype))
    return dq, dk_t, dv_t


def _backward_query_block(qb, dob, m, log_l, delta, k, v, mask, plan: _Plan):
    """One query block against all keys -> dq (bq, D), dk^T and dv^T (D, Lkv_pad), float32."""
    qb_t, dob_t = qb.T, dob.T  # once per query block, read by every key block
    if plan.num_kv == 1:
        return _backward_block(qb, dob, qb_t, dob_t, m, log_l, delta, k, v, mask, 0, plan)

    def step(dq, xs):
        dq_j, dk_t, dv_t = _backward_block(qb, dob, qb_t, dob_t, m, log_l, delta, *xs, plan)
        return dq + dq_j, (dk_t, dv_t)

    dq, (dk_t, dv_t) = jax.lax.scan(step, _zeros(qb, dob, k, v), _kv_blocks(k, v, mask, plan))
    # (num_kv, D, bk) -> (D, num_kv * bk)
    return dq, jnp.moveaxis(dk_t, 0, 1).reshape(dk_t.shape[1], -1), jnp.moveaxis(dv_t, 0, 1).reshape(dv_t.shape[1], -1)


def _backward_sequence(q, k, v, mask, o, m, log_l, do, plan: _Plan):
    """-> dq (Lq_pad, D), dk and dv (Lkv_pad, D) in the dtypes of q, k, v."""
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    if plan.num_q == 1:
        dq, dk_t, dv_t = _backward_query_block(q, do, m, log_l, delta, k, v, mask, plan)
    else:

        def step(carry, xs):
            dk_acc, dv_acc = carry
            dq, dk_t, dv_t = _backward_query_block(*xs, k, v, mask, plan)
            return (dk_acc + dk_t, dv_acc + dv_t), dq

        zeros = _zeros(k.T, q, do, v)
        xs = tuple(_split(x, plan.num_q) for x in (q, do, m, log_l, delta))
        (dk_t, dv_t), dq = jax.lax.scan(step, (zeros, zeros), xs)
        dq = _merge(dq)
    return dq.astype(q.dtype), dk_t.T.astype(k.dtype), dv_t.T.astype(v.dtype)


# --------------------------------------------------------------------------------------------------
# custom_vjp core over (S, L, D) stacks of sequences (S = batch * heads)
# --------------------------------------------------------------------------------------------------


def _forward(q, k, v, mask, plan: _Plan, stats: bool):
    if plan.has_mask:
        return jax.lax.map(lambda a: _forward_sequence(*a, plan, stats), (q, k, v, mask))
    return jax.lax.map(lambda a: _forward_sequence(*a, None, plan, stats), (q, k, v))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _core(q, k, v, mask, plan: _Plan):
    return _forward(q, k, v, mask, plan, stats=False)


def _core_fwd(q, k, v, mask, plan: _Plan):
    o, m, log_l = _forward(q, k, v, mask, plan, stats=True)
    return o, (q, k, v, mask, o, m, log_l)


def _match_varying(ct, primal):
    """A cotangent varying over more mesh axes than its primal is summed over the extra ones
    (e.g. keys shared by every context shard receive the sum of every shard's gradient)."""
    extra = tuple(sorted(varying_axes(ct) - varying_axes(primal)))
    return jax.lax.psum(ct, extra) if extra else ct


def _core_bwd(plan: _Plan, residuals, do):
    q, k, v, mask, o, m, log_l = residuals
    if plan.has_mask:
        dq, dk, dv = jax.lax.map(lambda a: _backward_sequence(*a, plan), (q, k, v, mask, o, m, log_l, do))
    else:
        dq, dk, dv = jax.lax.map(
            lambda a: _backward_sequence(a[0], a[1], a[2], None, *a[3:], plan), (q, k, v, o, m, log_l, do)
        )
    return _match_varying(dq, q), _match_varying(dk, k), _match_varying(dv, v), None


_core.defvjp(_core_fwd, _core_bwd)


def _to_sequences(x, padded_length: int):
    """(B, L, H, D) -> (B*H, L_pad, D)."""
    b, length, h, d = x.shape
    x = jnp.swapaxes(x, 1, 2).reshape(b * h, length, d)
    return pad_axis(x, 1, padded_length)


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
      block_q: queries per block; the largest live score block is block_q x block_kv float32.
      block_kv: keys per block; when L_kv <= block_kv all keys form one block and no running
        rescaling is needed. The defaults (2048 x 512, a 4 MB score block) were the fastest on a
        2-core CPU at 2048 tokens, forward and backward (benchmarks/bench_attention.py).
    Returns:
      (B, L_q, H, D) in the dtype of `v`. Differentiable in q, k, v (custom VJP, recomputing blocks).
    """
    check_qkv(q, k, v, mask)
    if block_q < 1 or block_kv < 1:
        raise ValueError(f"block sizes must be positive; got block_q={block_q}, block_kv={block_kv}")
    batch, len_q, heads, head_dim = q.shape
    len_kv = k.shape[1]
    bq, nq = balanced_blocks(len_q, block_q)
    bk, nk = balanced_blocks(len_kv, block_kv)
    plan = _Plan(len_kv, bq, bk, nq, nk, mask is not None)

    # The softmax scale is folded into q here (L_q x D multiplies instead of L_q x L_kv inside the
    # kernel); autodiff of this product gives dq its factor.
    q = (q.astype(jnp.float32) * (1.0 / math.sqrt(head_dim))).astype(q.dtype)
    qs = _to_sequences(q, nq * bq)
    ks = _to_sequences(k, nk * bk)
    vs = _to_sequences(v, nk * bk)
    masks = None
    if mask is not None:
        masks = jnp.repeat(pad_axis(mask.astype(bool), 1, nk * bk, value=False), heads, axis=0)
    out = _core(qs, ks, vs, masks, plan)  # (B*H, Lq_pad, D)
    return jnp.swapaxes(out[:, :len_q].reshape(batch, heads, len_q, head_dim), 1, 2)
