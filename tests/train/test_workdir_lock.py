"""One `trackedit train` per work directory (`train.workdir_lock.WorkdirLock`): a second run on a directory
held by a live process refuses in one line naming the holder; a lock left by a SIGKILLed holder is free
and taken over, its file rewritten with the new holder."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from crashes import cli, env, one_line_error, run

from trackedit_jax.train.workdir_lock import LOCK_NAME, WorkdirBusyError, WorkdirLock

HOLDER = """
import sys, time
from trackedit_jax.train.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1])
print("HELD", flush=True)
time.sleep(600)
"""


def test_second_train_refuses_while_the_holder_lives_and_takes_over_after_a_kill(tmp_path):
    wd = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(wd)], env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        proc = run(cli("train", "--config", "tiny_cpu", "--workdir", str(wd)), timeout=300)
        line = one_line_error(proc, "train")
        assert f"{wd} is in use by another `trackedit train` (pid {holder.pid} on {socket.gethostname()}" in line
        assert not (wd / "checkpoints").exists() and not (wd / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((wd / LOCK_NAME).read_text())["pid"] == holder.pid  # the dead holder's record remains
    with WorkdirLock(wd):  # ... but its flock died with it
        assert json.loads((wd / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_is_exclusive_within_a_process_and_released(tmp_path):
    first = WorkdirLock(tmp_path)
    with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}"):
        WorkdirLock(tmp_path)
    first.release()
    WorkdirLock(tmp_path).release()
