"""Training runs end to end (issue 6): determinism, exact resume after SIGKILL, SIGTERM checkpoints,
the same run on 1 device / 8 devices / 2 processes x 4 devices, and restoring onto other meshes.

Every run is a real `trackedit train` subprocess on a tiny config; one reference run (1 device,
20 steps) is shared by the tests. Runs share a persistent compilation cache.
"""

import shutil
import signal

import numpy as np
import pytest
from train_runs import env_for, metrics, run, run_until, train_cmd

from trackedit_jax.train.checkpointing import read_state_numpy

pytestmark = pytest.mark.xdist_group("train_runs")

STEPS = 20


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from data_pipeline.synthetic import make_dataset

    out = tmp_path_factory.mktemp("pairs")
    # with warp frames for the demo preset (a warp-prior model); the other presets ignore them
    make_dataset(out, num_pairs=16, num_frames=9, size=(32, 32), seed=0, workers=1, with_warp=True)
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, cache_dir):
    """The uninterrupted 20-step run on one device."""
    wd = tmp_path_factory.mktemp("reference")
    run(train_cmd(wd, data_dir, [f"--config.train.num_steps={STEPS}"]), env_for(1, cache_dir))
    return wd


def _params(workdir, step):
    got_step, state = read_state_numpy(workdir / "checkpoints", step)
    assert got_step == step
    return state["params"]


# With the null (all-zero) text of these synthetic pairs every text key of the cross-attention is the
# same vector, so the key bias has exactly zero gradient. On one device it stays exactly 0; sharded
# reductions leave rounding noise that Adam normalises into lr-sized steps of a parameter that has
# no effect on the function. Cross-topology comparisons skip it after checking it is untouched in
# the reference (so the exemption rests on the data, not on an assumption).
NULL_TEXT_DEAD = "/dit/blocks/cross_attn/k/bias/value"


def _assert_trees(a, b, atol=0.0, skip=()):
    flat_a = _flatten(a)
    flat_b = _flatten(b)
    assert flat_a.keys() == flat_b.keys()
    for k in skip:
        assert not np.any(flat_b[k]), f"{k} moved in the reference run: it is not gradient-free"
    for k in flat_a:
        if k in skip:
            continue
        if atol == 0.0:
            np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)
        else:
            np.testing.assert_allclose(flat_a[k], flat_b[k], atol=atol, rtol=0, err_msg=k)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
        return out
    return {prefix: np.asarray(tree)}


def test_same_seed_gives_bit_identical_parameters(reference, tmp_path, data_dir, cache_dir):
    run(train_cmd(tmp_path, data_dir, [f"--config.train.num_steps={STEPS}"]), env_for(1, cache_dir))
    _assert_trees(_params(tmp_path, STEPS), _params(reference, STEPS))
    m_ref, m = metrics(reference), metrics(tmp_path)
    assert [m[s]["train/loss"] for s in range(1, STEPS + 1)] == [m_ref[s]["train/loss"] for s in range(1, STEPS + 1)]
    # the run learns something: the parameters moved and the loss is finite
    assert np.isfinite(m[STEPS]["train/loss"])
    assert (reference / "loss_curve.png").stat().st_size > 0


def test_sigterm_checkpoint_then_sigkill_then_resume_is_exact(reference, tmp_path, data_dir, cache_dir):
    """SIGTERM saves a checkpoint at the current step and exits 0; SIGKILL between scheduled checkpoints
    (every 4 steps) loses the work since the last one; resuming after both reaches step 20 with the
    reference's exact parameters, losses and batches."""
    cmd = train_cmd(tmp_path, data_dir, [f"--config.train.num_steps={STEPS}"])
    env = env_for(1, cache_dir)
    assert run_until(cmd, env, tmp_path, 2, signal.SIGTERM) == 0
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 2 <= saved[-1] < STEPS, saved
    assert read_state_numpy(tmp_path / "checkpoints", saved[-1])[1]["step"] == saved[-1]
    for kill_at in (6, 15):
        assert run_until(cmd, env, tmp_path, kill_at, signal.SIGKILL) == -signal.SIGKILL
    run(cmd, env)
    _assert_trees(_params(tmp_path, STEPS), _params(reference, STEPS))
    m_ref, m = metrics(reference), metrics(tmp_path)
    for s in range(1, STEPS + 1):
        assert m[s]["train/data_fingerprint"] == m_ref[s]["train/data_fingerprint"], f"batch of step {s} differs"
        assert m[s]["train/loss"] == m_ref[s]["train/loss"], f"loss of step {s} differs"


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory, data_dir, cache_dir):
    wd = tmp_path_factory.mktemp("mesh8")
    # the same 20-step schedule as the reference, stopped after 8 steps
    run(
        train_cmd(
            wd,
            data_dir,
            [f"--config.train.num_steps={STEPS}", "--max-steps=8", "--config.mesh.data=2", "--config.mesh.fsdp=4"],
        ),
        env_for(8, cache_dir),
    )
    return wd


