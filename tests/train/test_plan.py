"""`trackedit plan`: loop-corrected FLOPs against the analytic count, planned memory against a measured run,
and the exit status and advice when a step does not fit."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from train_runs import REPO, env_for

from trackedit_jax.configuration import load_config
from trackedit_jax.parallel.mesh import make_mesh, parse_mesh_spec
from trackedit_jax.train.hlo_flops import count_matmul_flops


def _one_device():
    return make_mesh({"data": 1}, devices=jax.devices()[:1])


def test_hlo_count_multiplies_loops_by_their_trip_counts():
    """A 5-layer scan of (8, 16) @ (16, 16) and its backward pass for the input: 5 x 2 x 2 x 8 x 16 x 16
    FLOPs, where XLA's cost analysis counts each of the two loop bodies once."""

    def f(x, w):
        return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0].sum()

    compiled = jax.jit(jax.grad(f)).lower(jnp.ones((8, 16)), jnp.ones((5, 16, 16))).compile()
    counted = count_matmul_flops(compiled.as_text())
    assert counted.flops == 5 * 2 * (2 * 8 * 16 * 16)
    assert sorted(n for n, _ in counted.loops) == [5, 5] and counted.unknown_trip_loops == 0
    assert compiled.cost_analysis()["flops"] < counted.flops / 2  # what the correction is for

    conv = jax.jit(
        lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )
    compiled = conv.lower(jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 5))).compile()
    assert count_matmul_flops(compiled.as_text()).flops == 2 * (2 * 8 * 8 * 5) * (3 * 3 * 3)


def test_tiny_training_plan_matches_a_real_step():
    """The tiny config's planned step, then the same executable run on real arrays: XLA's loop-corrected
    FLOPs agree with the analytic count within 10 %, and the planned temporaries (plus outputs not
    aliased to the donated state) with the measured peak growth of the heap within 25 %."""
    from trackedit_jax.host_memory import HeapPeak
    from trackedit_jax.train import build
    from trackedit_jax.train.aot import plan_training_step
    from trackedit_jax.train.setup import TrainingSetup
    from trackedit_jax.train.step import init_train_state

    config = load_config("tiny_cpu", ["--config.mesh.data=1"])
    mesh = _one_device()
    plan = plan_training_step(config, mesh=mesh)
    assert 0.9 < plan.flops_agreement < 1.1, plan.table()

    setup = TrainingSetup.create(config, mesh)
    _, abs_vae = nnx.split(build.abstract_vae(config))
    abs_args = setup.abstract_arguments(abs_vae)
    params, frozen = setup.init_params()
    state = jax.device_put(init_train_state(params, setup.tx, 0, setup.use_ema), setup.state_sh)
    vae = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abs_args[2])
    batch = {k: jnp.ones(a.shape, a.dtype) for k, a in abs_args[3].items()}
    measured = []
    for _ in range(3):  # the first run also allocates the runtime's one-off buffers
        jax.block_until_ready((state, frozen, vae, batch))
        with jax.set_mesh(mesh), HeapPeak() as peak:
            state, _ = plan.executable(state, frozen, vae, batch)
            jax.block_until_ready(state)
        measured.append(peak.bytes)
    planned = plan.temp_bytes + plan.output_bytes - plan.alias_bytes
    assert abs(min(measured[1:]) - planned) <= 0.25 * planned, (measured, plan.table())


def test_tiny_edit_plan_counts_one_sampling_step():
    from trackedit_jax.infer.aot import plan_edit_step
    from trackedit_jax.parallel.devices import device_kind

    plan = plan_edit_step(load_config("tiny_cpu"), num_steps=50, mesh=_one_device(), device=device_kind("h100"))
    assert 0.9 < plan.flops_agreement < 1.1, plan.table()
    assert plan.fits and plan.steps == 50
    # 50 model calls at 40 % of the H100's 989 TFLOP/s
    assert plan.predicted_seconds == pytest.approx(50 * max(plan.flops_model, plan.flops_xla) / (989e12 * 0.4))


def test_a_step_that_does_not_fit_exits_non_zero_and_names_what_to_change(tmp_path):
    """Batch 4096 of the tiny model on one 32 GiB v6e: planned, reported, refused with advice."""
    proc = subprocess.run(
        [sys.executable, "-m", "trackedit_jax.cli", "plan", "--config", "tiny_cpu", "--devices", "1"]
        + ["--device", "v6e", "--mesh", "data=1", "--config.train.batch_size=4096"],
        env=env_for(1, str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "fits" in proc.stdout and "NO" in proc.stdout
    assert "does not fit" in proc.stderr
    for advice in ("--devices 2", "remat_policy=full", "grad_accum=2"):
        assert advice in proc.stderr, proc.stderr


def test_mesh_spec_and_device_kinds_are_checked():
    from trackedit_jax.parallel.devices import DEVICE_KINDS, device_kind

    assert parse_mesh_spec("fsdp=8, context=2") == {"data": 1, "fsdp": 8, "context": 2, "tensor": 1}
    for bad, word in (("fsdp", "AXIS=SIZE"), ("pipe=2", "AXIS=SIZE"), ("fsdp=x", "integer"), ("fsdp=0", "positive")):
        with pytest.raises(ValueError, match=word):
            parse_mesh_spec(bad)
    assert set(DEVICE_KINDS) == {"v5p", "v6e", "h100", "h200", "a100"}
    assert device_kind("H100").hbm_bytes == 80 * 1024**3
    with pytest.raises(ValueError, match="known: v5p"):
        device_kind("tpu9")


def test_the_demo_preset_plans_with_its_warp_prior():
    """The built-in model's preset (a warp-prior model, here narrowed) compiles ahead of time for training and
    for editing, with the warp's embedding in the counted FLOPs (XLA within 10 % of the analytic count)."""
    from trackedit_jax.infer.aot import plan_edit_step
    from trackedit_jax.parallel.devices import device_kind
    from trackedit_jax.train.aot import plan_training_step

    narrow = ["--config.model.wan.dim=64", "--config.model.wan.num_heads=2", "--config.model.wan.ffn_dim=128"]
    config = load_config("demo_cpu", ["--config.mesh.data=1", "--config.train.batch_size=2", *narrow])
    assert config.model.warp_prior
    train = plan_training_step(config, mesh=_one_device())
    assert 0.9 < train.flops_agreement < 1.1, train.table()
    edit = plan_edit_step(config, num_steps=20, mesh=_one_device(), device=device_kind("h100"))
    assert 0.9 < edit.flops_agreement < 1.1 and edit.fits, edit.table()
