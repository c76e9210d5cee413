"""The attention entry point of the models: context (sequence) parallelism over the mesh, else the local kernel.

`attention(q, k, v, mask=None, impl="auto", context_parallel="auto")` is what every model calls. It looks at
the mesh set by ``jax.set_mesh`` (`context_attention.plan`): when the sequence is split over a ``context``
axis it runs `context_attention.context_parallel_attention`, otherwise the local kernel dispatch
`kernels.attention.attention` on the whole arrays. `kernels/` itself knows nothing of meshes.
"""

from __future__ import annotations

import jax

from trackedit_jax.kernels.attention import attention as local_attention
from trackedit_jax.kernels.attention import check_call, scale_queries
from trackedit_jax.parallel.context_attention import context_parallel_attention, plan


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
        splits only q and runs `impl` locally. With no mesh or context == 1 the local kernel runs on the
        whole arrays, exactly as `kernels.attention.attention`.
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
    return local_attention(q, k, v, mask=mask, impl=impl, interpret=interpret, bias=bias, scale=scale)
