"""The hand-written backward passes of the float32 norms, broadcast products, dense layer and GELU equal
plain autodiff (and torch's GELU gradient)."""

from __future__ import annotations

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from torch_reference import HAVE_TORCH, needs_torch

from trackedit_jax.models.layers import (
    backward_passes,
    cpu_tuned_backward,
    dense,
    gelu_tanh,
    layer_norm,
    mul_broadcast,
    rms_norm,
    transpose_tokens,
)

if HAVE_TORCH:
    import torch


def _plain_layer_norm(x, eps, scale=None, bias=None):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + eps)
    return y if scale is None else y * scale + bias


def _plain_rms_norm(x, eps, scale):
    return x / jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps) * scale


def _grads(fn, *args):
    w = jnp.asarray(np.random.default_rng(9).standard_normal(jax.eval_shape(fn, *args).shape), jnp.float32)
    return jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums=tuple(range(len(args))))(*args)


def _close(a, b, tol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        assert np.linalg.norm(x - y) <= tol * max(np.linalg.norm(y), 1e-30)


def _residuals(fn, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(fn, *args)
    return out.getvalue().strip().splitlines()


# batch 1 (the unit axis that triggers XLA's slow multiply-reduce), batch 3, and a 2-D input
@pytest.mark.parametrize("shape", [(1, 37, 24), (3, 5, 16), (11, 8)])
def test_norm_gradients_equal_autodiff(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
    scale, bias = (jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32) for _ in range(2))
    _close(layer_norm(x, 1e-6), _plain_layer_norm(x, 1e-6), 1e-6)
    _close(_grads(lambda x: layer_norm(x, 1e-6), x), _grads(lambda x: _plain_layer_norm(x, 1e-6), x))
    _close(
        _grads(lambda x, s, b: layer_norm(x, 1e-3, s, b), x, scale, bias),
        _grads(lambda x, s, b: _plain_layer_norm(x, 1e-3, s, b), x, scale, bias),
    )
    _close(
        _grads(lambda x, s: rms_norm(x, 1e-5, s), x, scale), _grads(lambda x, s: _plain_rms_norm(x, 1e-5, s), x, scale)
    )


@pytest.mark.parametrize(
    "x_shape, s_shape",
    [((1, 9, 6), (1, 1, 6)), ((2, 9, 6), (2, 1, 6)), ((2, 9, 6), (6,)), ((2, 9, 6), (2, 9, 1)), ((4, 6), (1, 6))],
)
def test_mul_broadcast_gradients_equal_autodiff(x_shape, s_shape):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    s = jnp.asarray(rng.standard_normal(s_shape), jnp.float32)
    np.testing.assert_array_equal(mul_broadcast(x, s), x * s)
    _close(_grads(mul_broadcast, x, s), _grads(jnp.multiply, x, s), 1e-6)


@needs_torch
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_gelu_tanh_gradient_equals_autodiff_and_torch(dtype, tol):
    # wide range: the tails, where tanh saturates and the x^3 term dominates, are where a wrong
    # derivative shows
    x32 = np.concatenate([np.linspace(-9, 9, 301), np.random.default_rng(2).standard_normal(211) * 2]).astype(
        np.float32
    )
    x = jnp.asarray(x32, dtype)
    np.testing.assert_array_equal(gelu_tanh(x), jax.nn.gelu(x, approximate=True))
    ours = _grads(gelu_tanh, x)
    _close(ours, _grads(lambda v: jax.nn.gelu(v, approximate=True), x), tol)
    tx = torch.tensor(np.asarray(x.astype(jnp.float32)), dtype=torch.float64, requires_grad=True)
    w = np.random.default_rng(9).standard_normal(x.shape).astype(np.float32)  # the weights `_grads` uses
    (torch.nn.functional.gelu(tx, approximate="tanh") * torch.from_numpy(w.astype(np.float64))).sum().backward()
    _close(ours, tx.grad.numpy(), tol)
    # only x is saved for the backward pass (autodiff keeps five intermediates)
    assert len(_residuals(gelu_tanh, x)) == 1 and "from the argument" in _residuals(gelu_tanh, x)[0]
    assert len(_residuals(lambda v: jax.nn.gelu(v, approximate=True), x)) > 1


# n_out 5 narrows (12 -> 5: the backward pass transposes the output gradient, x is saved as it is),
# n_out 20 widens (the forward pass saves x transposed)
@pytest.mark.parametrize("n_out", [5, 20])
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_dense_gradients_equal_autodiff(dtype, tol, n_out):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 7, 12)), dtype)
    kernels = [jnp.asarray(rng.standard_normal((12, n_out)), dtype) for _ in range(3)]
    bias = jnp.asarray(rng.standard_normal(n_out), jnp.float32)

    def plain(x, k, b=None):
        y = jnp.dot(x, k, preferred_element_type=jnp.float32)
        return y if b is None else y + b

    np.testing.assert_array_equal(dense(x, kernels[0], bias), plain(x, kernels[0], bias))
    _close(_grads(dense, x, kernels[0], bias), _grads(plain, x, kernels[0], bias), tol)
    _close(_grads(dense, x, kernels[0]), _grads(plain, x, kernels[0]), tol)
    _close(jax.jit(_grads, static_argnums=0)(dense, x, kernels[0], bias), _grads(plain, x, kernels[0], bias), tol)
    # one saved input per layer, transposed only for the widening layer
    saved = [r for r in _residuals(lambda x, k: dense(x, k, bias), x, kernels[0]) if "[2,7,12]" in r or "[2,12,7]" in r]
    assert len(saved) == 1 and ("transpose" in saved[0]) == (n_out > 12), saved

    # three layers reading one x through one shared x_t: the same gradients, one saved transposed input
    def one_xt(x, *ks):
        x_t = transpose_tokens(x)
        return sum(jnp.sum(jnp.sin(dense(x, k, x_t=x_t))) for k in ks)

    def one_xt_plain(x, *ks):
        return sum(jnp.sum(jnp.sin(plain(x, k))) for k in ks)

    _close(
        jax.grad(one_xt, argnums=(0, 1, 2, 3))(x, *kernels),
        jax.grad(one_xt_plain, argnums=(0, 1, 2, 3))(x, *kernels),
        tol,
    )
    res = _residuals(one_xt, x, *kernels)
    assert sum("transpose" in r for r in res) == 1, res
    # frozen kernels (LoRA): only x is differentiated and no transposed input is kept
    assert not any("transpose" in r for r in _residuals(lambda x: one_xt(x, *kernels), x))


