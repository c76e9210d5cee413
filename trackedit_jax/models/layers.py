"""Small building blocks shared by the NNX models: dense layers and float32 norms.

Every parameter is made by `trackedit_jax.parallel.rules.param` (logical axis names as metadata, eager
sharding off): a model can be built without a mesh (tests, conversion) and the training / loading code
places the state onto a mesh through the one rules table.

Backward passes: on the CPU backend the dense layer, the norms, the broadcast products and GELU use
hand-written VJPs shaped for XLA:CPU (see the section comments; `benchmarks/bench_backward.py` measures
each against autodiff). On every other backend (TPU, GPU) they are plain `jnp` code differentiated by
autodiff, so XLA's own fusion and rematerialisation apply unchanged. The choice is read at trace time
(`backward_passes` overrides it, e.g. to compare the two or to lower for another platform).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from trackedit_jax.parallel.rules import param

BACKWARD_MODES = ("auto", "cpu_tuned", "autodiff")
_backward_mode = "auto"


@contextlib.contextmanager
def backward_passes(mode: str) -> Iterator[None]:
    """Within the block, trace the layers with `mode`: "cpu_tuned" (hand-written VJPs), "autodiff" (plain
    code) or "auto" (cpu_tuned when `jax.default_backend()` is "cpu", else autodiff). Read at trace time:
    a function jitted before the block keeps the passes it was traced with."""
    global _backward_mode
    if mode not in BACKWARD_MODES:
        raise ValueError(f"backward mode must be one of {BACKWARD_MODES}; got {mode!r}")
    previous, _backward_mode = _backward_mode, mode
    try:
        yield
    finally:
        _backward_mode = previous


def cpu_tuned_backward(backend: str | None = None) -> bool:
    """True when the hand-written (XLA:CPU-shaped) backward passes are in force for `backend`
    (default: `jax.default_backend()`)."""
    if _backward_mode != "auto":
        return _backward_mode == "cpu_tuned"
    return (backend or jax.default_backend()) == "cpu"


# --------------------------------------------------------------------------------------------------
# float32 norms and broadcast products with hand-written backward passes
#
# Why: the backward pass of a norm or of an adaLN scale/gate is a multiply followed by a reduction
# (e.g. d(scale) = sum over tokens of dy * x). XLA:CPU hands such a multiply+reduce to YNNPACK, which
# runs it 20-50x slower than the same contraction written as a dot whenever the operands carry a unit
# axis (batch 1, the usual per-device training batch): 8 ms instead of 0.2 ms for 2048 x 512. Writing
# the reductions as einsums (dot_general) keeps every such gradient on the fast path; the values are the
# same up to float32 summation order.
# --------------------------------------------------------------------------------------------------


def _contract(a: jax.Array, b: jax.Array, keep: Sequence[int]) -> jax.Array:
    """sum of a * b (same shape) over every axis not in `keep`, as one dot_general; returns the kept
    axes in order."""
    letters = "abcdefghijklmnopqrstuvwxyz"[: a.ndim]
    out = "".join(letters[i] for i in keep)
    return jnp.einsum(f"{letters},{letters}->{out}", a, b, preferred_element_type=jnp.float32)


def _row_mean(a: jax.Array) -> jax.Array:
    """mean over the last axis, keepdims, written as a matrix-vector product (see above)."""
    ones = jnp.ones((a.shape[-1],), a.dtype)
    return (jnp.einsum("...d,d->...", a, ones, preferred_element_type=jnp.float32) / a.shape[-1])[..., None]


def mul_broadcast(x: jax.Array, s: jax.Array) -> jax.Array:
    """x * s for float32 x (...) and s broadcastable to x (e.g. an adaLN scale or gate (B, 1, D), a
    norm weight (D,)); with the CPU-tuned passes its backward computes d(s) as a dot (section comment)."""
    return _mul_broadcast(x, s) if cpu_tuned_backward() else x * s


@jax.custom_vjp
def _mul_broadcast(x: jax.Array, s: jax.Array) -> jax.Array:
    return x * s


def _mul_broadcast_fwd(x, s):
    return x * s, (x, s)


def _mul_broadcast_bwd(res, dy):
    x, s = res
    lead = x.ndim - s.ndim
    s_full = (1,) * lead + s.shape
    keep = [i for i in range(x.ndim) if s_full[i] != 1 or x.shape[i] == 1]
    ds = _contract(dy, x, keep).reshape(s.shape)
    return (dy * s).astype(x.dtype), ds.astype(s.dtype)


_mul_broadcast.defvjp(_mul_broadcast_fwd, _mul_broadcast_bwd)


def transpose_tokens(x: jax.Array) -> jax.Array:
    """x (..., L, in) -> (..., in, L): what `dense` saves for its kernel gradient. The leading (batch)
    axes stay in place so the residual keeps the activations' sharding (batch over data/fsdp, tokens
    over context). Compute it once when several layers read the same x (q, k and v) and pass it as `x_t`."""
    return jnp.swapaxes(x, -1, -2)


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *, x_t: jax.Array | None = None) -> jax.Array:
    """x (..., L, in) @ kernel (in, out) (+ bias (out,)) -> (..., L, out) float32, accumulated in float32.

    x and kernel share a dtype (the compute dtype); x_t, if given, is `transpose_tokens(x)`. Same values
    as `jnp.dot`; the backward pass is written out so that the kernel gradient is a matmul XLA:CPU gives
    to YNNPACK. Autodiff contracts over the tokens, the leading axis of both operands, which YNNPACK does
    not take; XLA's Eigen fallback runs it at about two thirds of the speed, after a transposed copy of
    the output gradient. So one operand is transposed on purpose, whichever moves fewer elements:
    - widening or square layers (q, k, v, o, FFN up): the forward pass saves x transposed, (..., in, L)
      (the transpose fuses into the store of the residual), and layers reading the same x share that one
      residual through `x_t`;
    - narrowing layers (FFN down, the head), when no `x_t` is given: x is saved as it is, and the backward
      pass transposes the smaller output gradient to (..., out, L) and the (out, in) product back. For
      the FFN this also avoids recomputing GELU in transposed order, which XLA runs 4x slower than in
      order (FFN fwd+bwd at the bench config: 153 -> 149 ms best, 165 -> 156 ms median).
    When the kernel is not differentiated (frozen base weights under LoRA) nothing extra is saved.
    """
    if x.ndim < 2 or not cpu_tuned_backward():  # autodiff (a single vector: nothing to gain anyway)
        y = jnp.dot(x, kernel, preferred_element_type=jnp.float32)
        return y if bias is None else y + bias.astype(jnp.float32)
    if x_t is None and _narrowing(x.shape, kernel.shape):
        return _dense(x, x, kernel, bias, False)
    return _dense(x, transpose_tokens(x) if x_t is None else x_t, kernel, bias, True)


def _narrowing(x_shape, kernel_shape) -> bool:
    """True when transposing the output gradient (tokens x out) and the kernel gradient (in x out)
    moves fewer elements than transposing the input (tokens x in)."""
    n_in, n_out = kernel_shape
    tokens = math.prod(x_shape[:-1])
    return tokens * n_out + n_in * n_out < tokens * n_in


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _dense(x, saved, kernel, bias, saved_transposed: bool):
    """`saved` is what the backward pass reads for the kernel gradient: x itself, or with
    `saved_transposed` `transpose_tokens(x)`."""
    del saved  # only the backward pass reads it
    y = jnp.dot(x, kernel, preferred_element_type=jnp.float32)
    return y if bias is None else y + bias.astype(jnp.float32)


def _dense_fwd(x, saved, kernel, bias, saved_transposed):
    bv = None if bias is None else bias.value
    y = _dense(x.value, saved.value, kernel.value, bv, saved_transposed)
    bias_dtype = None if bv is None else jnp.zeros((), bv.dtype)  # a scalar carrying the bias dtype
    # a frozen kernel (LoRA) needs no input at all
    return y, (saved.value if kernel.perturbed else None, kernel.value, bias_dtype)


def _dense_bwd(saved_transposed, res, g):
    saved, kernel, bias_dtype = res
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        g = jnp.zeros(g.shape, g.dtype)
    dx = jnp.einsum("...o,io->...i", g.astype(kernel.dtype), kernel, preferred_element_type=jnp.float32).astype(
        kernel.dtype
    )
    dk = None
    lead = "abcdefgh"[: g.ndim - 2]  # contract over every leading axis and the tokens
    if saved is not None and saved_transposed:  # (..., in, L) x (..., L, out)
        dk = jnp.einsum(f"{lead}il,{lead}lo->io", saved, g.astype(saved.dtype), preferred_element_type=jnp.float32)
        dk = dk.astype(kernel.dtype)
    elif saved is not None:  # (..., out, L) x (..., L, in) -> (out, in), then transposed
        g_t = transpose_tokens(g.astype(saved.dtype))
        dk_t = jnp.einsum(f"{lead}ol,{lead}li->oi", g_t, saved, preferred_element_type=jnp.float32)
        # The barrier keeps XLA from folding the transpose into the dot, which would turn it back into
        # the leading-axis contraction this branch exists to avoid.
        dk = jax.lax.optimization_barrier(dk_t).T.astype(kernel.dtype)
    db = None
    if bias_dtype is not None:  # the token sum as a matrix-vector product (see the section comment)
        g2 = g.reshape(-1, g.shape[-1]).astype(jnp.float32)
        db = jnp.dot(jnp.ones((g2.shape[0],), jnp.float32), g2).astype(bias_dtype.dtype)
    return dx, None, dk, db


_dense.defvjp(_dense_fwd, _dense_bwd, symbolic_zeros=True)


_SQRT_2_OVER_PI = 0.7978845608028654


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU, tanh approximation (torch `gelu(approximate="tanh")`, transformers "gelu_new"), any float
    dtype, same shape: `jax.nn.gelu(x, approximate=True)`. With the CPU-tuned passes the backward saves
    only x and recomputes tanh, where autodiff would keep five activation-sized intermediates (x^3, tanh,
    1 + tanh, ...) alive until the backward pass: 4 extra (tokens x ffn) float32 arrays per block, copied
    in and out of the layer scan's residual stacks."""
    return _gelu_tanh(x) if cpu_tuned_backward() else jax.nn.gelu(x, approximate=True)


