"""Small building blocks shared by the NNX models: annotated parameters and float32 norms.

Every parameter carries its logical axis names (`trackedit_jax.parallel.rules`) as `out_sharding`
metadata with eager sharding off: a model can be built without a mesh (tests, conversion) and the
training / loading code places the state onto a mesh through the one rules table.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def param(
    rngs: nnx.Rngs | None,
    init: Initializer,
    shape: Sequence[int],
    logical_axes: Sequence[str | None],
    dtype,
    kind: type[nnx.Variable] = nnx.Param,
) -> nnx.Variable:
    """An `nnx.Param` (or subclass such as `nnx.LoRAParam`) initialised with `init` and annotated
    with logical axis names, one per dimension."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match parameter shape {tuple(shape)}")
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return kind(init(key, tuple(shape), dtype), out_sharding=tuple(logical_axes), eager_sharding=False)


def layer_norm(x: jax.Array, eps: float, scale: jax.Array | None = None, bias: jax.Array | None = None) -> jax.Array:
    """LayerNorm over the last axis, computed in float32 (biased variance, as torch)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y


def rms_norm(x: jax.Array, eps: float, scale: jax.Array) -> jax.Array:
    """RMSNorm over the last axis in float32: x / sqrt(mean(x^2) + eps) * scale."""
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    return y * scale.astype(jnp.float32)


class LayerNorm(nnx.Module):
    """Affine LayerNorm over the last axis (weights named `scale`, `bias`), computed in float32."""

    def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs | None = None, axis_name: str = "norm"):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), (axis_name,), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), (axis_name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.eps, self.scale[...], self.bias[...])


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis with a learned `scale`, computed in float32."""

    def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs | None = None, axis_name: str = "norm"):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), (axis_name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.eps, self.scale[...])
