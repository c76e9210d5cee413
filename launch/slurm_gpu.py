"""Submit `launch/slurm_gpu.sbatch` (multi-node GPU training) with the node count, GPUs and limits given here.

    python launch/slurm_gpu.py --nodes 4 --gpus-per-node 8 --partition gpu --time 12:00:00 \
        --venv /shared/venvs/trackedit -- --config wan1_3b_stage1 --workdir /shared/runs/s1

Everything after `--` goes to `trackedit train`. `--dry-run` prints the sbatch command instead of running it.
Exit code: sbatch's.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().with_name("slurm_gpu.sbatch")


def sbatch_command(
    train_args: list[str],
    *,
    nodes: int,
    gpus_per_node: int,
    procs_per: str = "gpu",
    cpus_per_task: int | None = None,
    partition: str | None = None,
    account: str | None = None,
    time: str | None = None,
    job_name: str = "trackedit",
    venv: str | None = None,
    script: str | pathlib.Path = SCRIPT,
) -> list[str]:
    """The `sbatch` argv that runs `trackedit train TRAIN_ARGS` on `nodes` x `gpus_per_node` GPUs, one JAX
    process per GPU (`procs_per="gpu"`) or per node (`"node"`)."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"--nodes and --gpus-per-node must be >= 1; got {nodes} and {gpus_per_node}")
    if procs_per not in ("gpu", "node"):
        raise ValueError(f"--procs-per must be gpu or node; got {procs_per!r}")
    if not train_args:
        raise ValueError("give the trackedit train arguments after -- (--config ... --workdir ...)")
    tasks = gpus_per_node if procs_per == "gpu" else 1
    cmd = [
        "sbatch",
        f"--job-name={job_name}",
        f"--nodes={nodes}",
        f"--ntasks-per-node={tasks}",
        f"--gpus-per-node={gpus_per_node}",
    ]
    if cpus_per_task:
        cmd.append(f"--cpus-per-task={cpus_per_task}")
    for flag, value in (("partition", partition), ("account", account), ("time", time)):
        if value:
            cmd.append(f"--{flag}={value}")
    export = f"ALL,PROCS_PER={procs_per}" + (f",TRACKEDIT_VENV={venv}" if venv else "")
    cmd.append(f"--export={export}")
    return [*cmd, str(script), *train_args]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--procs-per", choices=("gpu", "node"), default="gpu", help="one JAX process per GPU or per node")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time", help="wall-clock limit, e.g. 12:00:00")
    p.add_argument("--job-name", default="trackedit")
    p.add_argument("--venv", help="venv on the nodes with trackedit_jax and jax[cuda] (default: trackedit on PATH)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch command, run nothing")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="trackedit train arguments, after --")
    args = p.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    try:
        cmd = sbatch_command(
            train_args,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            procs_per=args.procs_per,
            cpus_per_task=args.cpus_per_task,
            partition=args.partition,
            account=args.account,
            time=args.time,
            job_name=args.job_name,
            venv=args.venv,
        )
    except ValueError as e:
        p.error(str(e))
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