@jax.custom_vjp
def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x):
    return jax.nn.gelu(x, approximate=True), x


def _gelu_tanh_bwd(x, g):
    xf = x.astype(jnp.float32)
    t = jnp.tanh(_SQRT_2_OVER_PI * (xf + 0.044715 * xf * xf * xf))
    # d/dx [x/2 (1 + t)] = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    dgelu = 0.5 * (1.0 + t) + 0.5 * xf * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 0.134145 * xf * xf)
    return ((g.astype(jnp.float32) * dgelu).astype(x.dtype),)


_gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _normalize(x: jax.Array, eps: float, centre: bool) -> jax.Array:
    """(x - mean) / sqrt(var + eps) (LayerNorm, biased variance) or x / sqrt(mean(x^2) + eps) (RMS) over
    the last axis; x float32."""
    return _normalize_fwd(x, eps, centre)[0]


def _normalize_fwd(x, eps, centre):
    if centre:
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    y = x * rstd
    return y, (y, rstd)


def _normalize_bwd(eps, centre, res, g):
    y, rstd = res
    # d/dx of y = c * rstd(c), c = x - mean(x) (or x): rstd * (g - mean(g) - y * mean(g * y)).
    inner = g - y * _contract(g, y, range(g.ndim - 1))[..., None] / g.shape[-1]
    if centre:
        inner = inner - _row_mean(g)
    return (rstd * inner,)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def _normalized(x: jax.Array, eps: float, centre: bool) -> jax.Array:
    """`_normalize` of float32 x, with the backward pass of the mode in force."""
    return _normalize(x, eps, centre) if cpu_tuned_backward() else _normalize_fwd(x, eps, centre)[0]


def layer_norm(x: jax.Array, eps: float, scale: jax.Array | None = None, bias: jax.Array | None = None) -> jax.Array:
    """LayerNorm over the last axis, computed in float32 (biased variance, as torch)."""
    y = _normalized(x.astype(jnp.float32), eps, True)
    if scale is not None:
        y = mul_broadcast(y, scale.astype(jnp.float32))
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y


def rms_norm(x: jax.Array, eps: float, scale: jax.Array) -> jax.Array:
    """RMSNorm over the last axis in float32: x / sqrt(mean(x^2) + eps) * scale."""
    return mul_broadcast(_normalized(x.astype(jnp.float32), eps, False), scale.astype(jnp.float32))


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
