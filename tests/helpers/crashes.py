"""Run `trackedit` (or a Python snippet) in a subprocess and kill it at a point the test observes from outside
(a file or folder appearing), or run it under a file-size limit (RLIMIT_FSIZE: a write past the limit
fails with EFBIG, as on a full disk). Nothing in the product knows about these tests."""

from __future__ import annotations

import os
import pathlib
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable

REPO = pathlib.Path(__file__).resolve().parents[2]


def env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("JAX_PLATFORMS", "cpu")
    e.pop("XLA_FLAGS", None)  # one device: the tests' 8 simulated devices are not needed here
    e.update(extra or {})
    return e


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trackedit_jax.cli", *args]


def _limit_file_size(nbytes: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return preexec


def run(cmd: list[str], *, fsize: int | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run to completion (optionally with every file the process writes limited to `fsize` bytes)."""
    return subprocess.run(
        cmd,
        env=kw.pop("env", env()),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_file_size(fsize) if fsize is not None else None,
        **kw,
    )


def kill_when(cmd: list[str], ready: Callable[[], bool], *, timeout: float = 600, poll: float = 0.001, **kw) -> int:
    """Start `cmd` in its own process group, SIGKILL the whole group as soon as `ready()` is true, and
    return the exit status (-9 when the kill landed; 0 if the command finished first)."""
    proc = subprocess.Popen(
        cmd, env=kw.pop("env", env()), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **kw
    )
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                return proc.returncode
            if proc.poll() == 0:
                return 0  # finished between two polls: the caller may retry
            if proc.poll() is not None:
                raise AssertionError(
                    f"{cmd[3:5]} ended ({proc.returncode}) before the kill point: {proc.stderr.read()[-3000:]}"
                )
            time.sleep(poll)
        raise AssertionError(f"kill point not reached in {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()


def one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    """The CLI's error: exit status 2 and a last stderr line `trackedit COMMAND: error: ...`."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"trackedit {command}: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return last
