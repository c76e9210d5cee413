"""The hand-written backward passes of the float32 norms and broadcast products equal plain autodiff."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trackedit_jax.models.layers import layer_norm, mul_broadcast, rms_norm


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


# batch 1 (the unit axis that triggers XLA's slow multiply-reduce), batch 3, and a 2-D input
@pytest.mark.parametrize("shape", [(1, 37, 24), (3, 5, 16), (11, 8)])
def test_norm_gradients_equal_autodiff(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
    scale, bias = (jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32) for _ in range(2))
    _close(layer_norm(x, 1e-6), _plain_layer_norm(x, 1e-6), 1e-6)
    _close(_grads(lambda x: layer_norm(x, 1e-6), x), _grads(lambda x: _plain_layer_norm(x, 1e-6), x))
    _close(_grads(lambda x, s, b: layer_norm(x, 1e-3, s, b), x, scale, bias),
           _grads(lambda x, s, b: _plain_layer_norm(x, 1e-3, s, b), x, scale, bias))
    _close(_grads(lambda x, s: rms_norm(x, 1e-5, s), x, scale), _grads(lambda x, s: _plain_rms_norm(x, 1e-5, s), x, scale))


@pytest.mark.parametrize("x_shape, s_shape", [((1, 9, 6), (1, 1, 6)), ((2, 9, 6), (2, 1, 6)), ((2, 9, 6), (6,)),
                                              ((2, 9, 6), (2, 9, 1)), ((4, 6), (1, 6))])
def test_mul_broadcast_gradients_equal_autodiff(x_shape, s_shape):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    s = jnp.asarray(rng.standard_normal(s_shape), jnp.float32)
    np.testing.assert_array_equal(mul_broadcast(x, s), x * s)
    _close(_grads(mul_broadcast, x, s), _grads(jnp.multiply, x, s), 1e-6)
