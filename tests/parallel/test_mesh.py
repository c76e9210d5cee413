"""Mesh construction, parameter shardings from NNX partitioning metadata and activation constraints
on 8 simulated CPU devices. Layouts are checked on the real arrays (shapes of the addressable shards)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from trackedit_jax.parallel import (
    describe_shardings,
    make_mesh,
    param,
    resolve_mesh_shape,
    shard_activation,
    state_shardings,
)
from trackedit_jax.parallel.rules import MESH_AXES, activation_spec

# ---------------------------------------------------------------------------------------------------
# resolve_mesh_shape / make_mesh


@pytest.mark.parametrize(
    "sizes,shape",
    [
        ({"data": 2, "fsdp": -1}, (2, 4, 1, 1)),
        ({"fsdp": 2, "context": 4}, (1, 2, 4, 1)),
        ({"data": -1, "context": 2, "tensor": 2}, (2, 1, 2, 2)),
        ({"tensor": -1}, (1, 1, 1, 8)),
        ({}, None),  # nothing given: 1x1x1x1 does not cover 8 devices
    ],
)
def test_resolve_mesh_shape(sizes, shape):
    if shape is None:
        with pytest.raises(ValueError, match="has 1 devices but 8 are available"):
            resolve_mesh_shape(sizes, 8)
    else:
        assert resolve_mesh_shape(sizes, 8) == shape
        assert int(np.prod(shape)) == 8


@pytest.mark.parametrize(
    "sizes,message",
    [
        ({"pipeline": 2, "data": 4}, r"unknown axis \['pipeline'\]"),
        ({"data": -1, "fsdp": -1}, r"only one axis may be -1.*'data', 'fsdp'"),
        ({"context": 0, "data": 8}, r"mesh\.context must be a positive size or -1; got 0"),
        ({"tensor": -3, "data": 8}, r"mesh\.tensor must be a positive size"),
        ({"data": 3, "fsdp": -1}, r"mesh\.fsdp=-1: the other axes multiply to 3, which does not divide the 8"),
        ({"data": 2, "fsdp": 2}, r"data=2, fsdp=2, context=1, tensor=1\) has 4 devices but 8"),
    ],
)
def test_resolve_mesh_shape_errors_name_the_field(sizes, message):
    with pytest.raises(ValueError, match=message):
        resolve_mesh_shape(sizes, 8)


def test_make_mesh_axes_types_and_devices():
    mesh = make_mesh({"data": 2, "fsdp": -1, "context": 2})
    assert mesh.axis_names == MESH_AXES == ("data", "fsdp", "context", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "context": 2, "tensor": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 4
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
    sub = make_mesh({"fsdp": -1}, devices=jax.devices()[:4])
    assert dict(sub.shape) == {"data": 1, "fsdp": 4, "context": 1, "tensor": 1}
    with pytest.raises(ValueError, match="mesh.data=-1"):
        make_mesh({"data": -1, "tensor": 3})


# ---------------------------------------------------------------------------------------------------
# parameter shardings from NNX metadata


class _Block(nnx.Module):
    def __init__(self, rngs):
        init = nnx.initializers.normal(0.02)
        self.up = param(rngs, init, (16, 32), ("embed", "mlp"), jnp.float32)
        self.odd = param(rngs, init, (6, 3), ("embed", "mlp"), jnp.float32)  # tensor 2 does not divide 3
        self.qkv = param(rngs, init, (16, 24), ("embed", "heads"), jnp.float32)
        self.scale = nnx.Param(jnp.ones((16,)))  # no metadata: replicated
        self.norm = param(rngs, nnx.initializers.ones, (16,), ("norm",), jnp.float32)

    def __call__(self, x):
        h = jax.nn.gelu(x @ self.up[...])
        return x * self.scale[...] + h @ self.up[...].T


def _shard_shapes(arr):
    return sorted({tuple(s.data.shape) for s in arr.addressable_shards})


def test_state_shardings_follow_the_rules_table():
    model = _Block(nnx.Rngs(0))  # no mesh: eager sharding is off, so this builds anywhere
    state = nnx.state(model, nnx.Param)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = state_shardings(state, mesh)
    specs = {k: s.spec for k, s in nnx.to_flat_state(shardings)}
    assert specs[("up",)] == P("fsdp", "tensor")
    assert specs[("odd",)] == P("fsdp", None)
    assert specs[("qkv",)] == P("fsdp", "tensor")
    assert specs[("scale",)] == P()
    assert specs[("norm",)] == P(None)

    placed = jax.device_put(state, shardings)
    flat = dict(nnx.to_flat_state(placed))
    assert _shard_shapes(flat[("up",)][...]) == [(8, 16)]
    assert _shard_shapes(flat[("odd",)][...]) == [(3, 3)]
    assert _shard_shapes(flat[("scale",)][...]) == [(16,)]
    np.testing.assert_array_equal(np.asarray(flat[("up",)][...]), np.asarray(model.up[...]))

    lines = describe_shardings(state, shardings)
    assert any("odd" in line and "(6, 3)" in line and "P('fsdp', None)" in line for line in lines), lines


def test_sharded_model_runs_under_jit_with_state_shardings():
    model = _Block(nnx.Rngs(1))
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    x = jax.random.normal(jax.random.key(2), (8, 16))

    @jax.jit
    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    with jax.set_mesh(mesh):
        got = apply(state, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(model(x)), atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# activations


def _constrained_spec(mesh, shape, axes):
    @jax.jit
    def f(x):
        return shard_activation(x * 2.0, axes)

    with jax.set_mesh(mesh):
        out = f(jnp.ones(shape))
    spec = tuple(out.sharding.spec)
    return P(*spec, *([None] * (len(shape) - len(spec)))), _shard_shapes(out)


def test_shard_activation_drops_axes_that_do_not_divide():
    mesh = make_mesh({"data": 2, "fsdp": 2, "context": 2})
    tokens = ("act_batch", "act_length", "act_embed")
    spec, shards = _constrained_spec(mesh, (4, 8, 6), tokens)
    assert spec == P(("data", "fsdp"), "context", None) and shards == [(1, 4, 6)]
    spec, shards = _constrained_spec(mesh, (3, 8, 6), tokens)  # batch 3: (data, fsdp) dropped
    assert spec == P(None, "context", None) and shards == [(3, 4, 6)]
    spec, shards = _constrained_spec(mesh, (4, 7, 6), tokens)  # 7 tokens: context dropped
    assert spec == P(("data", "fsdp"), None, None) and shards == [(1, 7, 6)]
    # size-1 axes never appear: tensor is 1 here
    assert activation_spec((4, 8, 2, 5), ("act_batch", "act_length", "act_heads", None), mesh) == P(
        ("data", "fsdp"), "context", None, None
    )
    # only one axis of the pair is > 1: a single name, not a tuple
    mesh2 = make_mesh({"fsdp": 4, "tensor": 2})
    assert activation_spec((4, 6, 4), ("act_batch", "act_length", "act_heads"), mesh2) == P("fsdp", None, "tensor")


def test_shard_activation_without_mesh_is_identity_and_checks_rank():
    x = jnp.arange(12.0).reshape(3, 4)
    assert shard_activation(x, ("act_batch", "act_embed")) is x
    with jax.set_mesh(make_mesh({"data": 8})):
        with pytest.raises(ValueError, match="do not match array rank 2"):
            shard_activation(x, ("act_batch", "act_length", "act_embed"))
        with pytest.raises(ValueError, match="unknown logical axis 'bogus'"):
            shard_activation(x, ("act_batch", "bogus"))
