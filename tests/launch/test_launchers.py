"""The TPU pod and Slurm launchers in dry-run mode: the exact gcloud / sbatch / srun commands they would
run. The Slurm batch script itself runs under bash with a Slurm job's environment (and a stand-in
`scontrol` that lists the job's two hosts) and prints its srun command."""

import importlib.util
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[2] / "launch"


def _module(name):
    spec = importlib.util.spec_from_file_location(f"launch_{name}", LAUNCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tpu_pod = _module("tpu_pod")
slurm_gpu = _module("slurm_gpu")

PACKAGE = "trackedit_jax @ git+https://example.org/me/trackedit_jax.git@v0.1"
INSTALL = (
    "set -euo pipefail; test -x $HOME/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | sh; "
    "$HOME/.local/bin/uv venv --allow-existing --python 3.12 $HOME/trackedit-venv; "
    "$HOME/.local/bin/uv pip install --python $HOME/trackedit-venv/bin/python -U 'jax[tpu]' "
    "'trackedit_jax @ git+https://example.org/me/trackedit_jax.git@v0.1' gcsfs"
)
TRAIN = (
    "TRACKEDIT_DISTRIBUTED=1 $HOME/trackedit-venv/bin/trackedit train --workdir gs://bkt/runs/s1 "
    "--config wan1_3b_stage1 --config.mesh.fsdp=16 '--config.data.train_path=gs://bkt/shards/a b'"
)
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1", "--zone=us-east5-a", "--project=proj", "--worker=all"]


def _tpu_args(*extra):
    return [
        "--name=pod1",
        "--zone=us-east5-a",
        "--project=proj",
        "--accelerator-type=v5p-32",
        f"--package={PACKAGE}",
        "--workdir=gs://bkt/runs/s1",
        *extra,
        "--",
        "--config",
        "wan1_3b_stage1",
        "--config.mesh.fsdp=16",
        "--config.data.train_path=gs://bkt/shards/a b",
    ]


def test_tpu_pod_plan_creates_installs_and_trains_on_every_worker():
    args = tpu_pod.parse_args(_tpu_args("--spot"))
    assert tpu_pod.describe_command(args.name, args.zone, args.project) == [
        *["gcloud", "compute", "tpus", "tpu-vm", "describe", "pod1", "--zone=us-east5-a", "--project=proj"],
        "--format=value(state)",
    ]
    assert tpu_pod.plan(args, pod_exists=False) == [
        [
            *["gcloud", "compute", "tpus", "tpu-vm", "create", "pod1", "--zone=us-east5-a", "--project=proj"],
            *["--accelerator-type=v5p-32", "--version=tpu-ubuntu2204-base", "--spot"],
        ],
        [*SSH, f"--command={INSTALL}"],
        [*SSH, f"--command={TRAIN}"],
    ]
    # an existing pod is reused; --skip-install leaves only the training command
    assert tpu_pod.plan(args, pod_exists=True)[0] == [*SSH, f"--command={INSTALL}"]
    assert tpu_pod.plan(tpu_pod.parse_args(_tpu_args("--skip-install")), pod_exists=True) == [
        [*SSH, f"--command={TRAIN}"]
    ]
    with pytest.raises(SystemExit, match="not found"):
        tpu_pod.plan(tpu_pod.parse_args(_tpu_args("--skip-create")), pod_exists=False)


def test_tpu_pod_remote_commands_parse_back_to_the_train_arguments():
    """What each worker's shell receives splits into exactly `trackedit train` + the given arguments."""
    words = shlex.split(TRAIN)
    assert words[0] == "TRACKEDIT_DISTRIBUTED=1" and words[2:4] == ["train", "--workdir"]
    assert words[5:] == [
        "--config",
        "wan1_3b_stage1",
        "--config.mesh.fsdp=16",
        "--config.data.train_path=gs://bkt/shards/a b",
    ]


def test_tpu_pod_dry_run_prints_every_command(capsys, monkeypatch):
    monkeypatch.setattr(tpu_pod.subprocess, "run", lambda *a, **k: pytest.fail(f"dry run ran {a}"))
    assert tpu_pod.main(_tpu_args("--dry-run")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# exists?   " + shlex.join(tpu_pod.describe_command("pod1", "us-east5-a", "proj"))
    assert [shlex.split(line) for line in lines[1:]] == tpu_pod.plan(tpu_pod.parse_args(_tpu_args()), False)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--workdir=/local/run", "--", "--config", "x"], "must be a gs:// URL"),
        (["--workdir=gs://b/r", "--", "--max-steps", "2"], "at least --config"),
        (["--workdir=gs://b/r", "--", "--config", "x", "--workdir", "gs://b/o"], "not after --"),
    ],
)
def test_tpu_pod_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        tpu_pod.parse_args(["--name=p", "--zone=z", "--package=pkg", *argv])
    assert message in capsys.readouterr().err


