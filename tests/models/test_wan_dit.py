"""WanDiT behaviour: stages against diffusers pieces, staged composition, input validation, remat
policies, scan compile time, configs."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from torch_reference import HAVE_TORCH, needs_torch

from trackedit_jax.models.layers import backward_passes
from trackedit_jax.models.wan import config as wan_config
from trackedit_jax.models.wan.config import WanConfig, tiny
from trackedit_jax.models.wan.dit import WanDiT, sinusoidal_embedding
from trackedit_jax.models.wan.rope import grid_positions, rope_frequencies

if HAVE_TORCH:
    import torch


@pytest.fixture(scope="module")
def model():
    return WanDiT(tiny(dim=24, num_heads=2, ffn_dim=32, text_dim=16), rngs=nnx.Rngs(0))


def _inputs(b=2, f=3, h=4, w=6, c=4, text=5, text_dim=16, seed=0):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.standard_normal((b, f, h, w, c), dtype=np.float32)),
        jnp.asarray(rng.uniform(0, 1000, size=(b,)).astype(np.float32)),
        jnp.asarray(rng.standard_normal((b, text, text_dim), dtype=np.float32)),
    )


@needs_torch
def test_sinusoidal_embedding_matches_diffusers_and_float64():
    """diffusers computes the embedding in float32, the official code in float64; for t <= 1000 the
    float32 angle t * f carries up to ~3e-5 rad of rounding, the only difference allowed here."""
    from diffusers.models.embeddings import get_timestep_embedding

    t = np.array([0.0, 1.0, 3.5, 500.0, 999.0, 1000.0], np.float32)
    got = np.asarray(sinusoidal_embedding(jnp.asarray(t), 256))
    ref = get_timestep_embedding(torch.from_numpy(t), 256, flip_sin_to_cos=True, downscale_freq_shift=0).numpy()
    np.testing.assert_allclose(got, ref, atol=5e-5, rtol=0)
    angles = np.outer(t.astype(np.float64), 10000.0 ** (-np.arange(128, dtype=np.float64) / 128))
    np.testing.assert_allclose(got, np.concatenate([np.cos(angles), np.sin(angles)], axis=1), atol=5e-5, rtol=0)
    np.testing.assert_allclose(got[:2], ref[:2], atol=1e-7, rtol=0)


@needs_torch
def test_rope_tables_match_diffusers():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    head_dim, f, h, w = 24, 3, 4, 5
    rope = WanRotaryPosEmbed(head_dim, (1, 2, 2), 32)
    cos_ref, sin_ref = (a[0, :, 0].numpy() for a in rope(torch.zeros(1, 1, f, 2 * h, 2 * w)))
    cos, sin = rope_frequencies(grid_positions(f, h, w), head_dim, 32)
    # diffusers repeats each pair's value; pairs are (2i, 2i+1)
    np.testing.assert_array_equal(np.asarray(cos), cos_ref[:, 0::2])
    np.testing.assert_array_equal(np.asarray(sin), sin_ref[:, 1::2])


def test_grid_positions_with_frame_offset():
    pos = grid_positions(2, 2, 3, frame_offset=5)
    assert pos.shape == (12, 3) and pos.dtype == np.int32
    np.testing.assert_array_equal(pos[:6, 0], 5)
    np.testing.assert_array_equal(pos[6:, 0], 6)
    np.testing.assert_array_equal(pos[:6, 1:], [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        rope_frequencies(grid_positions(2, 2, 40), 24, 32)
    # traced positions (e.g. computed inside jit) give the same tables; out of range gives NaN, not a clamp
    traced = jax.jit(lambda p: rope_frequencies(p, 24, 32))(jnp.asarray(pos))
    np.testing.assert_array_equal(np.asarray(traced[0]), np.asarray(rope_frequencies(pos, 24, 32)[0]))
    bad = jax.jit(lambda p: rope_frequencies(p, 24, 32))(jnp.asarray(grid_positions(1, 1, 40)))
    assert np.isnan(np.asarray(bad[0][-1])).any() and not np.isnan(np.asarray(bad[0][0])).any()


def test_stages_compose_to_call_and_frame_offset_equals_longer_video(model):
    """Source and target tokens concatenated along the sequence, target RoPE frames following the
    source frames, is exactly the model run on the video of source frames then target frames."""
    x, t, ctx = _inputs(f=4)
    src, tgt = x[:, :2], x[:, 2:]

    @nnx.jit
    def staged(model, src, tgt, t, ctx):
        ts, grid = model.patchify(src)
        tt, _ = model.patchify(tgt)
        f = grid[0]
        positions = np.concatenate([grid_positions(*grid), grid_positions(*grid, frame_offset=f)])
        rope = model.rope_frequencies(positions)
        e, e0 = model.embed_time(t)
        tokens = model.run_blocks(jnp.concatenate([ts, tt], axis=1), e0, model.embed_text(ctx), rope)
        out = model.head(tokens, e)
        return model.unpatchify(out, (2 * f,) + grid[1:])

    full = nnx.jit(lambda m, x, t, c: m(x, t, c))(model, x, t, ctx)
    np.testing.assert_allclose(np.asarray(staged(model, src, tgt, t, ctx)), np.asarray(full), atol=1e-6, rtol=1e-6)


def test_patchify_unpatchify_shapes(model):
    x, _, _ = _inputs(f=3, h=4, w=6)
    tokens, grid = model.patchify(x)
    assert tokens.shape == (2, 3 * 2 * 3, 24) and grid == (3, 2, 3)
    head_out = jnp.arange(2 * 18 * 16, dtype=jnp.float32).reshape(2, 18, 16)
    video = model.unpatchify(head_out, grid)
    assert video.shape == (2, 3, 4, 6, 4)
    # token (f=0,h=0,w=1) pixel (row 1, col 0) channel 2 = patch entry (ph=1, pw=0, c) = 1*2*4 + 0*4 + 2
    assert float(video[0, 0, 1, 2, 2]) == float(head_out[0, 1, 10])


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((2, 3, 4, 6)), np.zeros(2), np.zeros((2, 5, 16))), r"x must be latents of shape \(B, F, H, W, 4\)"),
        (
            (np.zeros((2, 3, 4, 6, 5)), np.zeros(2), np.zeros((2, 5, 16))),
            r"x must be latents of shape \(B, F, H, W, 4\)",
        ),
        (
            (np.zeros((2, 3, 5, 6, 4)), np.zeros(2), np.zeros((2, 5, 16))),
            r"x \(B, F, H, W, C\) needs F, H, W divisible by patch_size",
        ),
        ((np.zeros((2, 3, 4, 6, 4)), np.zeros(3), np.zeros((2, 5, 16))), r"t must have shape \(B,\) = \(2,\)"),
        ((np.zeros((2, 3, 4, 6, 4)), np.zeros((2, 1)), np.zeros((2, 5, 16))), r"t must have shape \(B,\) = \(2,\)"),
        (
            (np.zeros((2, 3, 4, 6, 4)), np.zeros(2), np.zeros((1, 5, 16))),
            r"context must have shape \(B, L_text, text_dim\) = \(2, L_text, 16\)",
        ),
        (
            (np.zeros((2, 3, 4, 6, 4)), np.zeros(2), np.zeros((2, 5, 8))),
            r"context must have shape \(B, L_text, text_dim\) = \(2, L_text, 16\)",
        ),
        ((np.zeros((2, 3, 4, 6, 4)), np.array([1.0, np.nan]), np.zeros((2, 5, 16))), r"t \(B,\) must be finite"),
    ],
)
def test_bad_inputs_raise_value_error(model, args, match):
    with pytest.raises(ValueError, match=match):
        model(*(jnp.asarray(a, jnp.float32) for a in args))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def remat_setup():
    config = tiny(dim=24, num_heads=2, ffn_dim=32, text_dim=16, num_layers=2)
    x, t, ctx = _inputs(b=1, f=2)

    def grads(cfg):
        m = WanDiT(cfg, rngs=nnx.Rngs(1))
        return nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, t, ctx) ** 2)))(m)

    return config, grads, grads(config)


@pytest.mark.parametrize("policy", ["full"])
def test_remat_policies_give_the_same_gradients(remat_setup, policy):
    config, grads, base = remat_setup
    remat = grads(config.replace(remat_policy=policy))
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(remat)):
        assert _rel(b, a) <= 1e-5


@pytest.mark.parametrize("policy", ["none", "full"])
def test_input_gradient_of_a_merged_model_under_jit(policy):
    """The plain NNX functional pattern: `nnx.merge(graphdef, state)` inside `jax.jit(jax.grad(...,
    argnums=1))`, the gradient to the input only (the state's Variables then come from the outer trace)."""
    config = tiny(dim=24, num_heads=2, ffn_dim=32, text_dim=16, num_layers=2, remat_policy=policy)
    graphdef, state = nnx.split(WanDiT(config, rngs=nnx.Rngs(2)))
    x, t, ctx = _inputs(b=1, f=2, seed=3)

    def loss(state, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x, t, ctx)))

    grad = np.asarray(jax.jit(jax.grad(loss, argnums=1))(state, x))
    assert _rel(grad, np.asarray(jax.grad(loss, argnums=1)(state, x))) <= 1e-5
    # a central finite difference along a random direction (float32: a coarse but independent check)
    v = jnp.asarray(np.random.default_rng(4).standard_normal(x.shape, dtype=np.float32))
    eps = 1e-2
    fd = (float(loss(state, x + eps * v)) - float(loss(state, x - eps * v))) / (2 * eps)
    assert abs(float(np.vdot(grad, np.asarray(v))) - fd) <= 2e-3 * max(abs(fd), 1.0)


