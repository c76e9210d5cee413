"""Checkpoint saves killed in the middle and run out of disk (`train.checkpointing.Checkpointer`, the orbax
layout `trackedit train` writes): a process saves step 1, then is SIGKILLed while step 2 is being written
(its temporary folder exists), or hits a file-size limit (RLIMIT_FSIZE) while writing it. Afterwards the
latest step is 1 and it restores bit-exactly; the full-disk case fails with one `CheckpointWriteError` line."""

import numpy as np
from crashes import kill_when, run

from trackedit_jax.train.checkpointing import Checkpointer

SAVER = """
import sys
import numpy as np
import jax.numpy as jnp
from trackedit_jax.train.checkpointing import Checkpointer, CheckpointWriteError

def state(step):
    rng = np.random.default_rng(step)
    return {{"w": jnp.asarray(rng.standard_normal((1024, 1024 * {mb} // 4), np.float32)),
            "step": jnp.asarray(step, jnp.int32)}}

ckpt = Checkpointer(sys.argv[1], async_save=True)
if ckpt.latest_step() is None:
    ckpt.save(1, state(1), None, {{"step": 1}}, force=True)
    ckpt.wait()
if sys.argv[2:] == ["only-step-1"]:
    sys.exit(ckpt.close())
if {fsize}:
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))
try:
    ckpt.save(2, state(2), None, {{"step": 2}}, force=True)
    ckpt.close()
except CheckpointWriteError as e:
    print("ERROR", e)
    sys.exit(2)
"""


def expected(step, mb):
    return np.random.default_rng(step).standard_normal((1024, 1024 * mb // 4), np.float32)


def restore(directory, step, mb):
    import jax

    ckpt = Checkpointer(directory, async_save=False)
    try:
        assert ckpt.latest_step() == step, ckpt.all_steps()
        target = {
            "w": jax.ShapeDtypeStruct((1024, 1024 * mb // 4), np.float32),
            "step": jax.ShapeDtypeStruct((), np.int32),
        }
        return ckpt.restore(step, target)
    finally:
        ckpt.close()


def test_sigkill_during_a_save_keeps_the_last_complete_checkpoint(tmp_path):
    import sys

    mb = 64
    directory = tmp_path / "checkpoints"
    script = SAVER.format(mb=mb, fsize=0)
    status = kill_when([sys.executable, "-c", script, str(directory)], lambda: any(directory.glob("2.*tmp*")))
    assert status == -9
    state = restore(directory, 1, mb)
    np.testing.assert_array_equal(np.asarray(state["w"]), expected(1, mb))
    assert int(state["step"]) == 1
    # the next run saves step 2 over the killed attempt's leftovers
    assert run([sys.executable, "-c", script, str(directory)]).returncode == 0
    np.testing.assert_array_equal(np.asarray(restore(directory, 2, mb)["w"]), expected(2, mb))


def test_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    import sys

    mb = 4
    directory = tmp_path / "checkpoints"
    assert run([sys.executable, "-c", SAVER.format(mb=mb, fsize=0), str(directory), "only-step-1"]).returncode == 0
    proc = run([sys.executable, "-c", SAVER.format(mb=mb, fsize=1 << 20), str(directory)])
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stdout.strip()
    assert line.startswith("ERROR") and "\n" not in line and "File too large" in line, line
    assert "the last complete checkpoint is step 1" in line, line
    np.testing.assert_array_equal(np.asarray(restore(directory, 1, mb)["w"]), expected(1, mb))
