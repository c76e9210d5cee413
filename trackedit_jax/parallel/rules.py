"""The ONE logical-axis rules table of the project, and the one way to use it.

Modules name the axes of their parameters and activations logically (``("embed", "mlp")``);
this table maps those names onto the physical mesh axes ``(data, fsdp, context, tensor)``.
Nothing else in the code base spells a mesh axis: other modules ask `mesh_axes(logical_name)`.

The one way to create a parameter is `param` (its logical names travel as the variable's
``out_sharding`` metadata, read back by `logical_axes_of`); the one way to turn logical names into a
`PartitionSpec` for a concrete shape and mesh is `fit_spec`, used for parameters and activations alike.

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

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]

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

# The mesh axes that context parallelism and tensor parallelism run over, read from the table: the
# axis that shards the token sequence and the one that shards attention heads.
CONTEXT_AXIS: str = _RULES["act_length"]
TENSOR_AXIS: str = _RULES["act_heads"]

# NNX variable metadata key that holds a parameter's logical axis names (one per dimension).
LOGICAL_AXES_KEY = "out_sharding"


def logical_to_mesh_spec(logical_axes: Sequence[str | None]) -> P:
    """Map logical axis names (None = replicated) to a `PartitionSpec` over the mesh axes, unfitted
    (no check that the mesh axes divide anything; see `fit_spec`)."""
    out = []
    for name in logical_axes:
        if name is None:
            out.append(None)
        elif name in _RULES:
            out.append(_RULES[name])
        else:
            raise ValueError(f"unknown logical axis {name!r}; known: {sorted(_RULES)}")
    return P(*out)


def mesh_axes(logical_name: str) -> tuple[str, ...]:
    """The mesh axes a logical name maps to, in order (empty: replicated), e.g. "act_batch" -> ("data", "fsdp")."""
    entry = logical_to_mesh_spec((logical_name,))[0]
    return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))


def fit_spec(shape: Sequence[int], logical_axes: Sequence[str | None], mesh) -> P:
    """The `PartitionSpec` of an array of `shape` with `logical_axes` (one per dimension) on `mesh`.

    The one fitting rule, for parameters and activations: per dimension, take its mesh axes from the
    table, drop those of size 1, those absent from the mesh and those an earlier dimension already uses;
    if the remaining axes' product does not divide the dimension, the dimension is replicated (the
    whole entry is dropped, not a part of it). So every config runs on every mesh (12 heads on tensor=8
    are replicated); `describe_shardings` reports the result.

    Args:
      shape: the array shape; logical_axes: names from `LOGICAL_AXIS_RULES` or None, len(shape) of them.
      mesh: a `Mesh` or `AbstractMesh`.
    Raises:
      ValueError: rank mismatch or an unknown logical name.
    """
    if len(shape) != len(logical_axes):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match array rank {len(shape)}")
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    used: set[str] = set()
    spec = []
    for dim, entry in zip(shape, logical_to_mesh_spec(logical_axes)):
        axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
        axes = tuple(a for a in axes if sizes.get(a, 1) > 1 and a not in used)
        total = 1
        for a in axes:
            total *= sizes[a]
        if not axes or dim % total:
            spec.append(None)
        else:
            used.update(axes)
            spec.append(axes if len(axes) > 1 else axes[0])
    return P(*spec)


def activation_spec(shape: Sequence[int], logical_axes: Sequence[str | None], mesh) -> P:
    """The `PartitionSpec` `shard_activation` applies to an array of `shape` on `mesh` (`fit_spec`)."""
    return fit_spec(shape, logical_axes, mesh)


def _current_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def shard_activation(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names when a mesh is set (``jax.set_mesh``); else identity.

    Mesh axes of size 1 and axes that do not divide the array dimension are dropped (`fit_spec`), so
    the same model code runs unchanged on 1 device, on a simulated mesh and on a pod.
    """
    mesh = _current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, activation_spec(x.shape, logical_axes, mesh))


def param(
    rngs: nnx.Rngs | None,
    init: Initializer,
    shape: Sequence[int],
    logical_axes: Sequence[str | None],
    dtype,
    kind: type[nnx.Variable] = nnx.Param,
) -> nnx.Variable:
    """The one way to create a parameter: `init(key, shape, dtype)` as an `nnx.Param` (or a subclass
    such as `nnx.LoRAParam`) carrying its logical axis names, one per dimension.

    Args:
      rngs: draws one key from its `params` stream; None draws nothing (for initialisers that ignore
        the key, e.g. ones/zeros, so that adding such a parameter does not shift later keys).
      init: an NNX/JAX initializer; shape: the parameter shape; dtype: the parameter dtype.
      logical_axes: names from `LOGICAL_AXIS_RULES` or None (replicated), len(shape) of them.
      kind: the variable type.
    Eager sharding is off: a model builds without a mesh (tests, conversion); `parallel.sharding`
    places the state onto a mesh through `fit_spec`. Raises ValueError on a rank mismatch or an
    unknown logical name.
    """
    axes = tuple(logical_axes)
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match parameter shape {tuple(shape)}")
    logical_to_mesh_spec(axes)  # unknown names fail here, at construction, not at placement
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return kind(init(key, tuple(shape), dtype), **{LOGICAL_AXES_KEY: axes}, eager_sharding=False)


def logical_axes_of(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a parameter was created with (`param`; the layer axis added by
    `nnx.vmap(transform_metadata=...)` included), or None when it has none (replicated)."""
    axes = variable.get_metadata().get(LOGICAL_AXES_KEY)
    return None if axes is None else tuple(axes)