def test_backward_modes_give_the_same_gradients():
    """The CPU-tuned backward passes and plain autodiff (what TPU/GPU trace) agree on a whole model:
    every parameter's gradient and the input's, batch 1 (the unit axis the CPU passes are shaped for)."""
    config = tiny(dim=24, num_heads=2, ffn_dim=32, text_dim=16, num_layers=2)
    graphdef, state = nnx.split(WanDiT(config, rngs=nnx.Rngs(5)))
    x, t, ctx = _inputs(b=1, f=2, seed=6)

    def loss(state, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x, t, ctx)))

    grads = {}
    for mode in ("cpu_tuned", "autodiff"):
        with backward_passes(mode):
            grads[mode] = jax.jit(jax.grad(loss, argnums=(0, 1)))(state, x)
    for a, b in zip(jax.tree.leaves(grads["autodiff"]), jax.tree.leaves(grads["cpu_tuned"])):
        assert _rel(np.asarray(b), np.asarray(a)) <= 1e-5


def _compile_seconds(num_layers: int) -> float:
    config = tiny(dim=16, num_heads=2, ffn_dim=16, text_dim=8, in_dim=4, out_dim=4, num_layers=num_layers)
    model = WanDiT(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    x, t, ctx = _inputs(b=1, f=2, h=4, w=4, text=3, text_dim=8)

    def loss(state, x, t, ctx):
        return jnp.sum(nnx.merge(graphdef, state)(x, t, ctx) ** 2)

    start = time.perf_counter()
    jax.jit(jax.value_and_grad(loss)).lower(state, x, t, ctx).compile()
    return time.perf_counter() - start


def test_compile_time_does_not_grow_with_depth():
    """Blocks are scanned, so 30 layers compile (forward + backward) in about the time of 2. On a busy
    shared machine one noisy measurement is re-taken once before failing."""
    two, thirty = [], []
    for _attempt in range(2):
        two.append(_compile_seconds(2))
        thirty.append(_compile_seconds(30))
        print(
            f"compile fwd+bwd: 2 layers {two[-1]:.2f} s, 30 layers {thirty[-1]:.2f} s, ratio {thirty[-1] / two[-1]:.2f}"
        )
        if min(thirty) <= 1.5 * min(two):
            break
    assert min(thirty) <= 1.5 * min(two)


def test_configs_and_json_formats():
    c13 = wan_config.wan_1_3b()
    assert (c13.dim, c13.num_heads, c13.num_layers, c13.ffn_dim, c13.head_dim) == (1536, 12, 30, 8960, 128)
    c14 = wan_config.wan_14b()
    assert (c14.dim, c14.num_heads, c14.num_layers, c14.ffn_dim) == (5120, 40, 40, 13824)
    official = {
        "_class_name": "WanModel",
        "dim": 1536,
        "eps": 1e-06,
        "ffn_dim": 8960,
        "freq_dim": 256,
        "in_dim": 16,
        "model_type": "t2v",
        "num_heads": 12,
        "num_layers": 30,
        "out_dim": 16,
        "text_len": 512,
    }
    assert WanConfig.from_json(official) == c13
    assert WanConfig.from_json(c13.to_diffusers_json()) == c13
    assert WanConfig.from_official_json(c14.to_official_json()) == c14
    with pytest.raises(ValueError, match="model_type='i2v'"):
        WanConfig.from_official_json({**official, "model_type": "i2v"})
    with pytest.raises(ValueError, match="divisible by num_heads"):
        WanConfig(dim=100, num_heads=3, num_layers=1, ffn_dim=8)
    with pytest.raises(ValueError, match="remat_policy must be one of"):
        tiny(remat_policy="sometimes")
    assert tiny(dtype="bfloat16").dtype == jnp.bfloat16
    for name in wan_config.REMAT_POLICIES:
        policy = wan_config.remat_policy_fn(name)
        assert (policy is None) == (name in ("none", "full"))
