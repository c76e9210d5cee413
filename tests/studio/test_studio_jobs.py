"""Edit jobs: atomic outputs (a finished job's folder appears whole; cancel, error and shutdown leave
nothing), progress counters, the sampler's progress callback, and `trackedit studio` stopping on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import jax.numpy as jnp
import numpy as np
import pytest

from trackedit_jax.diffusion.samplers import initial_noise, sample
from trackedit_jax.studio.jobs import JobManager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait(job, states=("done", "error", "cancelled"), timeout=30.0):
    end = time.monotonic() + timeout
    while job.state not in states:
        assert time.monotonic() < end, job.status()
        time.sleep(0.01)
    return job


def slow_work(started: threading.Event, steps=1000):
    def work(job, tmp):
        (tmp / "part.txt").write_text("half")
        started.set()
        for i in range(steps):
            job.progress("sampling", i, steps)
            time.sleep(0.01)
        (tmp / "part.txt").write_text("whole")

    return work


def test_a_finished_job_appears_whole(tmp_path):
    jobs = JobManager(tmp_path)
    job = wait(jobs.submit(lambda job, tmp: (tmp / "a.txt").write_text("a")))
    assert job.state == "done" and job.files == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == [job.name]
    assert (job.out_dir / "a.txt").read_text() == "a"
    jobs.shutdown()


def test_cancel_error_and_shutdown_leave_nothing(tmp_path):
    jobs = JobManager(tmp_path)
    started = threading.Event()
    job = jobs.submit(slow_work(started))
    assert started.wait(10)
    while job.done < 3:
        time.sleep(0.01)
    assert job.status()["stage"] == "sampling" and job.status()["total"] == 1000
    jobs.cancel(job.id)
    assert wait(job).state == "cancelled"
    assert list(tmp_path.iterdir()) == []

    def fails(job, tmp):
        (tmp / "x").write_text("x")
        raise ValueError("the model ran out of\nmemory")

    bad = wait(jobs.submit(fails))
    assert bad.state == "error" and bad.error == "the model ran out of memory"
    assert list(tmp_path.iterdir()) == []

    started.clear()
    running = jobs.submit(slow_work(started))
    queued = jobs.submit(slow_work(threading.Event()))
    assert started.wait(10)
    jobs.shutdown()
    assert running.state == "cancelled" and queued.state == "cancelled"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="shutting down"):
        jobs.submit(lambda job, tmp: None)


def test_sampler_progress_callback_matches_and_stops():
    velocity = lambda x, t, cond: -x * cond["k"]  # noqa: E731
    noise = initial_noise(0, (1, 4, 3), jnp.float32)
    cond = {"k": jnp.ones((1, 1, 1))}
    calls = []
    plain = sample(velocity, noise, cond, num_steps=6)
    counted = sample(velocity, noise, cond, num_steps=6, progress=lambda d, n: calls.append((d, n)))
    np.testing.assert_allclose(np.asarray(counted), np.asarray(plain), rtol=1e-6, atol=1e-6)
    assert calls == [(i, 6) for i in range(7)]

    def stop(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample(velocity, noise, cond, num_steps=6, progress=stop)


def test_ctrl_c_stops_the_command_cleanly(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": ROOT, "TRACKEDIT_KEEP_FREED_MEMORY": "0"}
    cmd = [sys.executable, "-m", "trackedit_jax.cli", "studio", "--port", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("open http://127.0.0.1:"):
                url = line.split()[1]
                break
        assert url, proc.stderr.read()
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopped" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["sample_scene"]
    assert sorted(p.name for p in (out / "sample_scene").iterdir()) == ["source.npz"]
