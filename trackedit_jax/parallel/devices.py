"""Accelerator kinds the planner sizes for: memory per device and dense bf16 peak FLOP/s.

One table, used by `trackedit plan --device KIND` (does a step fit, how long does it take at a given
MFU). Figures are the vendors' per-chip specifications: HBM per chip (TPU v5p 95 GiB, v6e 32 GiB;
NVIDIA H100 SXM 80 GB, H200 141 GB, A100 80 GB) and dense (not sparse) bf16 matmul peak.
"""

from __future__ import annotations

import dataclasses

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class DeviceKind:
    """name: the `--device` value; hbm_bytes: memory per device; peak_bf16_flops: dense bf16 FLOP/s per device."""

    name: str
    description: str
    hbm_bytes: int
    peak_bf16_flops: float


DEVICE_KINDS: dict[str, DeviceKind] = {
    d.name: d
    for d in (
        DeviceKind("v5p", "TPU v5p chip", 95 * GIB, 459e12),
        DeviceKind("v6e", "TPU v6e (Trillium) chip", 32 * GIB, 918e12),
        DeviceKind("h100", "NVIDIA H100 SXM", 80 * GIB, 989e12),
        DeviceKind("h200", "NVIDIA H200 SXM", 141 * GIB, 989e12),
        DeviceKind("a100", "NVIDIA A100 SXM 80GB", 80 * GIB, 312e12),
    )
}


def device_kind(name: str) -> DeviceKind:
    """The `DeviceKind` called `name` (case-insensitive); ValueError naming the known kinds otherwise."""
    kind = DEVICE_KINDS.get(str(name).lower())
    if kind is None:
        raise ValueError(f"--device {name!r} is not a known kind; known: {', '.join(DEVICE_KINDS)}")
    return kind
