"""Device meshes, the one logical-axis rules table, sharding helpers and multi-host start-up."""

from trackedit_jax.parallel.mesh import data_parallel_size, make_mesh, resolve_mesh_shape
from trackedit_jax.parallel.rules import (
    LOGICAL_AXIS_RULES,
    fit_spec,
    logical_axes_of,
    logical_to_mesh_spec,
    mesh_axes,
    param,
    shard_activation,
)
from trackedit_jax.parallel.sharding import batch_sharding, describe_shardings, logical_sharding, state_shardings

__all__ = [
    "LOGICAL_AXIS_RULES",
    "fit_spec",
    "logical_axes_of",
    "logical_to_mesh_spec",
    "mesh_axes",
    "param",
    "shard_activation",
    "make_mesh",
    "resolve_mesh_shape",
    "data_parallel_size",
    "state_shardings",
    "logical_sharding",
    "batch_sharding",
    "describe_shardings",
]
