"""Wan 2.1 VAE: parity with diffusers `AutoencoderKLWan` (random weights, tiny config, both key layouts),
chunked == whole-sequence, tiling parity, frame-count rules, latent statistics, and the real sheep video."""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file
from torch_reference import HAVE_TORCH, needs_torch

from trackedit_jax.convert.wan_vae import diffusers_to_official, load_wan_vae
from trackedit_jax.media import read_video, resize_video, to_model_range
from trackedit_jax.models.wan.vae import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    TileSpec,
    WanVAE,
    WanVAEConfig,
    denormalize_latents,
    largest_valid_frame_count,
    normalize_latents,
    trim_to_valid_frames,
)

if HAVE_TORCH:
    import diffusers
    import torch

TINY = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True])
H, W = 16, 24  # non-square; multiples of the spatial factor 8


def rel_l2(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def to_torch_video(x: np.ndarray) -> torch.Tensor:  # (B, F, H, W, C) -> (B, C, F, H, W)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))


def to_ours(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 4, 1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random tiny diffusers VAE (gammas and biases perturbed so they matter), saved in both layouts."""
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(**TINY).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("gamma", "bias")):
                p.add_(0.2 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("wan_vae")
    ref.save_pretrained(root / "diffusers")  # diffusion_pytorch_model.safetensors + config.json
    cfg = WanVAEConfig.tiny()
    official = {diffusers_to_official(k, cfg): v.numpy() for k, v in ref.state_dict().items()}
    assert len(official) == len(ref.state_dict())
    assert "encoder.conv1.weight" in official and "decoder.upsamples.2.resample.1.weight" in official
    save_file(official, str(root / "Wan2.1_VAE_tiny.safetensors"))
    models = {
        "diffusers": load_wan_vae(root / "diffusers"),
        "official": load_wan_vae(root / "Wan2.1_VAE_tiny.safetensors"),
    }
    return ref, models, {}


def reference_outputs(reference, frames):
    """diffusers' posterior mean and reconstruction of a random video (cached per frame count)."""
    ref, _, cache = reference
    if frames not in cache:
        video = np.random.default_rng(frames).uniform(-1, 1, (2, frames, H, W, 3)).astype(np.float32)
        with torch.no_grad():
            mu = ref.encode(to_torch_video(video)).latent_dist.mean
            recon = ref.decode(mu).sample
        cache[frames] = video, to_ours(mu), to_ours(recon)
    return cache[frames]


@needs_torch
@pytest.mark.parametrize("layout", ["diffusers", "official"])
@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_decode_match_diffusers(reference, layout, frames):
    model = reference[1][layout]
    video, mu, recon = reference_outputs(reference, frames)
    latents = model.encode(jnp.asarray(video))
    assert latents.shape == (2, 1 + (frames - 1) // 4, H // 8, W // 8, 16)
    err_enc = rel_l2(latents, mu)
    decoded = model.decode(jnp.asarray(mu))
    assert decoded.shape == (2, frames, H, W, 3)
    err_dec = rel_l2(decoded, recon)
    print(f"layout={layout} F={frames}: encode rel L2 {err_enc:.2e}, decode rel L2 {err_dec:.2e}")
    assert err_enc <= 1e-4
    assert err_dec <= 1e-4
    # The comparison means something only if the output is not clamped flat.
    assert np.mean(np.abs(np.asarray(decoded)) < 0.999) > 0.5


@needs_torch
def test_tiled_encode_decode_match_diffusers_tiling(reference):
    ref, models, _ = reference
    model = models["diffusers"]
    # Tiles of 16x24 px every 16 px over a 16x40 frame: widths 24, 24, 8 (latent 3, 3, 1), blends of
    # 1 latent column when encoding and 8 px when decoding. Batch 2, one frame: the full tiles have
    # the shapes the parity test already compiled.
    spec = TileSpec(min_height=16, min_width=24, stride_height=16, stride_width=16)
    ref.enable_tiling(
        tile_sample_min_height=16, tile_sample_min_width=24, tile_sample_stride_height=16, tile_sample_stride_width=16
    )
    try:
        video = np.random.default_rng(4).uniform(-1, 1, (2, 1, 16, 40, 3)).astype(np.float32)
        with torch.no_grad():
            mu = ref.encode(to_torch_video(video)).latent_dist.mean
            recon = ref.decode(mu).sample
    finally:
        ref.disable_tiling()
    latents = model.encode(jnp.asarray(video), tiling=spec)
    err_enc = rel_l2(latents, to_ours(mu))
    decoded = model.decode(jnp.asarray(to_ours(mu)), tiling=spec)
    assert decoded.shape == video.shape
    err_dec = rel_l2(decoded, to_ours(recon))
    print(f"tiled: encode rel L2 {err_enc:.2e}, decode rel L2 {err_dec:.2e}")
    assert err_enc <= 1e-4 and err_dec <= 1e-4


@needs_torch
def test_latent_statistics_are_wans():
    params = inspect.signature(diffusers.AutoencoderKLWan.__init__).parameters
    mean, std = np.array(params["latents_mean"].default), np.array(params["latents_std"].default)
    np.testing.assert_array_equal(WAN21_LATENTS_MEAN, mean)
    np.testing.assert_array_equal(WAN21_LATENTS_STD, std)
    mu = np.random.default_rng(0).normal(size=(1, 2, 3, 4, 16)).astype(np.float32)
    norm = normalize_latents(mu)
    np.testing.assert_allclose(norm, (mu - mean) / std, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(denormalize_latents(norm), mu, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="16"):
        normalize_latents(np.zeros((1, 1, 1, 1, 4), np.float32))


def test_frame_count_rules():
    assert [largest_valid_frame_count(n) for n in (1, 4, 5, 8, 9, 80, 81, 120)] == [1, 1, 5, 5, 9, 77, 81, 117]
    video = np.zeros((1, 8, 16, 16, 3), np.float32)
    assert trim_to_valid_frames(video).shape[1] == 5
    assert trim_to_valid_frames(video[0]).shape[0] == 5
    model = nnx.eval_shape(lambda: WanVAE(WanVAEConfig.tiny(), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"F=8 frames.*4k \+ 1.*trim_to_valid_frames"):
        model.encode(video)
    with pytest.raises(ValueError, match="to_model_range"):
        model.encode(np.zeros((1, 5, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(np.zeros((1, 5, 12, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(B, F, H, W, 3\)"):
        model.encode(np.zeros((5, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(B, f, h, w, 16\)"):
        model.decode(np.zeros((1, 2, 2, 2, 4), np.float32))


def test_real_video_through_the_vae(sheep_video):
    """sheep.mp4: decode -> resize -> trim to 4k + 1 -> encode -> decode (random tiny VAE); the chunked
    causal inference equals running the whole 117-frame sequence at once."""
    frames, fps = read_video(sheep_video)
    assert frames.shape == (120, 406, 724, 3) and fps > 0
    model = WanVAE(WanVAEConfig.tiny(), rngs=nnx.Rngs(0))
    video = to_model_range(resize_video(frames, (32, 56)))[None]  # (1, 120, 32, 56, 3)
    with pytest.raises(ValueError, match="4k \\+ 1"):
        model.encode(video)
    video = trim_to_valid_frames(video)  # the documented trim: the first 117 frames
    assert video.shape == (1, 117, 32, 56, 3)
    latents = model.encode(video)
    assert latents.shape == (1, 30, 4, 7, 16)
    assert np.isfinite(np.asarray(latents)).all() and float(jnp.std(latents)) > 0
    whole = model.encode(video, chunked=False)
    err_enc = rel_l2(latents, whole)
    decoded = model.decode(model.denormalize_latents(model.normalize_latents(latents)))
    assert decoded.shape == (1, 117, 32, 56, 3)
    assert float(decoded.min()) >= -1.0 and float(decoded.max()) <= 1.0
    err_dec = rel_l2(decoded, model.decode(latents, chunked=False))
    print(f"sheep: chunked vs whole-sequence rel L2: encode {err_enc:.2e}, decode {err_dec:.2e}")
    assert err_enc <= 1e-5 and err_dec <= 1e-5
