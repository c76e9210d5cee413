"""Train on a Cloud TPU VM pod: create (or reuse) the pod with gcloud, install trackedit_jax on every
worker, and run the same `trackedit train` on all of them with the workdir on a gs:// bucket.

    python launch/tpu_pod.py --name trackedit-v5p --zone us-east5-a --accelerator-type v5p-32 \
        --package "trackedit_jax @ git+https://github.com/ORG/trackedit_jax.git@main" \
        --workdir gs://my-bucket/runs/s1 -- --config wan1_3b_stage1 --config.data.train_path=...

Everything after `--` goes to `trackedit train`. Steps (each one gcloud command; `--dry-run` prints them
and runs nothing):
  1. `tpu-vm describe` the pod; `tpu-vm create` it when it does not exist (`--skip-create`: must exist); a pod
     that exists but is not READY (creating, preempted, ...) stops the launcher with exit code 2;
  2. `tpu-vm ssh --worker=all`: Python 3.12 venv (uv), jax[tpu], the package, gcsfs (`--skip-install`: skip);
  3. `tpu-vm ssh --worker=all`: `trackedit train ... --workdir gs://...` with TRACKEDIT_DISTRIBUTED=1, so
     every worker calls `jax.distributed.initialize()`, which reads the pod's layout from the TPU VM metadata.
Exit code: the first failing gcloud command's, else 0.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

VENV = "$HOME/trackedit-venv"
UV = "$HOME/.local/bin/uv"


def _gcloud(verb: str, name: str, zone: str, project: str | None) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, name, f"--zone={zone}"]
    return cmd + ([f"--project={project}"] if project else [])


def describe_command(name: str, zone: str, project: str | None = None) -> list[str]:
    """Exits 0 when the pod exists."""
    return _gcloud("describe", name, zone, project) + ["--format=value(state)"]


def create_command(
    name: str, zone: str, accelerator_type: str, version: str, project: str | None = None, spot: bool = False
) -> list[str]:
    return (
        _gcloud("create", name, zone, project)
        + [f"--accelerator-type={accelerator_type}", f"--version={version}"]
        + (["--spot"] if spot else [])
    )


def install_script(package: str, python: str = "3.12") -> str:
    """Shell run on every worker: uv, a Python `python` venv at ~/trackedit-venv, jax[tpu], the package
    (a pip requirement: `name @ git+URL@REF`, a wheel path, ...) and gcsfs (gs:// workdirs)."""
    steps = [
        "set -euo pipefail",
        f"test -x {UV} || curl -LsSf https://astral.sh/uv/install.sh | sh",
        f"{UV} venv --allow-existing --python {python} {VENV}",
        f"{UV} pip install --python {VENV}/bin/python -U 'jax[tpu]' {shlex.quote(package)} gcsfs",
    ]
    return "; ".join(steps)


def train_script(workdir: str, train_args: list[str]) -> str:
    """Shell run on every worker: the same `trackedit train` everywhere, multi-process JAX switched on."""
    cmd = [f"{VENV}/bin/trackedit", "train", "--workdir", workdir, *train_args]
    # $VENV must expand on the worker, so it stays outside the quoting
    return "TRACKEDIT_DISTRIBUTED=1 " + cmd[0] + " " + shlex.join(cmd[1:])


def ssh_command(name: str, zone: str, script: str, project: str | None = None) -> list[str]:
    return _gcloud("ssh", name, zone, project) + ["--worker=all", f"--command={script}"]


def plan(args: argparse.Namespace, pod_exists: bool) -> list[list[str]]:
    """Every gcloud command after `describe`, in order, given whether the pod exists."""
    cmds = []
    if not pod_exists:
        if args.skip_create:
            raise SystemExit(f"tpu_pod: error: pod {args.name!r} not found in {args.zone} (--skip-create given)")
        cmds.append(create_command(args.name, args.zone, args.accelerator_type, args.version, args.project, args.spot))
    if not args.skip_install:
        cmds.append(ssh_command(args.name, args.zone, install_script(args.package, args.python), args.project))
    cmds.append(ssh_command(args.name, args.zone, train_script(args.workdir, args.train_args), args.project))
    return cmds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True, help="e.g. us-east5-a")
    p.add_argument("--project", help="GCP project (default: gcloud's)")
    p.add_argument("--accelerator-type", default="v5p-32", help="used when creating, e.g. v5p-32, v6e-16")
    p.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM runtime image, used when creating")
    p.add_argument("--spot", action="store_true", help="create a Spot pod (preemptible; training resumes)")
    p.add_argument("--skip-create", action="store_true", help="the pod must exist already")
    p.add_argument("--skip-install", action="store_true", help="the workers are already set up")
    p.add_argument(
        "--package",
        required=True,
        help="pip requirement for trackedit_jax on the workers: 'trackedit_jax @ git+https://HOST/REPO.git@REF', "
        "a wheel URL, or any other pip requirement",
    )
    p.add_argument("--python", default="3.12", help="Python of the workers' venv (uv installs it)")
    p.add_argument("--workdir", required=True, help="gs://BUCKET/PATH: checkpoints and metrics, seen by all workers")
    p.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="trackedit train arguments, after --")
    args = p.parse_args(argv)
    args.train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if not args.workdir.startswith("gs://") or len(args.workdir) <= len("gs://"):
        p.error(f"--workdir must be a gs:// URL every worker can reach; got {args.workdir!r}")
    if not any(a == "--config" or a.startswith("--config=") for a in args.train_args):
        p.error("give the trackedit train arguments after --, at least --config NAME")
    if any(a == "--workdir" or a.startswith("--workdir=") for a in args.train_args):
        p.error("pass --workdir to tpu_pod.py, not after --")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    describe = describe_command(args.name, args.zone, args.project)
    if args.dry_run:
        print(f"# exists?   {shlex.join(describe)}")
        for cmd in plan(args, pod_exists=False):
            print(shlex.join(cmd))
        return 0
    found = subprocess.run(describe, capture_output=True, text=True)
    exists = found.returncode == 0
    state = found.stdout.strip()
    if exists and state != "READY":
        print(
            f"tpu_pod: error: pod {args.name!r} exists in state {state or '?'}, not READY; wait, or delete it",
            file=sys.stderr,
        )
        return 2
    print(f"[tpu_pod] {args.name}: {'reusing the existing pod' if exists else 'creating the pod'}", flush=True)
    for cmd in plan(args, pod_exists=exists):
        print(f"[tpu_pod] {shlex.join(cmd)}", flush=True)
        code = subprocess.run(cmd).returncode
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
