"""Multi-process start-up: `jax.distributed.initialize` when a run spans several processes.

Detection order:
  1. explicit settings (`coordinator_address`, `num_processes`, `process_id`; e.g. from CLI flags),
  2. TPU pods and Slurm, which `jax.distributed.initialize()` auto-detects from their environment
     (TPU worker metadata; SLURM_JOB_ID with SLURM_NTASKS > 1); TRACKEDIT_DISTRIBUTED=1 (set by
     launch/tpu_pod.py) calls it wherever the variables checked here are absent, e.g. a shell opened
     by `gcloud compute tpus tpu-vm ssh`, where the pod's layout is in the TPU VM metadata,
  3. otherwise a single process: nothing to do.
Must run before anything touches a JAX backend.
"""

from __future__ import annotations

import os

import jax

_initialized = False


def _slurm_multi_task() -> bool:
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def _requested() -> bool:
    return os.environ.get("TRACKEDIT_DISTRIBUTED", "") == "1"


def _tpu_pod() -> bool:
    # Cloud TPU VMs of a multi-host slice expose the worker list; single-host TPUs need no init.
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: list[int] | None = None,
) -> bool:
    """Initialise multi-process JAX if needed; returns True when running multi-process.

    Explicit arguments win; with none, TPU pods and Slurm jobs are detected automatically.
    On CPU, cross-process collectives use gloo.
    """
    global _initialized
    if _initialized:
        return jax.process_count() > 1
    explicit = coordinator_address is not None or num_processes is not None
    if explicit:
        if coordinator_address is None or num_processes is None or process_id is None:
            raise ValueError(
                "multi-process launch needs coordinator_address, num_processes and process_id together; got "
                f"{coordinator_address=}, {num_processes=}, {process_id=}"
            )
        if num_processes > 1:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(
                coordinator_address=coordinator_address,
                num_processes=num_processes,
                process_id=process_id,
                local_device_ids=local_device_ids,
            )
            _initialized = True
    elif _requested() or _tpu_pod() or _slurm_multi_task():
        jax.distributed.initialize()
        _initialized = True
    return _initialized and jax.process_count() > 1


def shutdown() -> None:
    global _initialized
    if _initialized:
        jax.distributed.shutdown()
        _initialized = False
