"""Shardings for parameters, optimiser state and batches, derived from the one rules table.

Parameters carry logical axis names as NNX metadata (`rules.param(rngs, init, shape, ("embed", "mlp"), dtype)`);
`state_shardings` turns an (abstract) NNX state into a matching tree of `NamedSharding`s through
`rules.fit_spec`, the same rule activations use: a mesh axis is dropped for a dimension it does not
divide (e.g. 12 heads on a tensor axis of 8), so every config runs on every mesh; what was dropped is
reported by `describe_shardings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trackedit_jax.parallel.rules import fit_spec, logical_axes_of, logical_to_mesh_spec


def logical_sharding(logical_axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    """NamedSharding for an array of `shape` annotated with logical axis names (None: replicated)."""
    if not logical_axes:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, fit_spec(shape, logical_axes, mesh))


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """A tree of `NamedSharding` matching `state` (an nnx.State or any tree of nnx.Variables/arrays)."""

    def one(x):
        if isinstance(x, nnx.Variable):
            return x.replace(logical_sharding(logical_axes_of(x), x.shape, mesh))
        if hasattr(x, "shape"):
            return NamedSharding(mesh, P())
        return None

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch arrays of rank `ndim`: leading axis split like the "act_batch" activations (data, fsdp),
    the rest replicated. Not fitted: the batch size must divide by the data-parallel size."""
    return NamedSharding(mesh, logical_to_mesh_spec(("act_batch",) + (None,) * (ndim - 1)))


def describe_shardings(state: Any, shardings: Any) -> list[str]:
    """Human-readable lines `path shape -> spec` (for logs and the AOT planner)."""
    lines = []
    flat_s = dict(jax.tree_util.tree_flatten_with_path(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        sh = flat_s.get(path)
        spec = sh.spec if isinstance(sh, NamedSharding) else None
        lines.append(f"{jax.tree_util.keystr(path)} {tuple(getattr(leaf, 'shape', ()))} -> {spec}")
    return lines
