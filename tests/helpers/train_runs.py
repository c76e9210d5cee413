"""Run `trackedit train` in subprocesses for the training tests (device counts, processes, kills)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]

# A configuration small enough for many runs per test session; batch 8 divides every mesh used.
SMALL = [
    "--config.data.num_frames=9",
    "--config.data.height=32",
    "--config.data.width=32",
    "--config.data.max_tracks=48",
    "--config.data.min_tracks=16",
    "--config.train.batch_size=8",
    "--config.train.val_every=0",
    "--config.train.log_every=1",
    "--config.train.fingerprint_data=true",
    "--config.checkpoint.every_steps=4",
    "--config.checkpoint.max_to_keep=10",
]


def env_for(devices: int, cache_dir: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_cmd(workdir, data_dir, extra=()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trackedit_jax.cli",
        "train",
        "--config",
        "tiny_cpu",
        "--workdir",
        str(workdir),
        f"--config.data.train_path={data_dir}",
        f"--config.data.val_path={data_dir}",
        *SMALL,
        *extra,
    ]


def run(cmd, env, timeout=900, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def metrics(workdir) -> dict[int, dict]:
    """step -> last logged train record (a resumed run overwrites the steps it repeats)."""
    out = {}
    path = pathlib.Path(workdir) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "train/loss" in rec:
            out[rec["step"]] = rec
    return out


def run_until(cmd, env, workdir, step: int, sig=signal.SIGKILL, timeout=900) -> int:
    """Start a run, wait until `step` has been logged, send `sig`; returns the exit code."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    path = pathlib.Path(workdir) / "metrics.jsonl"
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                raise AssertionError(f"run ended before step {step}: {proc.stderr.read()[-3000:]}")
            if path.exists() and any(json.loads(l).get("step", -1) >= step for l in path.read_text().splitlines() if l):
                proc.send_signal(sig)
                return proc.wait(timeout=300)
            time.sleep(0.05)
        raise AssertionError(f"step {step} not reached in {timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()
