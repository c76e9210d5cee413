"""The training step in-process: gradient accumulation is the same step, EMA follows its formula, the
edit-region, temporal and gate loss terms follow their definitions."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trackedit_jax.configuration import load_config
from trackedit_jax.diffusion import flow
from trackedit_jax.parallel.mesh import make_mesh
from trackedit_jax.train import build
from trackedit_jax.train.loop import TrainingSetup
from trackedit_jax.train.step import example_keys, flow_loss, init_train_state, make_train_step

F, H, W, N, B = 5, 32, 32, 12, 4


def _batch(seed=0):
    r = np.random.default_rng(seed)
    K = np.tile(np.array([[40.0, 0, 16], [0, 40, 16], [0, 0, 1]], np.float32), (B, F, 1, 1))
    E = np.tile(np.eye(4, dtype=np.float32), (B, F, 1, 1))
    xyz = (r.normal(size=(B, F, N, 3)) * [0.5, 0.5, 0.2] + [0, 0, 3]).astype(np.float32)
    f, h, w = (F - 1) // 4 + 1, H // 8, W // 8
    # precomputed latents (the loader's alternative to videos): the frozen VAE is not what is tested here
    return {
        "source_latents": r.normal(size=(B, f, h, w, 16)).astype(np.float32),
        "target_latents": r.normal(size=(B, f, h, w, 16)).astype(np.float32),
        "source_xyz": xyz,
        "target_xyz": xyz + 0.1,
        "point_mask": np.ones((B, N), bool),
        "source_intrinsics": K,
        "target_intrinsics": K,
        "source_extrinsics": E,
        "target_extrinsics": E,
    }


def _config(*overrides):
    return load_config(
        "tiny_cpu",
        [
            f"--config.train.batch_size={B}",
            "--config.data.num_frames=5",
            f"--config.data.height={H}",
            f"--config.data.width={W}",
            "--config.train.warmup_steps=1",
            *overrides,
        ],
    )


def _model_and_vae(config):
    """The initialised model (one device) and the VAE of a config, for calling `flow_loss` directly."""
    setup = TrainingSetup.create(config, make_mesh({"data": 1}, devices=jax.devices()[:1]))
    params, frozen = setup.init_params()
    return nnx.merge(setup.graphdef, params, frozen), build.build_vae(config)


@contextlib.contextmanager
def _recorded_outputs(model):
    """Inside, every `model.forward` call also appends its result to the yielded list."""
    outputs, forward = [], model.forward
    model.forward = lambda *a, **k: outputs.append(forward(*a, **k)) or outputs[-1]
    try:
        yield outputs
    finally:
        model.forward = forward


def _step(accum: int, ema: float = 0.0):
    config = _config(f"--config.train.grad_accum={accum}", f"--config.train.ema_decay={ema}")
    setup = TrainingSetup.create(config, make_mesh({"data": 1}, devices=jax.devices()[:1]))
    params, frozen = setup.init_params()
    vae_graphdef, vae_state = nnx.split(build.build_vae(config))
    state = init_train_state(params, setup.tx, 0, setup.use_ema)
    step = jax.jit(
        make_train_step(setup.graphdef, vae_graphdef, setup.tx, setup.schedule, config, (H, W), setup.trainable)
    )
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    state = step(state, frozen, vae_state, batch)[0]  # step 0 has learning rate 0 (warm-up)
    return state, step(state, frozen, vae_state, batch)


def test_gradient_accumulation_is_the_same_step_and_ema_follows_its_rule():
    (before, (one, m1)), (_, (two, m2)) = _step(1, ema=0.9), _step(2, ema=0.9)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    assert float(m1["grad_norm"]) > 0
    for e0, e1, p1 in zip(jax.tree.leaves(before.ema), jax.tree.leaves(one.ema), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(np.asarray(e1), 0.9 * np.asarray(e0) + 0.1 * np.asarray(p1), rtol=1e-6, atol=1e-7)


def test_edit_loss_term_is_the_mean_over_the_changed_latent_pixels():
    """Two exact identities of loss = plain + w * edit-region mean: with the target equal to the source the
    region is empty and the term vanishes; with every latent pixel changed it is the plain mean again."""
    config = _config()
    model, vae = _model_and_vae(config)
    keys = example_keys(jax.random.PRNGKey(3), jnp.int32(0), B)
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}

    def loss(batch, weight):
        cfg = config.copy_and_resolve_references()
        cfg.diffusion.edit_weight = weight
        return float(flow_loss(model, vae, batch, keys, cfg, (H, W))[0])

    unchanged = {**batch, "target_latents": batch["source_latents"]}
    assert loss(unchanged, 0.5) == loss(unchanged, 0.0)
    changed = {**batch, "target_latents": batch["source_latents"] + 1.0}  # every channel beyond 0.2
    np.testing.assert_allclose(loss(changed, 0.5), 1.5 * loss(changed, 0.0), rtol=1e-6)


def test_temporal_loss_term_is_the_jump_of_the_decoded_clean_sample_error():
    """With the space-to-depth autoencoder and x0-prediction the term is `temporal_difference_error` of the
    model output and the target, unfolded into frames with NumPy; the loss is plain + w * that term."""
    config = _config(
        "--config.vae.preset=space_to_depth",
        "--config.vae.spatial_factor=4",
        "--config.model.wan.in_dim=192",
        "--config.model.wan.out_dim=192",
        "--config.diffusion.prediction=sample",
        "--config.diffusion.weighting=x0",
        "--config.diffusion.pure_noise_fraction=0.5",
    )
    model, vae = _model_and_vae(config)
    keys = example_keys(jax.random.PRNGKey(5), jnp.int32(0), B)
    r = np.random.default_rng(1)
    latents = lambda: jnp.asarray(r.normal(size=(B, 2, H // 4, W // 4, 192)), jnp.float32)  # noqa: E731
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    batch.update(source_latents=latents(), target_latents=latents())

    def loss(weight):
        cfg = config.copy_and_resolve_references()
        cfg.diffusion.temporal_weight = weight
        return float(flow_loss(model, vae, batch, keys, cfg, (H, W))[0])

    with _recorded_outputs(model) as outputs:
        plain, weighted = loss(0.0), loss(0.5)

    def frames(z):  # (B, 2, h, w, 4*4*4*3) -> (B, 5, H, W, 3): frame 0 (its 4 copies averaged), then 4 frames
        z = np.asarray(z).reshape(B, 2, H // 4, W // 4, 4, 4, 4, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        z = z.reshape(B, 8, H, W, 3)
        return np.concatenate([z[:, :4].mean(1, keepdims=True), z[:, 4:]], axis=1)

    err = frames(outputs[-1]) - frames(batch["target_latents"])
    jump = np.mean((err[:, 1:] - err[:, :-1]) ** 2, axis=(1, 2, 3, 4))
    np.testing.assert_allclose(weighted, plain + 0.5 * jump.mean(), rtol=1e-5)


def test_gate_loss_term_is_the_gate_choice_loss_of_the_model_gate():
    """In a source-gate model the loss is plain + w * `gate_choice_loss` of the gate logits the model
    returns, the source latents, the warp's (the prior's first channels) and the target; the term is zero
    where source and warp agree everywhere, whatever the gate."""
    config = _config(
        "--config.model.warp_prior=true",
        "--config.model.source_skip=true",
        "--config.model.source_gate=true",
        "--config.diffusion.prediction=sample",
        "--config.diffusion.weighting=x0",
    )
    model, vae = _model_and_vae(config)
    keys = example_keys(jax.random.PRNGKey(7), jnp.int32(0), B)
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    batch["warp_latents"] = jnp.asarray(
        np.random.default_rng(3).normal(size=batch["source_latents"].shape), jnp.float32
    )

    def loss(batch, weight):
        cfg = config.copy_and_resolve_references()
        cfg.diffusion.gate_weight = weight
        return float(flow_loss(model, vae, batch, keys, cfg, (H, W))[0])

    with _recorded_outputs(model) as outputs:
        plain, weighted = loss(batch, 0.0), loss(batch, 0.5)
    agreeing = {**batch, "warp_latents": batch["source_latents"]}
    assert loss(agreeing, 0.5) == loss(agreeing, 0.0)

    out, gate = outputs[1]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(outputs[0]))  # the gate costs the output nothing
    term = flow.gate_choice_loss(gate, batch["source_latents"], batch["warp_latents"], batch["target_latents"])
    assert float(jnp.mean(term)) > 0
    np.testing.assert_allclose(weighted, plain + 0.5 * float(jnp.mean(term)), rtol=1e-5)
