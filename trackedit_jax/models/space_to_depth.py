"""A fixed, exactly invertible "autoencoder": pixels folded into channels (space-to-depth).

    latents = fold(video) / scale          (B, 1 + (F-1)/t, H/s, W/s, 3 t s^2)
    video   = unfold(latents * scale)      exact: decode(encode(x)) == x for every x in [-1, 1]

Each latent pixel holds an s x s block of pixels of t consecutive frames (Wan's frame grouping: frame 0
alone, then groups of t). Frame 0 is repeated t times so every latent frame has the same channels;
decoding averages those copies, which is exact on encoded input and a projection on anything else.

It has the interface of `WanVAE` (`encode_frames`, `decode_frames`, `encode`, `decode`,
`normalize_latents`, `denormalize_latents`, `config.spatial_factor / temporal_factor / z_dim /
latent_frames / video_frames`), so the edit model, training and the pipelines use it unchanged. It has
no parameters: a model trained on it works in pixel space, which is what a small CPU-trained model
needs to produce watchable edits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from trackedit_jax.models.wan.vae import check_latents

KIND = "space_to_depth"


@dataclasses.dataclass(frozen=True)
class SpaceToDepthConfig:
    """spatial_factor s, temporal_factor t (frames per latent frame after frame 0), scale: latents are
    pixels in [-1, 1] divided by `scale` (0.5: roughly unit variance, like normalised Wan latents)."""

    spatial_factor: int = 4
    temporal_factor: int = 4
    scale: float = 0.5
    kind: str = KIND

    def __post_init__(self):
        if self.spatial_factor < 1 or self.temporal_factor < 1:
            raise ValueError(f"spatial_factor and temporal_factor must be >= 1; got {self}")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive; got {self.scale}")
        if self.kind != KIND:
            raise ValueError(f"kind must be {KIND!r}; got {self.kind!r}")

    @property
    def z_dim(self) -> int:
        return 3 * self.temporal_factor * self.spatial_factor**2

    def latent_frames(self, num_frames: int) -> int:
        return 1 + (num_frames - 1) // self.temporal_factor

    def video_frames(self, num_latent_frames: int) -> int:
        return 1 + (num_latent_frames - 1) * self.temporal_factor


class SpaceToDepthVAE(nnx.Module):
    """The space-to-depth autoencoder (module docstring); a parameter-free `nnx.Module`."""

    def __init__(self, config: SpaceToDepthConfig | None = None):
        self.config = config or SpaceToDepthConfig()

    def _check_video(self, video) -> None:
        s, t = self.config.spatial_factor, self.config.temporal_factor
        if getattr(video, "ndim", None) != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must be (B, F, H, W, 3) in [-1, 1]; got shape {getattr(video, 'shape', None)}")
        B, F, H, W, _ = video.shape
        if F < 1 or (F - 1) % t:
            raise ValueError(f"video has F={F} frames; this autoencoder needs F = {t}k + 1")
        if H % s or W % s or H == 0 or W == 0:
            raise ValueError(f"video height and width must be positive multiples of {s}; got (H, W) = ({H}, {W})")

    def encode_frames(self, video: jax.Array, *, chunked: bool = True) -> jax.Array:
        """(B, F, H, W, 3) float -> (B, f, H/s, W/s, z_dim) float32 (un-normalised: the pixels)."""
        del chunked  # every latent frame depends on its own frames only
        s, t = self.config.spatial_factor, self.config.temporal_factor
        video = jnp.asarray(video, jnp.float32)
        B, F, H, W, C = video.shape
        x = jnp.concatenate([jnp.repeat(video[:, :1], t, axis=1), video[:, 1:]], axis=1)
        f = x.shape[1] // t
        x = x.reshape(B, f, t, H // s, s, W // s, s, C)
        x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # (B, f, h, w, t, s, s, C)
        return x.reshape(B, f, H // s, W // s, t * s * s * C)

    def decode_frames(self, latents: jax.Array, *, chunked: bool = True, clamp: bool = True) -> jax.Array:
        """(B, f, h, w, z_dim) -> (B, 1 + t (f - 1), s h, s w, 3), clamped to [-1, 1] unless clamp=False."""
        del chunked
        s, t = self.config.spatial_factor, self.config.temporal_factor
        latents = jnp.asarray(latents, jnp.float32)
        B, f, h, w, _ = latents.shape
        x = latents.reshape(B, f, h, w, t, s, s, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        x = x.reshape(B, f * t, h * s, w * s, 3)
        video = jnp.concatenate([jnp.mean(x[:, :t], axis=1, keepdims=True), x[:, t:]], axis=1)
        return jnp.clip(video, -1.0, 1.0) if clamp else video

    def encode(self, video, *, chunked: bool = True, tiling=None) -> jax.Array:
        """Validated `encode_frames` (tiling is accepted for interface parity and changes nothing)."""
        self._check_video(video)
        return self.encode_frames(video)

    def decode(self, latents, *, chunked: bool = True, tiling=None) -> jax.Array:
        """Validated `decode_frames`."""
        check_latents(latents, self.config.z_dim)
        return self.decode_frames(latents)

    def normalize_latents(self, latents):
        return (jnp.asarray(latents, jnp.float32) / self.config.scale).astype(jnp.asarray(latents).dtype)

    def denormalize_latents(self, latents):
        return (jnp.asarray(latents, jnp.float32) * self.config.scale).astype(jnp.asarray(latents).dtype)
