"""Shardings for parameters, optimiser state and batches, derived from the one rules table.

Parameters carry logical axis names as NNX metadata (`nnx.with_partitioning(init, ("embed", "mlp"))`);
`state_shardings` turns an (abstract) NNX state into a matching tree of `NamedSharding`s. A mesh axis
is dropped for a dimension it does not divide (e.g. 12 heads on a tensor axis of 8), so every
config runs on every mesh; what was dropped is reported by `describe_shardings`.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from trackedit_jax.parallel.rules import logical_to_mesh_spec


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    out = []
    used: set[str] = set()
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
        axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
        # keep the longest prefix of axes whose product divides the dimension
        keep: list[str] = []
        prod = 1
        for a in axes:
            if dim % (prod * mesh.shape[a]) == 0:
                keep.append(a)
                prod *= mesh.shape[a]
        used.update(keep)
        out.append(None if not keep else (keep[0] if len(keep) == 1 else tuple(keep)))
    return P(*out)


def logical_sharding(logical_axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    """NamedSharding for an array of `shape` annotated with logical axis names (None: replicated)."""
    if not logical_axes:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, _fit(logical_to_mesh_spec(logical_axes), shape, mesh))


def _variable_axes(v: nnx.Variable):
    meta = v.get_metadata()
    return meta.get("out_sharding") or meta.get("sharding_names")


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """A tree of `NamedSharding` matching `state` (an nnx.State or any tree of nnx.Variables/arrays)."""

    def one(x):
        if isinstance(x, nnx.Variable):
            return x.replace(logical_sharding(_variable_axes(x), x.shape, mesh))
        if hasattr(x, "shape"):
            return NamedSharding(mesh, P())
        return None

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch arrays: leading axis split over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def describe_shardings(state: Any, shardings: Any) -> list[str]:
    """Human-readable lines `path shape -> spec` (for logs and the AOT planner)."""
    lines = []
    flat_s = dict(jax.tree_util.tree_flatten_with_path(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        sh = flat_s.get(path)
        spec = sh.spec if isinstance(sh, NamedSharding) else None
        lines.append(f"{jax.tree_util.keystr(path)} {tuple(getattr(leaf, 'shape', ()))} -> {spec}")
    return lines