def test_one_device_eight_devices_and_two_processes_agree(reference, eight_devices, tmp_path, data_dir, cache_dir):
    import sys

    from train_runs import REPO

    two_proc = tmp_path / "two_proc"
    launcher = [
        sys.executable,
        str(REPO / "launch" / "local_multiprocess.py"),
        "--processes",
        "2",
        "--devices-per-process",
        "4",
        "--",
    ]
    run(
        launcher
        + train_cmd(
            two_proc,
            data_dir,
            [f"--config.train.num_steps={STEPS}", "--max-steps=8", "--config.mesh.data=2", "--config.mesh.fsdp=4"],
        ),
        env_for(4, cache_dir),
    )
    m_ref = metrics(reference)
    for wd in (eight_devices, two_proc):
        m = metrics(wd)
        for s in range(1, 9):
            assert abs(m[s]["train/loss"] - m_ref[s]["train/loss"]) <= 1e-5, (wd, s)
        _assert_trees(_params(wd, 8), _params(reference, 8), atol=1e-5, skip=[NULL_TEXT_DEAD])


def test_checkpoint_moves_between_device_counts(reference, eight_devices, tmp_path, data_dir, cache_dir):
    """8 devices -> continue on 2 devices -> continue on 8 devices; matches the 1-device run."""
    wd = tmp_path / "moved"
    shutil.copytree(eight_devices, wd)
    common = [f"--config.train.num_steps={STEPS}", "--max-steps=4"]
    run(train_cmd(wd, data_dir, common + ["--config.mesh.data=1", "--config.mesh.fsdp=2"]), env_for(2, cache_dir))
    run(train_cmd(wd, data_dir, common + ["--config.mesh.data=2", "--config.mesh.fsdp=4"]), env_for(8, cache_dir))
    _assert_trees(_params(wd, 12), _params(reference, 12), atol=1e-5, skip=[NULL_TEXT_DEAD])
    _assert_trees(_params(wd, 16), _params(reference, 16), atol=1e-5, skip=[NULL_TEXT_DEAD])


def test_demo_config_reruns_bit_for_bit_with_honest_step_metrics(tmp_path, data_dir, cache_dir):
    """The demo preset's code path (space-to-depth latents, EMA) at a small size: the same command and
    seed give the same parameters bit for bit, and the logged throughput is physically possible."""
    import sys

    from train_runs import SMALL

    small_model = [
        "--config.model.wan.dim=64",
        "--config.model.wan.num_heads=2",
        "--config.model.wan.num_layers=2",
        "--config.model.wan.ffn_dim=128",
        "--config.model.conditioner.dim=32",
        "--config.model.conditioner.heads=2",
        "--config.train.num_steps=4",
    ]

    def cmd(wd):
        return [
            sys.executable,
            "-m",
            "trackedit_jax.cli",
            "train",
            "--config",
            "demo_cpu",
            "--workdir",
            str(wd),
            f"--config.data.train_path={data_dir}",
            f"--config.data.val_path={data_dir}",
            *SMALL,
            *small_model,
        ]

    runs = [tmp_path / "a", tmp_path / "b"]
    for wd in runs:
        run(cmd(wd), env_for(1, cache_dir))
    _assert_trees(_params(runs[0], 4), _params(runs[1], 4))
    _, state = read_state_numpy(runs[0] / "checkpoints", 4)
    assert state.get("ema"), "demo_cpu keeps an EMA copy"
    logged = metrics(runs[0])
    timed = [m for m in logged.values() if "train/mfu" in m]
    assert timed, "no synchronised window was logged"
    for m in timed:
        assert 0 < m["train/mfu"] <= 1.0
        assert m["train/step_time"] > 0
        assert m["train/flops_per_second"] == pytest.approx(m["train/model_flops_per_step"] / m["train/step_time"])
