"""What the pod launcher relies on: a gs:// workdir reaches `train` as written (local paths are still made
absolute), the training loop keeps it a URL for orbax and stages its local files elsewhere, and
TRACKEDIT_DISTRIBUTED=1 makes `trackedit train` call `jax.distributed.initialize()` with no arguments.
The run with a remote workdir uses a local folder in the bucket's place."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
from etils import epath

from trackedit_jax import cli
from trackedit_jax.cli import main
from trackedit_jax.parallel import distributed
from trackedit_jax.train import loop
from trackedit_jax.train.checkpointing import is_remote, storage_path

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def seen(monkeypatch):
    """The arguments `trackedit train` hands to its library call (the call itself is replaced)."""
    calls = []
    monkeypatch.setattr("trackedit_jax.cli.train.run", lambda args: calls.append(args) or 0)
    return calls


@pytest.mark.parametrize("url", ["gs://bkt/runs/s1", "gs://bkt/runs/../s1/", "s3://b/x"])
def test_cli_passes_urls_through(seen, url):
    assert main(["train", "--config", "tiny_cpu", "--workdir", url]) == 0
    assert seen[0].workdir == url


def test_cli_still_makes_local_paths_absolute(seen, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "tiny_cpu", "--workdir", "runs/gs:/x"]) == 0
    assert seen[0].workdir == str(tmp_path / "runs" / "gs:" / "x")
    assert not cli.is_url("gs:/bkt") and not cli.is_url("/tmp/gs://x") and cli.is_url("gs://bkt")


def test_storage_paths(tmp_path, monkeypatch):
    run = storage_path("gs://bkt/runs/s1")
    assert isinstance(run, epath.Path) and str(run / "checkpoints") == "gs://bkt/runs/s1/checkpoints"
    assert is_remote("gs://bkt/runs/s1") and not is_remote(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert storage_path("runs/a") == tmp_path / "runs" / "a"
    staged = loop.local_dir("gs://bkt/runs/s1")
    assert staged.parent == pathlib.Path(tempfile.gettempdir()) / "trackedit_runs"
    assert staged.name == "gs___bkt_runs_s1"
    assert loop.local_dir("runs/a") == tmp_path / "runs" / "a"


def test_copy_tree_skips_the_generated_data(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for rel, text in {"metrics.jsonl": "{}", "tb/events.1": "e", "data/train/0.ar": "x"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    loop._copy_tree(src, epath.Path(dst), skip=("data",))
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "metrics.jsonl",
        "tb/events.1",
    ]
    assert (dst / "tb" / "events.1").read_text() == "e"


def test_requested_multi_process_start(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(distributed.jax, "process_count", lambda: 4)
    for name in ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_initialized", False)
    monkeypatch.delenv("TRACKEDIT_DISTRIBUTED", raising=False)
    assert distributed.initialize() is False and calls == []
    monkeypatch.setenv("TRACKEDIT_DISTRIBUTED", "1")
    assert distributed.initialize() is True and calls == [((), {})]
    monkeypatch.setattr(distributed, "_initialized", False)


# `train` as it runs for a URL workdir, with the URL swapped for a local folder: `is_remote` says yes,
# `storage_path` gives the folder (orbax cannot reach a bucket from a test)
REMOTE_AS_LOCAL = """
import pathlib, sys
from trackedit_jax.configuration import load_config
from trackedit_jax.train import loop
loop.is_remote = lambda path: True
loop.storage_path = lambda path: pathlib.Path(path)
config = load_config("tiny_cpu", sys.argv[2:])
print(loop.train(config, sys.argv[1]).step)
"""


@pytest.mark.slow
def test_train_with_a_remote_workdir_stages_local_files_and_copies_them(tmp_path):
    bucket, tmp = tmp_path / "bucket" / "run", tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "XLA_FLAGS": "", "PYTHONPATH": str(REPO)}
    overrides = [
        *["--config.data.num_frames=9", "--config.data.height=32", "--config.data.width=32"],
        *["--config.data.synthetic_pairs=4", "--config.train.num_steps=2", "--config.train.log_every=1"],
        *[
            "--config.train.val_every=0",
            "--config.hardware.peak_flops_per_device=1e11",
            "--config.model.wan.num_layers=1",
        ],
    ]
    out = subprocess.run(
        [sys.executable, "-c", REMOTE_AS_LOCAL, str(bucket), *overrides], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "2"
    (staged,) = (tmp / "trackedit_runs").iterdir()  # named after the workdir, '/' replaced
    assert staged.name == str(bucket).replace("/", "_")
    # generated shards stay in the staging folder; checkpoints, config, metrics and curve are in the "bucket"
    assert (staged / "data" / "train" / "manifest.json").is_file() and not (bucket / "data").exists()
    assert (bucket / "checkpoints" / "2").is_dir() and (bucket / "config.json").is_file()
    assert (bucket / "metrics.jsonl").read_bytes() == (staged / "metrics.jsonl").read_bytes()
    assert [json.loads(line)["step"] for line in (bucket / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (bucket / "loss_curve.png").is_file() and any((bucket / "tb").iterdir())
