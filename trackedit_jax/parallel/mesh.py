"""Device meshes with axes (data, fsdp, context, tensor) built from configuration.

Sizes come from `config.mesh` (`data`, `fsdp`, `context`, `tensor`); one of them may be -1 to take
all remaining devices. Axis types are Auto (classic GSPMD propagation), so sharding constraints by
logical name (`parallel.rules`) work on 1 device, on simulated CPU meshes and on pods alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from trackedit_jax.parallel.rules import MESH_AXES, mesh_axes


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes for MESH_AXES with one -1 filled in; errors name the field.

    Raises:
      ValueError: unknown/missing axis, more than one -1, non-positive sizes, or a product that does
        not equal the number of devices.
    """
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh: unknown axis {sorted(unknown)}; axes are {MESH_AXES}")
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    auto = [a for a, s in zip(MESH_AXES, shape) if s == -1]
    if len(auto) > 1:
        raise ValueError(f"mesh: only one axis may be -1 (auto); got {auto}")
    for a, s in zip(MESH_AXES, shape):
        if s == 0 or s < -1:
            raise ValueError(f"mesh.{a} must be a positive size or -1; got {s}")
    fixed = math.prod(s for s in shape if s != -1)
    if auto:
        if num_devices % fixed:
            raise ValueError(
                f"mesh.{auto[0]}=-1: the other axes multiply to {fixed}, which does not divide "
                f"the {num_devices} devices"
            )
        shape[MESH_AXES.index(auto[0])] = num_devices // fixed
    elif fixed != num_devices:
        desc = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape))
        raise ValueError(f"mesh ({desc}) has {fixed} devices but {num_devices} are available")
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` over `devices` (default: all) with axes MESH_AXES and Auto axis types."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(sizes, len(devices))
    try:
        # Topology-aware ordering on TPU/GPU; falls back to plain order for CPU/simulated devices.
        dev_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:
        dev_array = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(dev_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
    """Number of ways the batch is split: the product of the "act_batch" mesh axes (data x fsdp)."""
    return math.prod(mesh.shape[a] for a in mesh_axes("act_batch"))


def parse_mesh_spec(text: str, *, name: str = "--mesh") -> dict[str, int]:
    """`"fsdp=8,context=2"` -> {"data": 1, "fsdp": 8, "context": 2, "tensor": 1} (unnamed axes 1; one
    axis may be -1). ValueError naming `name` on a malformed entry or an unknown axis."""
    sizes = dict.fromkeys(MESH_AXES, 1)
    for entry in filter(None, (e.strip() for e in str(text).split(","))):
        axis, sep, value = entry.partition("=")
        axis = axis.strip()
        if not sep or axis not in MESH_AXES:
            raise ValueError(f"{name}: expected AXIS=SIZE entries with AXIS in {MESH_AXES}; got {entry!r}")
        try:
            sizes[axis] = int(value)
        except ValueError:
            raise ValueError(f"{name}: {axis} must be an integer; got {value!r}") from None
        if sizes[axis] == 0 or sizes[axis] < -1:
            raise ValueError(f"{name}: {axis} must be a positive size or -1; got {sizes[axis]}")
    return sizes
