"""Device meshes, the one logical-axis rules table, sharding helpers and multi-host start-up."""

from trackedit_jax.parallel.rules import LOGICAL_AXIS_RULES, logical_to_mesh_spec, shard_activation

__all__ = ["LOGICAL_AXIS_RULES", "logical_to_mesh_spec", "shard_activation"]
