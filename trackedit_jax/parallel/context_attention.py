"""Sequence (context) parallel attention over the mesh's ``context`` axis.

Activations of long token sequences are split along their length over ``context`` (logical name
``act_length``). Plain GSPMD would all-gather K and V (and usually Q) before attention, so every
context device would hold, and compute on, the whole sequence. The two strategies here keep the work
split; both run inside one `jax.shard_map` that is manual over all four mesh axes, with batch over
(data, fsdp) and heads over tensor exactly as `parallel.rules.activation_spec` shards them (an axis that
does not divide its dimension is replicated), so only the ``context`` axis communicates:

"ulysses" (DeepSpeed-Ulysses, all-to-all)
    q/k/v arrive as (B, L/C, H, D) shards. One all-to-all per tensor turns them into (B, L, H/C, D): whole
    sequences of a slice of the heads. The local attention kernel (`kernels.attention` with the inner
    impl, e.g. splash/cuDNN/Pallas/chunked) runs on full sequences, and one all-to-all brings the output
    back to (B, L/C, H, D). The key-padding mask (B, L) is all-gathered (it is tiny). Requires the heads
    per tensor shard to be divisible by C.
"ring" (ring attention)
    Each device keeps its query block; the K/V blocks (with their mask block) travel around the context
    ring with `jax.lax.ppermute` while an online softmax accumulates the output, so no device ever holds
    more than one K/V block (plus the one in flight). The backward pass is a custom VJP that rotates K/V
    again together with their dK/dV accumulators (recomputing probabilities from the saved log-sum-exp),
    so memory stays linear in the sequence: nothing is stored per ring step. The local block products
    are our own blockwise XLA code (tiles of `RING_QUERY_BLOCK` x `RING_KEY_BLOCK`), not the inner
    kernel, since the kernels do not return their log-sum-exp.

Cross-attention (L_q != L_kv, e.g. video queries on short text keys) needs no communication: only q is
split over ``context``; k, v and the mask are replicated over it and each device runs the inner kernel on
its query block.

Lengths not divisible by C are padded: q/k/v get zero rows up to a multiple of C, padded keys are masked
and padded query rows are dropped from the output. A batch element whose keys are all masked returns
mean(v) over its real keys with no q/k gradient, the convention of the "xla" impl.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import AxisType

from trackedit_jax.kernels.attention import attention as local_attention
from trackedit_jax.kernels.attention import select_impl
from trackedit_jax.kernels.flash_common import (
    balanced_blocks,
    check_qkv,
    merge_fully_masked,
    pad_axis,
    running_max_shift,
    split_fully_masked,
    varying_axes,
)
from trackedit_jax.parallel.rules import CONTEXT_AXIS, TENSOR_AXIS, activation_spec

STRATEGIES = ("auto", "ulysses", "ring")

# "auto" only engages context parallelism for query sequences at least this long (global tokens);
# below it the collectives cost more than the replicated attention they save.
CONTEXT_PARALLEL_MIN_LENGTH = 1024

# The ring computes each (query block x key block) product in chunks of at most this many queries and
# keys, so its temporaries are (B, H, RING_QUERY_BLOCK, RING_KEY_BLOCK) float32, not quadratic in L / C.
RING_QUERY_BLOCK = 512
RING_KEY_BLOCK = 512

_PALLAS_IMPLS = ("pallas_gpu", "pallas_tpu", "splash")
_QKV_AXES = ("act_batch", "act_length", "act_heads", None)
_MASK_AXES = ("act_batch", "act_length")


# ----------------------------------------------------------------------------------------------------
# which path to take


def _context_mesh():
    """The abstract mesh set by `jax.set_mesh` when it has an Auto ``context`` axis, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or CONTEXT_AXIS not in mesh.axis_names:
        return None
    # Inside a shard_map the axes are Manual; explicit-typed meshes would need jax.reshard first.
    if any(t != AxisType.Auto for t in mesh.axis_types):
        return None
    return mesh


def context_size() -> int:
    """Size of the ``context`` axis of the current mesh (1 when no usable mesh is set)."""
    mesh = _context_mesh()
    return 1 if mesh is None else dict(zip(mesh.axis_names, mesh.axis_sizes))[CONTEXT_AXIS]


