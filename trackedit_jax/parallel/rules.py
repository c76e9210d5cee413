"""The ONE logical-axis rules table of the project.

Modules name the axes of their parameters and activations logically (``("embed", "mlp")``);
this table maps those names onto the physical mesh axes ``(data, fsdp, context, tensor)``.
Nothing else in the code base mentions mesh axes for parameters or activations.

Parameters (FSDP + tensor parallel):
  layers   stacked-block axis of ``nnx.scan`` -> replicated (each device holds every layer's shard)
  embed    model width d                      -> fsdp
  mlp      FFN hidden width                   -> tensor
  heads    fused heads*head_dim of q/k/v/o    -> tensor
  kv, conv, patch, lora, norm, text          -> replicated
Activations:
  act_batch    batch                          -> (data, fsdp)
  act_length   token sequence                 -> context
  act_heads    attention heads                -> tensor
  act_embed, act_kv, act_mlp                  -> replicated (act_mlp -> tensor)
"""
from __future__ import annotations

from typing import Sequence

import jax
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "context", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("conv", None),
    ("patch", None),
    ("lora", None),
    ("norm", None),
    ("text", None),
    ("vocab", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", "context"),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_embed", None),
    ("act_kv", None),
)

_RULES = dict(LOGICAL_AXIS_RULES)


def logical_to_mesh_spec(logical_axes: Sequence[str | None]) -> P:
    """Map logical axis names (None = replicated) to a `PartitionSpec` over the mesh axes."""
    out = []
    for name in logical_axes:
        if name is None:
            out.append(None)
        elif name in _RULES:
            out.append(_RULES[name])
        else:
            raise ValueError(f"unknown logical axis {name!r}; known: {sorted(_RULES)}")
    return P(*out)


def _current_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def activation_spec(shape: Sequence[int], logical_axes: Sequence[str | None], mesh) -> P:
    """The `PartitionSpec` `shard_activation` applies to an array of `shape` on `mesh`.

    Mesh axes of size 1 are dropped, and so is a dimension's whole entry when its axes do not divide it.
    """
    if len(shape) != len(logical_axes):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match array rank {len(shape)}")
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    spec = []
    for dim, entry in zip(shape, logical_to_mesh_spec(logical_axes)):
        axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
        axes = tuple(a for a in axes if a in sizes and sizes[a] > 1)
        total = 1
        for a in axes:
            total *= sizes[a]
        if not axes or dim % total != 0:
            spec.append(None)
        else:
            spec.append(axes if len(axes) > 1 else axes[0])
    return P(*spec)


def shard_activation(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names when a mesh is set (``jax.set_mesh``); else identity.

    Mesh axes of size 1 and axes that do not divide the array dimension are dropped, so the same
    model code runs unchanged on 1 device, on a simulated mesh and on a pod.
    """
    mesh = _current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, activation_spec(x.shape, logical_axes, mesh))


def partitioned(initializer, *logical_axes: str | None):
    """Wrap an NNX initializer so the parameter carries logical axis names (its sharding metadata).

    Parameters are created unsharded (eager sharding off: modules must build without a mesh);
    `parallel.sharding.state_shardings` turns the names into shardings when a mesh is used.
    """
    from flax import nnx

    return nnx.with_partitioning(initializer, tuple(logical_axes), eager_sharding=False)
