"""The projection layer of the DiT blocks, with optional LoRA, and the "what trains" filters.

`LoRALinear` is `y = x @ kernel + bias (+ scale * (x @ lora_a) @ lora_b)`: `kernel` (in, out) and
`bias` (out,) are `nnx.Param`; with `rank > 0` it adds `lora_a` (in, r) and `lora_b` (r, out) as
`nnx.LoRAParam`, `lora_b` zero-initialised so a fresh adapter leaves the model unchanged, and
`scale = alpha / rank`. Because `LoRAParam` is a subclass of `Param`, "all parameters" includes the
adapters and "LoRA only" selects them by type.

The same code works on stacked blocks (created under `nnx.vmap`): every helper here contracts with
`...` so a leading layer axis is carried along.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from trackedit_jax.models.layers import dense
from trackedit_jax.parallel.rules import param

TRAIN_MODES = ("lora", "full")


class LoRALinear(nnx.Module):
    """A dense layer with an optional low-rank adapter.

    Args:
      in_features, out_features: sizes of the last axis in and out.
      rank: LoRA rank r (0 = no adapter).
      alpha: LoRA scale numerator; the update is (alpha / r) * x @ A @ B. None means alpha = r.
      logical_axes: logical names of the kernel's (in, out) axes; the bias takes the out name and the
        adapters take (in, "lora") and ("lora", out).
      use_bias: add a bias.
      param_dtype: parameter dtype; dtype: compute dtype (inputs and weights are cast to it; the
        matmul accumulates in float32 and returns `dtype`).
      kernel_init: initializer of the kernel (the A matrix uses He-uniform, B is zero).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int = 0,
        alpha: float | None = None,
        logical_axes: Sequence[str | None] = ("embed", "mlp"),
        use_bias: bool = True,
        param_dtype=jnp.float32,
        dtype=jnp.float32,
        kernel_init=nnx.initializers.xavier_uniform(),
        rngs: nnx.Rngs,
    ):
        if rank < 0:
            raise ValueError(f"rank must be >= 0; got {rank}")
        in_axis, out_axis = logical_axes
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.scale = (float(rank if alpha is None else alpha) / rank) if rank else 0.0
        self.dtype = dtype
        self.kernel = param(rngs, kernel_init, (in_features, out_features), (in_axis, out_axis), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (out_features,), (out_axis,), param_dtype) if use_bias else None
        if rank:
            self.lora_a = param(
                rngs, nnx.initializers.he_uniform(), (in_features, rank), (in_axis, "lora"), param_dtype, nnx.LoRAParam
            )
            self.lora_b = param(
                rngs, nnx.initializers.zeros, (rank, out_features), ("lora", out_axis), param_dtype, nnx.LoRAParam
            )
        else:
            self.lora_a = None
            self.lora_b = None

    def __call__(self, x: jax.Array, x_t: jax.Array | None = None) -> jax.Array:
        """x (..., in) -> (..., out) in the compute dtype. x_t: optional `layers.transpose_tokens(x)` in
        the compute dtype, shared by layers that read the same x (see `layers.dense`)."""
        x = x.astype(self.dtype)
        if x_t is not None:
            x_t = x_t.astype(self.dtype)
        bias = None if self.bias is None else self.bias[...]
        y = dense(x, self.kernel[...].astype(self.dtype), bias, x_t=x_t)
        if self.rank:
            a = self.lora_a[...].astype(self.dtype)
            b = self.lora_b[...].astype(self.dtype)
            h = dense(x, a, x_t=x_t).astype(self.dtype)
            y = y + self.scale * jnp.dot(h, b, preferred_element_type=jnp.float32)
        return y.astype(self.dtype)

    def merged_kernel(self) -> jax.Array:
        """kernel + scale * A @ B (shape of `kernel`, including any leading stacked-layer axis)."""
        if not self.rank:
            return self.kernel[...]
        return merge_kernel(self.kernel[...], self.lora_a[...], self.lora_b[...], self.scale)


def merge_kernel(kernel: jax.Array, lora_a: jax.Array, lora_b: jax.Array, scale: float) -> jax.Array:
    """The one LoRA merge: kernel + scale * A @ B, computed in float32 and cast back to kernel's dtype.

    Args:
      kernel: (..., in, out); lora_a: (..., in, r); lora_b: (..., r, out), the same leading axes (a
        stacked-layer axis, or none for one layer's slice).
      scale: alpha / r.
    Returns:
      (..., in, out) array of kernel's dtype. Pure: nothing is written (`merge_lora` writes it back,
      `convert.wan_transformer.wan_state_dict` streams it layer by layer into an export).
    """
    a, b = jnp.asarray(lora_a, jnp.float32), jnp.asarray(lora_b, jnp.float32)
    # highest precision: a merged checkpoint must not carry a TF32/bf16-pass matmul error on GPU/TPU
    delta = jnp.einsum("...ir,...ro->...io", a, b, precision=jax.lax.Precision.HIGHEST)
    kernel = jnp.asarray(kernel)
    return (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)


# --------------------------------------------------------------------------------------------------
# which parameters train
# --------------------------------------------------------------------------------------------------


def trainable_filter(mode: str = "lora", extra: Iterable = ()) -> nnx.filterlib.Filter:
    """The nnx filter of the parameters an optimiser updates (`nnx.Optimizer(model, tx, wrt=...)`).

    Args:
      mode: "lora" = only `nnx.LoRAParam`; "full" = every `nnx.Param` (adapters included).
      extra: more parameters to train in "lora" mode, for modules added around the DiT (e.g. the track
        conditioner): each item is a path part (str: every Param whose path contains that key, e.g.
        "track_conditioner") or any nnx filter (restricted to `nnx.Param`).
    """
    if mode == "full":
        return nnx.Param
    if mode != "lora":
        raise ValueError(f"mode must be one of {TRAIN_MODES}; got {mode!r}")
    extras = [nnx.All(nnx.Param, nnx.PathContains(e) if isinstance(e, str) else e) for e in extra]
    return nnx.Any(nnx.LoRAParam, *extras) if extras else nnx.LoRAParam


def count_params(model: nnx.Module, filter: nnx.filterlib.Filter = nnx.Param) -> int:
    """Number of scalar parameters of `model` selected by `filter` (e.g. `trainable_filter("lora")`)."""
    state = nnx.state(model, filter)
    return int(sum(x.size for x in jax.tree.leaves(state)))


def count_trainable(model: nnx.Module, mode: str = "lora", extra: Iterable = ()) -> int:
    """Number of parameters the optimiser updates in `mode` (see `trainable_filter`)."""
    return count_params(model, trainable_filter(mode, extra))


def lora_layers(model: nnx.Module) -> list[tuple[tuple, LoRALinear]]:
    """(path, layer) of every `LoRALinear` with an adapter in `model`."""
    return [(path, m) for path, m in nnx.iter_graph(model) if isinstance(m, LoRALinear) and m.rank]


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold every adapter into its kernel in place (kernel = `merge_kernel(...)`, then B = 0) and return
    `model`. The function computed is unchanged. (`export_wan_transformer` applies the same
    `merge_kernel` to the tensors it writes and leaves the model as it is.)"""
    for _, layer in lora_layers(model):
        layer.kernel[...] = layer.merged_kernel()
        layer.lora_b[...] = jnp.zeros_like(layer.lora_b[...])
    return model