def heads_per_tensor_shard(num_heads: int, mesh) -> int:
    """Heads one device sees: H / tensor when tensor divides H, else H (heads replicated)."""
    tensor = dict(zip(mesh.axis_names, mesh.axis_sizes)).get(TENSOR_AXIS, 1)
    return num_heads // tensor if num_heads % tensor == 0 else num_heads


def plan(
    q_shape: tuple[int, ...],
    kv_shape: tuple[int, ...],
    strategy: str | None = "auto",
    min_length: int | None = None,
) -> str | None:
    """The path `parallel.attention.attention` takes on the current mesh: "ulysses", "ring", "cross" or
    None (no context parallelism, plain GSPMD / single device).

    The rule:
      * None when `strategy` is None, no mesh is set, the mesh has no Auto ``context`` axis or it has
        size 1; with strategy "auto" also when L_q < `min_length` (default CONTEXT_PARALLEL_MIN_LENGTH).
        An explicit "ulysses"/"ring" ignores the length threshold.
      * "cross" when L_q != L_kv (only q is split; k/v replicated over context).
      * self-attention: "ulysses" for "auto"/"ulysses" when the heads per tensor shard divide by the
        context size, otherwise "ring"; "ring" when asked for.
    """
    if strategy is None:
        return None
    if strategy not in STRATEGIES:
        raise ValueError(f"context_parallel must be one of {STRATEGIES} or None; got {strategy!r}")
    mesh = _context_mesh()
    if mesh is None:
        return None
    cp = dict(zip(mesh.axis_names, mesh.axis_sizes))[CONTEXT_AXIS]
    if cp == 1:
        return None
    threshold = CONTEXT_PARALLEL_MIN_LENGTH if min_length is None else min_length
    if strategy == "auto" and q_shape[1] < threshold:
        return None
    if q_shape[1] != kv_shape[1]:
        return "cross"
    if strategy == "ring":
        return "ring"
    return "ulysses" if heads_per_tensor_shard(q_shape[2], mesh) % cp == 0 else "ring"


# ----------------------------------------------------------------------------------------------------
# Ulysses


def _ulysses_body(q, k, v, mask, *, impl, interpret):
    def seq_to_heads(x):  # (b, L/C, h, D) -> (b, L, h/C, D)
        return jax.lax.all_to_all(x, CONTEXT_AXIS, split_axis=2, concat_axis=1, tiled=True)

    q, k, v = seq_to_heads(q), seq_to_heads(k), seq_to_heads(v)
    if mask is not None:
        mask = jax.lax.all_gather(mask, CONTEXT_AXIS, axis=1, tiled=True)
    out = local_attention(q, k, v, mask=mask, impl=impl, interpret=interpret)
    # (b, L, h/C, D) -> (b, L/C, h, D)
    return jax.lax.all_to_all(out, CONTEXT_AXIS, split_axis=1, concat_axis=2, tiled=True)


# ----------------------------------------------------------------------------------------------------
# ring
#
# Local layout: the padded query block is split into nq chunks of cq rows and every K/V block into nk
# chunks of ck keys, kept chunk-major ((n, b, c, h, d)) for the whole ring so the loops below only
# index their leading axis. The online-softmax state is chunked like the queries:
# m, l (nq, b, h, cq) and acc (nq, b, h, cq, d), all float32.


def _ring_perm(cp: int) -> list[tuple[int, int]]:
    return [(j, (j + 1) % cp) for j in range(cp)]


def _chunking(length: int, block: int) -> tuple[int, int]:
    """(number of chunks, chunk length) covering `length` rows with chunks of at most `block`: the kernels'
    `balanced_blocks` in the (n, c) order of the chunk-major layout above."""
    c, n = balanced_blocks(length, block)
    return n, c


def _to_chunks(x, n, c):
    """(b, n*c, ...) -> (n, b, c, ...)."""
    return jnp.moveaxis(x.reshape(x.shape[0], n, c, *x.shape[2:]), 1, 0)