def test_slurm_sbatch_command():
    train = ["--config", "wan1_3b_stage1", "--workdir", "/shared/runs/s1"]
    script = str(LAUNCH / "slurm_gpu.sbatch")
    assert slurm_gpu.sbatch_command(
        train, nodes=4, gpus_per_node=8, partition="gpu", time="12:00:00", venv="/shared/venv"
    ) == [
        *["sbatch", "--job-name=trackedit", "--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8"],
        *["--partition=gpu", "--time=12:00:00", "--export=ALL,PROCS_PER=gpu,TRACKEDIT_VENV=/shared/venv"],
        script,
        *train,
    ]
    assert slurm_gpu.sbatch_command(train, nodes=2, gpus_per_node=8, procs_per="node", account="acc") == [
        *["sbatch", "--job-name=trackedit", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8"],
        *["--account=acc", "--export=ALL,PROCS_PER=node"],
        script,
        *train,
    ]
    with pytest.raises(ValueError, match="after --"):
        slurm_gpu.sbatch_command([], nodes=1, gpus_per_node=8)


def test_slurm_helper_dry_run(capsys, monkeypatch):
    monkeypatch.setattr(slurm_gpu.subprocess, "run", lambda *a, **k: pytest.fail(f"dry run ran {a}"))
    assert slurm_gpu.main(["--nodes", "2", "--dry-run", "--", "--config", "c", "--workdir", "/s/r"]) == 0
    out = capsys.readouterr().out.strip()
    assert shlex.split(out) == slurm_gpu.sbatch_command(
        ["--config", "c", "--workdir", "/s/r"], nodes=2, gpus_per_node=8
    )


def _sbatch(tmp_path, env, *train_args):
    """Run the batch script as Slurm would run it on the first node, with TRACKEDIT_DRY_RUN=1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # `scontrol show hostnames gpu-a[01-02]` lists the job's hosts one a line
    (bin_dir / "scontrol").write_text(
        '#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu-a[01-02]" ] && printf "gpu-a01\\ngpu-a02\\n"\n'
    )
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "12345", "SLURM_JOB_NODELIST": "gpu-a[01-02]", "SLURM_NTASKS": "16"}
    full_env = {**os.environ, **slurm, **env, "TRACKEDIT_DRY_RUN": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(LAUNCH / "slurm_gpu.sbatch"), *train_args], env=full_env, capture_output=True, text=True
    )


def test_slurm_script_one_process_per_gpu(tmp_path):
    r = _sbatch(tmp_path, {"TRACKEDIT_VENV": "/opt/venv"}, "--config", "wan1_3b_stage1", "--workdir", "/s/run a")
    assert r.returncode == 0, r.stderr
    assert shlex.split(r.stdout) == [
        *["srun", "--kill-on-bad-exit=1", "/opt/venv/bin/trackedit", "train"],
        *["--config", "wan1_3b_stage1", "--workdir", "/s/run a"],
    ]


def test_slurm_script_one_process_per_node(tmp_path):
    r = _sbatch(tmp_path, {"PROCS_PER": "node"}, "--config", "c", "--workdir", "/s/run a")
    assert r.returncode == 0, r.stderr
    words = shlex.split(r.stdout)
    port = 12345 % 4096 + 61440
    inner = (
        'exec env -u SLURM_LOCALID "$0" train "$@" '
        f"--coordinator-address=gpu-a01:{port} --num-processes=$SLURM_NTASKS --process-id=$SLURM_PROCID"
    )
    assert words == [
        *["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", "bash", "-c", inner],
        *["trackedit", "--config", "c", "--workdir", "/s/run a"],
    ]
    # what each task then runs: its own process id, all of its node's devices (SLURM_LOCALID unset)
    task_env = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "PATH": os.environ["PATH"]}
    probe = 'import os, sys; print(sys.argv[1:], "SLURM_LOCALID" in os.environ)'
    show = tmp_path / "show"
    show.write_text(f"#!{sys.executable}\n{probe}\n")
    show.chmod(0o755)
    out = subprocess.run([*words[3:6], str(show), *words[7:]], env=task_env, capture_output=True, text=True)
    assert (
        out.stdout.strip()
        == str(
            [
                *["train", "--config", "c", "--workdir", "/s/run a"],
                *[f"--coordinator-address=gpu-a01:{port}", "--num-processes=2", "--process-id=1"],
            ]
        )
        + " False"
    )


def test_slurm_script_refuses_bad_settings(tmp_path):
    r = _sbatch(tmp_path, {})
    assert r.returncode == 2 and "give the trackedit train arguments" in r.stderr
    r = _sbatch(tmp_path, {"PROCS_PER": "socket"}, "--config", "c", "--workdir", "/s/r")
    assert r.returncode == 2 and "PROCS_PER must be gpu or node" in r.stderr


@pytest.mark.parametrize("describe_rc,state", [(0, "READY"), (1, ""), (0, "PREEMPTED")])
def test_tpu_pod_runs_the_plan_for_the_pod_it_finds(monkeypatch, capsys, describe_rc, state):
    """Without --dry-run: `describe` decides between reuse and create; a pod not READY stops the launcher."""
    ran = []

    def fake_run(cmd, **kw):
        ran.append(cmd)
        verb = cmd[4]
        return subprocess.CompletedProcess(cmd, describe_rc if verb == "describe" else 0, state + "\n", "")

    monkeypatch.setattr(tpu_pod.subprocess, "run", fake_run)
    code = tpu_pod.main(_tpu_args())
    args = tpu_pod.parse_args(_tpu_args())
    describe = tpu_pod.describe_command("pod1", "us-east5-a", "proj")
    if state == "PREEMPTED":
        assert code == 2 and ran == [describe] and "state PREEMPTED, not READY" in capsys.readouterr().err
    else:
        assert code == 0 and ran == [describe, *tpu_pod.plan(args, pod_exists=describe_rc == 0)]
        assert [c[4] for c in ran] == (
            ["describe", "ssh", "ssh"] if describe_rc == 0 else ["describe", "create", "ssh", "ssh"]
        )
