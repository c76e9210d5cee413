"""The attention entry point of the models: context (sequence) parallelism over the mesh, else the local kernel.

`attention(q, k, v, mask=None, impl="auto", context_parallel="auto")` is what every model calls. It looks at
the mesh set by ``jax.set_mesh`` (`context_attention.plan`): when the sequence is split over a ``context``
axis it runs `context_attention.context_parallel_attention`, otherwise the local kernel dispatch
`kernels.attention.attention` on the whole arrays. `kernels/` itself knows nothing of meshes.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from trackedit_jax.kernels.attention import attention as local_attention
from trackedit_jax.kernels.attention import check_call, scale_queries
from trackedit_jax.parallel.context_attention import context_parallel_attention, plan
from trackedit_jax.parallel.rules import activation_spec


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    impl: str = "auto",
    interpret: bool = False,
    context_parallel: str | None = "auto",
    context_min_length: int | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Multi-head attention without a causal mask, split over the mesh's ``context`` axis when one is set.

    Args:
      q: (B, L_q, H, D) queries.
      k, v: (B, L_kv, H, D) keys and values; q, k, v share one dtype (float32, bfloat16 or float16).
      mask: optional (B, L_kv) bool key-padding mask; True = attend.
      impl: the local kernel, as in `kernels.attention.attention` ("auto", "xla", "chunked", "pallas_gpu",
        "pallas_tpu", "splash", "cudnn").
      interpret: run the Pallas kernels with the Pallas interpreter (CPU tests).
      context_parallel: sequence parallelism over the ``context`` axis of the mesh set by
        ``jax.set_mesh`` ("auto", "ulysses", "ring"; None disables it). It engages only when such a mesh
        is active with context > 1, and for "auto" only when L_q >= `context_min_length` (default
        `context_attention.CONTEXT_PARALLEL_MIN_LENGTH`, 1024; an explicit strategy ignores it). Then
        self-attention (L_q == L_kv) runs "ulysses" (all-to-all to head shards, then `impl` on whole
        sequences) when the heads per tensor shard divide by the context size and "ring" (K/V blocks
        rotated with ppermute, online softmax) otherwise or when asked; cross-attention (L_q != L_kv)
        splits only q and runs `impl` locally. Otherwise, with a mesh set, the local kernel runs per
        shard in a `shard_map` over the batch (data, fsdp) and heads (tensor) wherever those split the
        arrays (the rules table's "act_batch" / "act_heads"); with no mesh, on the whole arrays, exactly
        as `kernels.attention.attention`.
      context_min_length: the "auto" length threshold above (global query tokens).
      bias: optional additive score bias broadcastable to (B, H, L_q, L_kv); only the dense "xla" impl
        takes it, and it always runs the local kernel (no context parallelism).
      scale: score scale; default 1 / sqrt(D) (applied by pre-scaling q).
    Returns:
      (B, L_q, H, D) in the dtype of `v`.
    """
    check_call(q, k, v, mask, impl)  # before `plan` reads the shapes
    if bias is None and plan(q.shape, k.shape, context_parallel, context_min_length) is not None:
        return context_parallel_attention(
            scale_queries(q, scale), k, v, mask=mask, strategy=context_parallel, impl=impl, interpret=interpret
        )
    if bias is None:
        out = _per_shard(q, k, v, mask, impl=impl, interpret=interpret, scale=scale)
        if out is not None:
            return out
    return local_attention(q, k, v, mask=mask, impl=impl, interpret=interpret, bias=bias, scale=scale)


def _per_shard(q, k, v, mask, *, impl, interpret, scale):
    """The local kernel inside a `shard_map` over the batch and head shards of the current mesh (the
    "act_batch" and "act_heads" rules), or None when no mesh is set or nothing would be split.

    Attention is independent per example and head, so each device runs the kernel on its own shard. Left
    to GSPMD, the blockwise kernels' loops (lax.map / scan over blocks) are not partitioned over the
    batch: every device would run every example's attention."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or any(t != AxisType.Auto for t in mesh.axis_types):
        return None
    axes = ("act_batch", None, "act_heads", None)
    q_spec = activation_spec(q.shape, axes, mesh)
    if all(e is None for e in q_spec) or activation_spec(k.shape, axes, mesh) != q_spec:
        return None
    mask_spec = P(q_spec[0], None)
    # Pallas kernels declare outputs without manual-axis (vma) types, which check_vma rejects
    check_vma = impl not in ("pallas_gpu", "pallas_tpu", "splash")

    def body(q, k, v, mask):
        return local_attention(q, k, v, mask=mask, impl=impl, interpret=interpret, scale=scale)

    if mask is None:
        return jax.shard_map(
            lambda q, k, v: body(q, k, v, None),
            mesh=mesh,
            in_specs=(q_spec, q_spec, q_spec),
            out_specs=q_spec,
            check_vma=check_vma,
        )(q, k, v)
    return jax.shard_map(
        body, mesh=mesh, in_specs=(q_spec, q_spec, q_spec, mask_spec), out_specs=q_spec, check_vma=check_vma
    )(q, k, v, mask)
