"""Ahead-of-time planning of a training step: lower and compile it for a mesh without any weights or
data, and report per-device memory and FLOPs.

On this CPU machine a pod is simulated with `jax_num_cpu_devices` host devices; the same code on a
real TPU/GPU host compiles for the real devices. What is compiled is `TrainingSetup.jit_step`, the step
`train` runs, on `TrainingSetup.abstract_arguments`: the batch holds precomputed latents and text
embeddings (the frozen VAE encode is planned separately), which is how the paper-size run is fed.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx
from ml_collections import ConfigDict

from trackedit_jax.parallel.mesh import make_mesh
from trackedit_jax.train import build
from trackedit_jax.train.setup import TrainingSetup


@dataclasses.dataclass
class StepPlan:
    """Per-device figures of the compiled training step (bytes, FLOPs)."""

    mesh: dict
    num_devices: int
    tokens_per_example: int
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    generated_code_bytes: int
    flops: float | None
    compile_seconds: float

    @property
    def peak_bytes(self) -> int:
        """Arguments + temporaries + outputs not aliased to (donated) arguments."""
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

    def table(self) -> str:
        gib = 1024**3
        rows = [
            ("mesh", str(self.mesh)),
            ("devices", str(self.num_devices)),
            ("tokens per example (paired)", f"{self.tokens_per_example:,}"),
            ("arguments per device", f"{self.argument_bytes / gib:.3f} GiB"),
            ("temporaries per device", f"{self.temp_bytes / gib:.3f} GiB"),
            ("outputs per device", f"{self.output_bytes / gib:.3f} GiB (aliased {self.alias_bytes / gib:.3f})"),
            ("peak estimate per device", f"{self.peak_bytes / gib:.3f} GiB"),
            ("FLOPs per device per step", "n/a" if self.flops is None else f"{self.flops:.3e}"),
            ("compile time", f"{self.compile_seconds:.1f} s"),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def plan_training_step(config: ConfigDict) -> StepPlan:
    """Lower and compile the training step of `config` for all visible devices; nothing is allocated."""
    import time

    build.validate_config(config, planning=True)
    mesh = make_mesh(dict(config.mesh))
    setup = TrainingSetup.create(config, mesh)
    vae_graphdef, abs_vae = nnx.split(build.abstract_vae(config))
    jitted = setup.jit_step(vae_graphdef)  # the very step `train` runs
    args = setup.abstract_arguments(abs_vae)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    tokens = 2 * build.tokens_per_clip(config)
    return StepPlan(
        mesh=dict(mesh.shape),
        num_devices=mesh.size,
        tokens_per_example=int(tokens),
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        generated_code_bytes=int(mem.generated_code_size_in_bytes),
        flops=float(cost["flops"]) if cost and "flops" in cost else None,
        compile_seconds=seconds,
    )
