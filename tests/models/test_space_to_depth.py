"""The space-to-depth autoencoder: exact inverse, layout, Wan frame grouping, and the inference directory."""

import jax.numpy as jnp
import numpy as np
import pytest

from trackedit_jax.models.space_to_depth import SpaceToDepthConfig, SpaceToDepthVAE


def test_decode_of_encode_is_the_video_exactly():
    vae = SpaceToDepthVAE(SpaceToDepthConfig(spatial_factor=4, temporal_factor=4))
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, (2, 9, 16, 24, 3)).astype(np.float32)
    z = vae.encode(jnp.asarray(video))
    assert z.shape == (2, 3, 4, 6, 192) and vae.config.z_dim == 192
    assert vae.config.latent_frames(9) == 3 and vae.config.video_frames(3) == 9
    np.testing.assert_array_equal(np.asarray(vae.decode(z)), video)
    np.testing.assert_array_equal(np.asarray(vae.denormalize_latents(vae.normalize_latents(z))), np.asarray(z))
    np.testing.assert_allclose(np.asarray(vae.normalize_latents(z)), np.asarray(z) / 0.5)


def test_a_latent_pixel_is_a_block_of_pixels_of_its_frame_group():
    s, t = 2, 4
    vae = SpaceToDepthVAE(SpaceToDepthConfig(spatial_factor=s, temporal_factor=t))
    video = np.arange(1 * 5 * 4 * 6 * 3, dtype=np.float32).reshape(1, 5, 4, 6, 3)
    z = np.asarray(vae.encode_frames(jnp.asarray(video)))
    # latent frame 0: frame 0 repeated t times; latent frame 1: frames 1..4
    block = z[0, 1, 1, 2].reshape(t, s, s, 3)
    np.testing.assert_array_equal(block, video[0, 1:5, 2:4, 4:6])
    first = z[0, 0, 0, 0].reshape(t, s, s, 3)
    np.testing.assert_array_equal(first, np.repeat(video[0, :1, 0:2, 0:2], t, axis=0))


def test_decoding_averages_the_copies_of_frame_zero_and_clamps():
    vae = SpaceToDepthVAE(SpaceToDepthConfig(spatial_factor=1, temporal_factor=2))
    z = np.zeros((1, 2, 1, 1, 6), np.float32)
    z[0, 0, 0, 0] = [0.2, 0.4, 0.6, 0.4, 0.6, 0.8]  # two copies of frame 0 that disagree
    z[0, 1, 0, 0] = [3.0, 0, 0, -3.0, 0, 0]
    out = np.asarray(vae.decode(jnp.asarray(z)))
    np.testing.assert_allclose(out[0, 0, 0, 0], [0.3, 0.5, 0.7], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1:, 0, 0, 0], [1.0, -1.0])


def test_bad_shapes_are_refused_with_the_requirement():
    vae = SpaceToDepthVAE()
    with pytest.raises(ValueError, match="4k \\+ 1"):
        vae.encode(jnp.zeros((1, 6, 8, 8, 3)))
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(jnp.zeros((1, 5, 10, 8, 3)))
    with pytest.raises(ValueError, match="192"):
        vae.decode(jnp.zeros((1, 2, 2, 2, 16)))
    with pytest.raises(ValueError):
        SpaceToDepthConfig(scale=0.0)


def test_inference_directory_round_trip_without_vae_weights(tmp_path):
    from configs.demo_cpu import get_config
    from trackedit_jax.infer.pretrained import load_pretrained, save_pretrained
    from trackedit_jax.train import build

    config = get_config()
    config.model.wan.update(dim=32, num_heads=2, num_layers=1, ffn_dim=64)
    config.model.conditioner.update(dim=16, heads=2)
    model = build.build_edit_model(config, seed=0)
    vae = build.build_vae(config)
    out = save_pretrained(tmp_path / "m", config, model, vae)
    assert not (out / "vae").exists()
    loaded = load_pretrained(out)
    assert isinstance(loaded.vae, SpaceToDepthVAE) and loaded.vae.config == vae.config
    assert loaded.config.num_frames == 17 and loaded.config.height == 64
