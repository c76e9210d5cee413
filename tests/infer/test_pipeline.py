"""EditPipeline: grid fitting against OpenCV, frame padding, track pairing, the sampling loop against a
plain Python loop (CFG and no-prompt paths), prompt text vs its embedding, and the real sheep video."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from infer_assets import scene

from trackedit_jax.diffusion.samplers import initial_noise, make_schedule
from trackedit_jax.geometry.conditioning import prepare_track_condition
from trackedit_jax.geometry.projection import project
from trackedit_jax.geometry.types import Camera, Tracks
from trackedit_jax.infer.edit_inputs import fit_camera, fit_to_grid, fit_video, padded_frame_count
from trackedit_jax.infer.pipeline import EditPipeline, EditVelocity, _vae_encode
from trackedit_jax.media import to_model_range


def _translated(tracks: Tracks, offset=(0.4, 0.0, 0.0)) -> Tracks:
    return Tracks(np.asarray(tracks.xyz) + np.asarray(offset, np.float32), tracks.visibility)


@pytest.fixture(scope="module")
def sheep_scene(sheep_frames):
    frames, _ = sheep_frames
    tracks, camera = scene(frames.shape[0], frames.shape[1:3], num_points=40, seed=1)
    return frames, tracks, camera


# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "in_size,out_size,mode",
    [((406, 724), (32, 32), "crop"), ((406, 724), (64, 96), "stretch"), ((48, 40), (96, 112), "crop")],
)
def test_mapped_intrinsics_follow_the_resized_pixels(in_size, out_size, mode):
    """A blob drawn where a point projects in the input lands, after OpenCV resizing and cropping, where
    the mapped camera projects it (intensity centroid)."""
    H, W = in_size
    fit = fit_to_grid(in_size, out_size, mode)
    K = np.array([[0.9 * W, 0, 0.47 * W], [0, 0.85 * W, 0.52 * H], [0, 0, 1]], np.float64)
    cam = Camera(K[None], np.eye(4)[None], in_size)
    mapped = fit_camera(cam, fit)
    sigma = 0.06 * max(H, W)
    yy, xx = np.mgrid[0:H, 0:W]
    rng = np.random.default_rng(0)
    for _ in range(4):
        xyz = np.array([[[rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), 2.0]]])
        uv, _ = project(xyz, cam)
        u, v = uv[0, 0]
        blob = 200.0 * np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma**2))
        img = np.repeat(blob[None, ..., None], 3, -1).astype(np.float32)
        out = fit_video(img, fit)[0, ..., 0].astype(np.float64)
        assert out.shape == out_size
        oy, ox = np.mgrid[0 : out_size[0], 0 : out_size[1]]
        centroid = np.array([(out * ox).sum(), (out * oy).sum()]) / out.sum()
        expect, _ = project(xyz, mapped)
        np.testing.assert_allclose(centroid, expect[0, 0], atol=0.08)


def test_fit_to_grid_keeps_aspect_when_cropping():
    fit = fit_to_grid((406, 724), (32, 32), "crop")
    assert fit.resized == (32, 57) and fit.offset == (0, 12) and fit.window_in_input == (406, 406)
    assert fit_to_grid((406, 724), (32, 32), "stretch").window_in_input == (406, 724)
    assert [padded_frame_count(n) for n in (1, 2, 5, 6, 9, 10)] == [1, 5, 5, 9, 9, 13]
    with pytest.raises(ValueError, match="resize must be one of"):
        fit_to_grid((4, 4), (16, 16), "pad")
    with pytest.raises(ValueError, match="aspect ratio"):
        fit_camera(Camera(np.eye(3)[None], np.eye(4)[None], (100, 100)), fit)


# ---------------------------------------------------------------------------------------------- inputs


def test_prepare_pads_frames_pairs_by_ids_and_caps_tracks(tiny_pipe, sheep_scene):
    frames, tracks, camera = sheep_scene
    ids = np.array([0, 0, 1, 2, 5], np.int32)
    target = Tracks(np.asarray(tracks.xyz)[:, ids] + 0.1, np.asarray(tracks.visibility)[:, ids], ids)
    inp = tiny_pipe.prepare(frames, tracks, camera, target, camera, max_frames=6)
    assert inp.num_frames == 6 and inp.video.shape == (9, 32, 32, 3)
    for later in (6, 7, 8):  # padding repeats the last used frame everywhere
        np.testing.assert_array_equal(inp.video[later], inp.video[5])
        np.testing.assert_array_equal(inp.target_tracks.xyz[later], inp.target_tracks.xyz[5])
        np.testing.assert_array_equal(inp.source_camera.intrinsics[later], inp.source_camera.intrinsics[5])
    np.testing.assert_array_equal(inp.source_tracks.xyz[:6], np.asarray(tracks.xyz)[:6][:, ids])
    assert inp.source_camera.image_size == (32, 32) and inp.trimmed().video.shape[0] == 6

    many = scene(frames.shape[0], frames.shape[1:3], num_points=100, seed=2)[0]  # > max_tracks = 48
    inp = tiny_pipe.prepare(frames, many, camera, _translated(many), camera)
    keep = inp.point_indices
    assert keep.shape == (48,) and np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(inp.source_tracks.xyz, np.asarray(many.xyz)[:9][:, keep])
    np.testing.assert_allclose(inp.target_tracks.xyz, np.asarray(many.xyz)[:9][:, keep] + [0.4, 0, 0], atol=1e-6)


def test_bad_inputs_are_named(tiny_pipe, sheep_scene):
    frames, tracks, camera = sheep_scene
    with pytest.raises(ValueError, match="frame count mismatch"):
        tiny_pipe.prepare(frames[:50], tracks, camera, tracks, camera)
    nan = np.asarray(tracks.xyz).copy()
    nan[3, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tiny_pipe.prepare(frames, nan, camera, tracks, camera)
    fewer = Tracks(np.asarray(tracks.xyz)[:, :10], np.asarray(tracks.visibility)[:, :10])
    with pytest.raises(ValueError, match="no ids"):
        tiny_pipe.prepare(frames, tracks, camera, fewer, camera)
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny_pipe.prepare(frames, tracks, camera, tracks, camera, size=(40, 40))
    with pytest.raises(ValueError, match="video must be"):
        tiny_pipe.prepare(frames[..., 0], tracks, camera, tracks, camera)
    bare = EditPipeline(tiny_pipe.model, tiny_pipe.vae, tiny_pipe.config)  # no text encoder
    with pytest.raises(ValueError, match="no text encoder"):
        bare.encode_prompt("a sheep")
    with pytest.raises(ValueError, match=r"prompt_embedding must be \(L, 32\)"):
        bare._text("", np.zeros((4, 7)))


# ---------------------------------------------------------------------------------------------- sampling


def _reference_latents(pipe, inputs, context, *, guidance, num_steps, seed, shift):
    """Euler with CFG written as a plain Python loop of eager model calls (no sampler code)."""
    model = pipe.model
    video = jnp.asarray(to_model_range(inputs.video))[None]
    z_src = _vae_encode(pipe.vae_graphdef, pipe.vae_state, video)  # the VAE is not under test here
    cond = prepare_track_condition(
        inputs.source_tracks, inputs.source_camera, inputs.target_tracks, inputs.target_camera
    )
    cache = model.encode_source(
        z_src, cond.source[None], cond.target[None], cond.source_valid[None], cond.target_valid[None]
    )
    step = nnx.jit(lambda m, x, t, c, cache: m(x, t, c, cache))
    call = lambda x, t, c: step(model, x, t, c, cache)  # noqa: E731
    sched = make_schedule(num_steps, shift=shift, kind="wan")
    x = initial_noise(seed, z_src.shape)
    for i in range(num_steps):
        t = jnp.full((1,), sched.timesteps[i])
        v = call(x, t, context)
        if guidance is not None:
            v_u = call(x, t, jnp.zeros_like(context))
            v = v_u + guidance * (v - v_u)
        x = x + (sched.sigmas[i + 1] - sched.sigmas[i]) * v
    return np.asarray(x)


def test_sampling_with_cfg_and_without_prompt_matches_a_python_loop(tiny_parts, sheep_scene):
    config, model, vae, _, _ = tiny_parts
    frames, tracks, camera = sheep_scene
    traced_batches = []

    @dataclasses.dataclass(frozen=True)
    class Recording(EditVelocity):
        def __call__(self, state, cache, x_t, t, cond):
            traced_batches.append(int(x_t.shape[0]))  # runs when the loop body is traced
            return super().__call__(state, cache, x_t, t, cond)

    pipe = EditPipeline(model, vae, config)
    pipe.velocity_fn = Recording(pipe.graphdef)
    inputs = pipe.prepare(frames, tracks, camera, _translated(tracks), camera)
    emb = jax.random.normal(jax.random.PRNGKey(7), (1, config.text_len, config.wan.text_dim))

    out = pipe.generate(inputs, prompt_embedding=emb, guidance=3.0, num_steps=4, seed=1, solver="euler", shift=3.0)
    assert traced_batches == [2] and out.settings["cfg"]  # one call of batch 2 (cond + null text) per step
    ref = _reference_latents(pipe, inputs, emb, guidance=3.0, num_steps=4, seed=1, shift=3.0)
    np.testing.assert_allclose(np.asarray(out.latents), ref, atol=1e-4, rtol=0)

    traced_batches.clear()
    plain = pipe.generate(inputs, guidance=3.0, num_steps=4, seed=1, solver="euler", shift=3.0)
    assert traced_batches == [1] and not plain.settings["cfg"]  # no prompt: one call of batch 1 per step
    ref = _reference_latents(pipe, inputs, pipe.null_text(), guidance=None, num_steps=4, seed=1, shift=3.0)
    np.testing.assert_allclose(np.asarray(plain.latents), ref, atol=1e-4, rtol=0)
    assert np.abs(np.asarray(out.latents) - np.asarray(plain.latents)).max() > 1e-3  # the text matters


def test_prompt_text_equals_its_embedding(tiny_pipe, tiny_parts, sheep_scene):
    from trackedit_jax.models.wan.umt5 import encode_prompts

    frames, tracks, camera = sheep_scene
    inputs = tiny_pipe.prepare(frames, tracks, camera, _translated(tracks), camera)
    prompt = "a sheep"
    with_text = tiny_pipe.generate(inputs, prompt, num_steps=3, guidance=4.0, seed=3)
    emb, lengths = encode_prompts(tiny_pipe.text_encoder, tiny_pipe.tokenizer, [prompt])
    assert emb.shape == (1, 16, 32) and 1 < lengths[0] < 16
    with_emb = tiny_pipe.generate(inputs, prompt_embedding=emb[0], num_steps=3, guidance=4.0, seed=3)
    np.testing.assert_array_equal(np.asarray(with_text.latents), np.asarray(with_emb.latents))
    np.testing.assert_array_equal(with_text.video, with_emb.video)


def test_sheep_edit_end_to_end_and_round_trip(tiny_pipe, tiny_parts, sheep_scene):
    """The real video through the pipeline loaded from disk and the one built from the in-memory parts."""
    config, model, vae, encoder, _ = tiny_parts
    frames, tracks, camera = sheep_scene
    target = _translated(tracks)
    out = tiny_pipe.edit(frames, tracks, camera, target, camera, num_steps=3, seed=0, progress=True)
    assert out.video.shape == (9, 32, 32, 3) and out.video.dtype == np.uint8
    assert out.video.std() > 1.0 and out.settings["frames_used"] == 9 and out.settings["model_grid"] == [32, 32]
    assert out.settings["shift"] == config.sample_shift and not out.settings["cfg"]
    assert out.side_by_side().shape == (9, 32, 4 * 32 + 3 * 4, 3)

    in_memory = EditPipeline(model, vae, config)(frames, tracks, camera, target, camera, num_steps=3, seed=0)
    np.testing.assert_array_equal(in_memory, out.video)  # save -> load changes nothing
    # without num_steps, the model's own default step count
    own = EditPipeline(model, vae, dataclasses.replace(config, sample_steps=3)).edit(
        frames, tracks, camera, target, camera, seed=0
    )
    assert own.settings["num_steps"] == 3
    np.testing.assert_array_equal(own.video, out.video)
    back = tiny_pipe(frames, tracks, camera, target, camera, num_steps=3, seed=0, output_size="input")
    assert back.shape == (9, 406, 406, 3)
    other_seed = tiny_pipe(frames, tracks, camera, target, camera, num_steps=3, seed=1)
    assert np.abs(other_seed.astype(int) - out.video.astype(int)).max() > 0


def test_a_one_step_model_refuses_more_steps(tiny_parts, sheep_scene):
    """A model trained only at pure noise (`PretrainedConfig.one_step_only`) samples in one step: a request
    for more is refused with one line, before any sampling."""
    config, model, vae, _, _ = tiny_parts
    frames, tracks, camera = sheep_scene
    one = EditPipeline(model, vae, dataclasses.replace(config, sample_steps=1, one_step_only=True))
    with pytest.raises(ValueError, match="trained only at pure noise and samples in one step; got 3 steps"):
        one.edit(frames, tracks, camera, _translated(tracks), camera, num_steps=3)


def test_an_untrained_warp_prior_model_returns_the_warp_of_its_inputs():
    """A `warp_prior` + `source_skip` model with its zero head predicts the warp's latents at every step,
    so through the exact space-to-depth VAE the pipeline returns `geometry.warp` of its inputs (computed
    here independently, with every track and the given depth); a depth of the wrong size is refused; with a
    saturated source gate the same pipeline returns the source instead."""
    from infer_assets import tiny_config

    from trackedit_jax.geometry.warp import coverage_video, warp_video
    from trackedit_jax.models.edit_model import EditByTrack
    from trackedit_jax.models.space_to_depth import SpaceToDepthConfig, SpaceToDepthVAE
    from trackedit_jax.models.wan.config import WanConfig

    F, H, W = 9, 32, 32
    z = 3 * 4 * 4 * 4
    wan = WanConfig(
        dim=32, num_heads=2, num_layers=1, ffn_dim=64, freq_dim=32, in_dim=z, out_dim=z, text_dim=32, text_len=16
    )
    config = tiny_config(
        wan=wan, vae=SpaceToDepthConfig(), source_skip=True, warp_prior=True, prediction="sample", max_tracks=16
    )
    model = EditByTrack(wan, config.conditioner, source_skip=True, warp_prior=True, rngs=nnx.Rngs(0))
    pipe = EditPipeline(model, SpaceToDepthVAE(config.vae), config)

    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (1, H, W, 3), dtype=np.uint8), F, 0)
    tracks, camera = scene(F, (H, W), num_points=40, seed=2)
    target = _translated(tracks, (0.3, 0.1, 0.0))
    depth = rng.uniform(3.0, 6.0, (F, H, W)).astype(np.float32)
    for kw in ({}, {"source_depth": depth}):
        out = pipe.edit(frames, tracks, camera, target, camera, num_steps=3, seed=4, **kw)
        expected = warp_video(frames, tracks, camera, target, camera, **kw)
        assert out.inputs.warp.shape == (F, H, W, 3) and out.inputs.point_indices is not None  # 40 tracks > 16
        np.testing.assert_array_equal(out.inputs.warp, expected)
        assert np.abs(out.video.astype(int) - expected.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="source_depth must have the video's frame size"):
        pipe.prepare(frames, tracks, camera, target, camera, source_depth=depth[:, :16])

    # a model that also reads the warp's coverage is given `coverage_video` of its coverage and displacement
    config = dataclasses.replace(config, warp_coverage=True)
    model = EditByTrack(
        wan, config.conditioner, source_skip=True, warp_prior=True, warp_coverage=True, rngs=nnx.Rngs(0)
    )
    pipe = EditPipeline(model, SpaceToDepthVAE(config.vae), config)
    out = pipe.edit(frames, tracks, camera, target, camera, num_steps=2, seed=4, source_depth=depth)
    expected, coverage, displacement = warp_video(
        frames, tracks, camera, target, camera, source_depth=depth, return_coverage=True, return_displacement=True
    )
    assert coverage.any() and displacement.any()  # the translation uncovers and moves something
    np.testing.assert_array_equal(out.inputs.warp, expected)
    np.testing.assert_array_equal(out.inputs.warp_coverage, coverage_video(coverage, displacement))
    assert np.abs(out.video.astype(int) - expected.astype(int)).max() <= 1

    # a gated model whose gate is saturated takes every value from the source instead of the warp
    config = dataclasses.replace(config, warp_coverage=False, source_gate=True)
    model = EditByTrack(wan, config.conditioner, source_skip=True, warp_prior=True, source_gate=True, rngs=nnx.Rngs(0))
    model.gate_head.bias[...] = jnp.full_like(model.gate_head.bias[...], 40.0)
    pipe = EditPipeline(model, SpaceToDepthVAE(config.vae), config)
    out = pipe.edit(frames, tracks, camera, target, camera, num_steps=2, seed=4, source_depth=depth)
    assert np.abs(out.inputs.warp.astype(int) - frames.astype(int)).max() > 50  # the warp is not the source
    assert np.abs(out.video.astype(int) - frames.astype(int)).max() <= 1

    # a gate that reads the coverage clip (gate = sigmoid(100 * its latent)) takes the source exactly where
    # the clip's value is high and the warp where it is low, value by value
    config = dataclasses.replace(config, warp_coverage=True, gate_coverage=True)
    model = EditByTrack(
        wan,
        config.conditioner,
        rngs=nnx.Rngs(0),
        source_skip=True,
        warp_prior=True,
        warp_coverage=True,
        source_gate=True,
        gate_coverage=True,
    )
    model.gate_head.bias[...] = jnp.zeros_like(model.gate_head.bias[...])
    model.gate_prior.kernel[...] = 100.0 * jnp.eye(model.gate_prior.kernel[...].shape[0])
    pipe = EditPipeline(model, SpaceToDepthVAE(config.vae), config)
    out = pipe.edit(frames, tracks, camera, target, camera, num_steps=2, seed=4, source_depth=depth)
    cov = out.inputs.warp_coverage[:F].astype(int)
    expected = np.where(cov > 127, frames, out.inputs.warp).astype(int)
    clear = np.abs(cov - 127.5) > 8  # sigmoid(100 * latent) is within 1e-5 of 0 or 1 there
    clear[0] = False  # frame 0 is decoded as the mean of its four copies
    assert (cov[clear] > 127).any() and (cov[clear] < 128).any()
    assert np.abs(out.video.astype(int) - expected)[clear].max() <= 1