def test_backward_mode_follows_the_backend_and_can_be_forced():
    assert cpu_tuned_backward("cpu") and not cpu_tuned_backward("tpu") and not cpu_tuned_backward("gpu")
    with backward_passes("autodiff"):
        assert not cpu_tuned_backward("cpu")
    with backward_passes("cpu_tuned"):
        assert cpu_tuned_backward("tpu")
    assert cpu_tuned_backward("cpu")  # restored on exit
    with pytest.raises(ValueError, match="backward mode must be one of"):
        with backward_passes("fast"):
            pass


def test_autodiff_mode_traces_plain_code_with_equal_gradients():
    """Under "autodiff" no hand-written VJP is traced; every layer's gradients equal the CPU-tuned ones."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((1, 9, 12)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((12, 20)), jnp.float32)
    s = jnp.asarray(rng.standard_normal((1, 1, 20)), jnp.float32)
    scale = jnp.asarray(rng.standard_normal(20), jnp.float32)

    def block(x, k, s, scale):
        h = gelu_tanh(dense(x, k))
        return mul_broadcast(layer_norm(h, 1e-6), 1.0 + s) + rms_norm(h, 1e-6, scale)

    grads = {}
    for mode in ("cpu_tuned", "autodiff"):
        with backward_passes(mode):
            jaxpr = str(
                jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(block(*a) ** 2), argnums=(0, 1, 2, 3)))(x, k, s, scale)
            )
            assert ("custom_vjp" in jaxpr) == (mode == "cpu_tuned"), mode
            grads[mode] = _grads(block, x, k, s, scale)
    _close(grads["autodiff"], grads["cpu_tuned"], 1e-5)