def _from_chunks(x):
    """(n, b, c, ...) -> (b, n*c, ...)."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _logits(q, k, bias, scale):
    """(b, cq, h, d) x (b, ck, h, d) -> (b, h, cq, ck) float32 logits with the key bias added."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        s = s + bias[:, None, None, :]
    return s


def _rotate(x, cp):
    return jax.tree.map(lambda a: jax.lax.ppermute(a, CONTEXT_AXIS, _ring_perm(cp)), x)


def _varying(x, *refs):
    """`x` typed as varying over every manual mesh axis any of `refs` varies over (shard_map's
    check_vma needs loop carries created from constants to match what the loop body returns)."""
    axes = set()
    for r in refs:
        if r is not None:
            axes |= varying_axes(r)
    missing = tuple(sorted(axes - varying_axes(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


def _fold_block(qc, kv, state, scale):
    """Folds one K/V block (chunked) into the online-softmax state, one query chunk at a time."""

    def one_query_chunk(args):
        q, state = args

        def one_key_chunk(state, kvc):
            m, l, acc = state
            k, v, bias = kvc
            s = _logits(q, k, bias, scale)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            shift = running_max_shift(m_new)  # 0 while a row has seen only masked keys
            p = jnp.exp(s - shift[..., None])
            alpha = jnp.exp(m - shift)
            pv = jnp.einsum("bhqk,bkhd->bhqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
            return (m_new, alpha * l + jnp.sum(p, axis=-1), alpha[..., None] * acc + pv), None

        return jax.lax.scan(one_key_chunk, state, kv)[0]

    return jax.lax.map(one_query_chunk, (qc, state))


def _grad_block(qc, doc, lse, delta, dqc, kv, scale):
    """One K/V block's gradient contributions: (dq chunks + their part, dk part, dv part), float32."""
    kc, vc, bc = kv

    def one_query_chunk(dkv, args):
        q, do, lse, delta, dq = args

        def one_key_chunk(dq, kvc):
            k, v, bias = kvc
            p = jnp.exp(_logits(q, k, bias, scale) - lse[..., None])  # (b, h, cq, ck)
            dv = jnp.einsum("bhqk,bqhd->bkhd", p.astype(do.dtype), do, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bqhd,bkhd->bhqk", do, v, preferred_element_type=jnp.float32)
            ds = (p * (dp - delta[..., None]) * scale).astype(q.dtype)
            dq = dq + jnp.einsum("bhqk,bkhd->bqhd", ds, k, preferred_element_type=jnp.float32)
            dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q, preferred_element_type=jnp.float32)
            return dq, (dk, dv)

        dq, (dk, dv) = jax.lax.scan(one_key_chunk, dq, (kc, vc, bc))
        return (dkv[0] + dk, dkv[1] + dv), dq

    zeros = _varying(jnp.zeros(kc.shape, jnp.float32), qc, kc, vc, bc, doc)
    (dk, dv), dqc = jax.lax.scan(one_query_chunk, (zeros, zeros), (qc, doc, lse, delta, dqc))
    return dqc, dk, dv


def _ring_forward(qc, kv, *, cp, scale):
    nq, b, cq, h, d = qc.shape
    state = (
        jnp.full((nq, b, h, cq), -jnp.inf, jnp.float32),
        jnp.zeros((nq, b, h, cq), jnp.float32),
        jnp.zeros((nq, b, h, cq, d), jnp.float32),
    )
    state = jax.tree.map(lambda x: _varying(x, qc, *kv), state)

    def step(_, carry):
        kv, state = carry
        incoming = _rotate(kv, cp)  # independent of this step's compute: the transfer can overlap
        return incoming, _fold_block(qc, kv, state, scale)

    kv, state = jax.lax.fori_loop(0, cp - 1, step, (kv, state))
    m, l, acc = _fold_block(qc, kv, state, scale)
    out = jnp.swapaxes(acc / l[..., None], 2, 3).astype(kv[1].dtype)  # every row has a real key: l > 0
    return out, m + jnp.log(l)  # (nq, b, cq, h, d), lse (nq, b, h, cq)


def _ring_backward(qc, kv, out, lse, doc, *, cp, scale):
    delta = jnp.einsum("nbqhd,nbqhd->nbhq", doc.astype(jnp.float32), out.astype(jnp.float32))
    dqc = _varying(jnp.zeros(qc.shape, jnp.float32), qc, doc, *kv)
    zeros = _varying(jnp.zeros(kv[0].shape, jnp.float32), qc, doc, *kv)

    def step(_, carry):
        (k, v, bias, dk, dv), dqc = carry
        dqc, dk_part, dv_part = _grad_block(qc, doc, lse, delta, dqc, (k, v, bias), scale)
        # dK/dV accumulators travel with their block and are home again after C hops.
        return _rotate((k, v, bias, dk + dk_part, dv + dv_part), cp), dqc

    (k, v, bias, dk, dv), dqc = jax.lax.fori_loop(0, cp - 1, step, ((*kv, zeros, zeros), dqc))
    dqc, dk_part, dv_part = _grad_block(qc, doc, lse, delta, dqc, (k, v, bias), scale)
    dk, dv = _rotate((dk + dk_part, dv + dv_part), cp)
    return dqc, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring(qc, kc, vc, bc, cp):
    """Ring attention on chunked local blocks: q (nq, b, cq, h, d), k/v (nk, b, ck, h, d), key bias
    (nk, b, ck) or None -> (nq, b, cq, h, d). Only q, k, v, the output and the log-sum-exp are saved."""
    return _ring_fwd(qc, kc, vc, bc, cp)[0]


def _ring_fwd(qc, kc, vc, bc, cp):
    out, lse = _ring_forward(qc, (kc, vc, bc), cp=cp, scale=1.0 / math.sqrt(qc.shape[-1]))
    return out, (qc, kc, vc, bc, out, lse)


def _ring_bwd(cp, residuals, do):
    qc, kc, vc, bc, out, lse = residuals
    scale = 1.0 / math.sqrt(qc.shape[-1])
    dqc, dkc, dvc = _ring_backward(qc, (kc, vc, bc), out, lse, do, cp=cp, scale=scale)
    dbias = None if bc is None else jnp.zeros_like(bc)
    return dqc.astype(qc.dtype), dkc.astype(kc.dtype), dvc.astype(vc.dtype), dbias


_ring.defvjp(_ring_fwd, _ring_bwd)


def _ring_body(q, k, v, mask, *, cp, key_block, query_block):
    lq, lk = q.shape[1], k.shape[1]
    nq, cq = _chunking(lq, query_block)
    nk, ck = _chunking(lk, key_block)
    bias = None
    if mask is not None or nk * ck != lk:
        # Padding to whole key chunks is local; padded keys get a -inf bias (zero probability and gradient).
        real = jnp.ones((k.shape[0], lk), bool) if mask is None else mask
        bias = _to_chunks(jnp.where(pad_axis(real, 1, nk * ck), 0.0, -jnp.inf).astype(jnp.float32), nk, ck)
    kc, vc = (_to_chunks(pad_axis(x, 1, nk * ck), nk, ck) for x in (k, v))
    qc = _to_chunks(pad_axis(q, 1, nq * cq), nq, cq)  # padded query rows are dropped below
    return _from_chunks(_ring(qc, kc, vc, bias, cp))[:, :lq]


# ----------------------------------------------------------------------------------------------------
# cross-attention: q split, k/v replicated over context


def _cross_body(q, k, v, mask, *, impl, interpret):
    return local_attention(q, k, v, mask=mask, impl=impl, interpret=interpret)


# ----------------------------------------------------------------------------------------------------
# entry point


def context_parallel_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    strategy: str = "auto",
    impl: str = "auto",
    interpret: bool = False,
    ring_key_block: int | None = None,
    ring_query_block: int | None = None,
) -> jax.Array:
    """Attention with the sequence split over the current mesh's ``context`` axis.

    Call under ``with jax.set_mesh(mesh):`` (an Auto mesh with a ``context`` axis), inside or outside
    `jax.jit`. Usually reached through `parallel.attention.attention(..., context_parallel=...)`.

    Args:
      q: (B, L_q, H, D) queries; k, v: (B, L_kv, H, D); one dtype (float32/bfloat16/float16).
      mask: optional (B, L_kv) bool key-padding mask (True = attend); it is split along with k.
      strategy: "auto"/"ulysses"/"ring" for self-attention (L_q == L_kv), resolved by `plan` (ulysses
        needs the heads per tensor shard divisible by the context size, else ring). Ignored for
        cross-attention (L_q != L_kv), where only q is split.
      impl: the local kernel for ulysses and cross-attention ("auto" resolves on the global shapes, as
        `kernels.attention.select_impl` does); the ring uses its own blockwise XLA code.
      interpret: run Pallas inner kernels in interpret mode (CPU tests).
      ring_key_block, ring_query_block: chunk lengths of the ring's local products (default
        RING_KEY_BLOCK, RING_QUERY_BLOCK).
    Returns:
      (B, L_q, H, D) in the dtype of v, sharded like q.
    """
    check_qkv(q, k, v, mask)
    mesh = _context_mesh()
    if mesh is None:
        raise ValueError("context_parallel_attention needs a mesh with an Auto 'context' axis (jax.set_mesh)")
    path = plan(q.shape, k.shape, strategy, min_length=0)
    if path is None:  # context axis of size 1: nothing to split
        return local_attention(q, k, v, mask=mask, impl=impl, interpret=interpret)
    if impl == "auto":
        impl = select_impl(q, k)
    cp = context_size()
    batch, len_q, len_kv = q.shape[0], q.shape[1], k.shape[1]
    self_attention = path != "cross"

    mask, has_key = split_fully_masked(mask)
    pad_q = -len_q % cp
    q = pad_axis(q, 1, len_q + pad_q)
    kv_len = len_kv
    if self_attention and pad_q:
        # k/v are split like q: pad them too and mask the padded keys.
        real = jnp.ones((batch, len_kv), bool) if mask is None else mask
        mask = pad_axis(real, 1, len_kv + pad_q)
        k_in, v_in = pad_axis(k, 1, len_kv + pad_q), pad_axis(v, 1, len_kv + pad_q)
        kv_len = len_kv + pad_q
    else:
        k_in, v_in = k, v

    q_spec = activation_spec(q.shape, _QKV_AXES, mesh)
    if self_attention:
        kv_spec = activation_spec(k_in.shape, _QKV_AXES, mesh)
        mask_spec = activation_spec((batch, kv_len), _MASK_AXES, mesh)
    else:
        kv_spec = activation_spec(k_in.shape, ("act_batch", None, "act_heads", None), mesh)
        mask_spec = activation_spec((batch, kv_len), ("act_batch", None), mesh)
    if self_attention and q_spec[1] != CONTEXT_AXIS:
        raise AssertionError(f"internal: padded length {q.shape[1]} not split over context ({q_spec})")

    if path == "ulysses":
        body = functools.partial(_ulysses_body, impl=impl, interpret=interpret)
    elif path == "ring":
        body = functools.partial(
            _ring_body,
            cp=cp,
            key_block=ring_key_block or RING_KEY_BLOCK,
            query_block=ring_query_block or RING_QUERY_BLOCK,
        )
    else:
        body = functools.partial(_cross_body, impl=impl, interpret=interpret)

    # Pallas kernels declare outputs without manual-axis (vma) types, which check_vma rejects; without
    # the check, shard_map's transpose adds an all-reduce of the q/k/v gradients over any mesh axis the
    # inputs are replicated on (a no-op for size-1 axes), so keep it on wherever the body allows.
    check_vma = not (path != "ring" and impl in _PALLAS_IMPLS)
    if mask is None:
        fn = jax.shard_map(
            lambda q, k, v: body(q, k, v, None),
            mesh=mesh,
            in_specs=(q_spec, kv_spec, kv_spec),
            out_specs=q_spec,
            check_vma=check_vma,
        )
        out = fn(q, k_in, v_in)
    else:
        fn = jax.shard_map(
            body, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, mask_spec), out_specs=q_spec, check_vma=check_vma
        )
        out = fn(q, k_in, v_in, mask)
    out = out[:, :len_q] if pad_q else out
    return merge_fully_masked(out, v, has_key)
