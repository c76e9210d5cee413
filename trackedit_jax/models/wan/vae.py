"""The Wan 2.1 causal 3D video VAE in Flax NNX, channels-last.

Video (B, F, H, W, 3) in [-1, 1] with F = 4k + 1  <->  latents (B, 1 + (F - 1) // 4, H / 8, W / 8, 16).

Every temporal convolution is causal: output frame t sees input frames <= t, with zero frames before
the start. That makes the computation separable in time, and we use it the way the reference does:

* encode: frame 0 alone, then chunks of 4 frames;
* decode: one latent frame at a time;

each step carrying a small *causal cache* (the last 2 input frames of every temporal convolution, the
last frame before each temporal downsampling). Peak memory is then one chunk's activations plus the
caches, whatever the number of frames. The chunks after the first run under one `lax.scan`, so a whole
encode or decode is one compiled function whose compile time does not depend on the frame count.

`chunked=False` runs the same layers over the whole sequence at once (memory grows with F); it computes
the same numbers and exists as the reference the chunked path is tested against.

Cache convention used by every module (`vae_layers`): ``module(x, cache) -> (y, new_cache)``, where
``cache=None`` means "the sequence starts with x" (the same as all-zero history for the causal
convolutions). The cache pytree returned by the first chunk has the same structure and shapes as the
one returned by every later chunk, which is what lets the later chunks run under `lax.scan`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trackedit_jax.models.wan.vae_layers import CausalConv3d, Decoder3d, Encoder3d

# The 16 per-channel statistics of Wan 2.1 posterior means (official `WanVAE`, diffusers
# `AutoencoderKLWan` config defaults). Normalised latents are (mu - mean) / std.
WAN21_LATENTS_MEAN = (
    -0.7571,
    -0.7089,
    -0.9113,
    0.1075,
    -0.1745,
    0.9653,
    -0.1517,
    1.5508,
    0.4134,
    -0.0715,
    0.5517,
    -0.3632,
    -0.1922,
    -0.9497,
    0.2503,
    -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184,
    1.4541,
    2.3275,
    2.6558,
    1.2196,
    1.7708,
    2.6052,
    2.0743,
    3.2687,
    2.1526,
    2.8652,
    1.5579,
    1.6382,
    1.1253,
    2.8251,
    1.9160,
)

# Frames per encoder chunk after the first frame (the reference's temporal grouping).
ENCODE_CHUNK = 4


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of a Wan 2.1 VAE (names as in the reference and diffusers `AutoencoderKLWan`).

    Attributes:
      base_dim: channels of the first level (96 in Wan 2.1).
      z_dim: latent channels (16).
      dim_mult: channel multiplier per level; len(dim_mult) - 1 spatial halvings.
      num_res_blocks: residual blocks per encoder level (the decoder uses one more).
      attn_scales: scales with extra attention blocks; Wan 2.1 uses none and this port supports none
        (attention lives in the middle blocks only).
      temperal_downsample: per downsampling, whether time is halved too ((False, True, True) = 4x).
      latents_mean, latents_std: per-channel statistics for `normalize_latents` (z_dim values each).
    """

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self):
        object.__setattr__(self, "dim_mult", tuple(int(m) for m in self.dim_mult))
        object.__setattr__(self, "attn_scales", tuple(float(s) for s in self.attn_scales))
        object.__setattr__(self, "temperal_downsample", tuple(bool(t) for t in self.temperal_downsample))
        object.__setattr__(self, "latents_mean", tuple(float(v) for v in self.latents_mean))
        object.__setattr__(self, "latents_std", tuple(float(v) for v in self.latents_std))
        if self.base_dim < 1 or self.z_dim < 1 or self.num_res_blocks < 1:
            raise ValueError(f"base_dim, z_dim and num_res_blocks must be >= 1; got {self}")
        if len(self.dim_mult) < 1 or min(self.dim_mult) < 1:
            raise ValueError(f"dim_mult must be positive integers; got {self.dim_mult}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} entries; "
                f"got {self.temperal_downsample}"
            )
        if ENCODE_CHUNK % self.temporal_factor:
            raise ValueError(f"the temporal factor {self.temporal_factor} must divide the chunk of {ENCODE_CHUNK}")
        if self.attn_scales:
            raise ValueError(
                "attn_scales must be empty: Wan 2.1 has attention only in the middle blocks, and the "
                f"diffusers and official layouts disagree about extra ones; got {self.attn_scales}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(
                f"latents_mean/latents_std need z_dim={self.z_dim} values; got "
                f"{len(self.latents_mean)} and {len(self.latents_std)}"
            )

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    @classmethod
    def wan21(cls) -> WanVAEConfig:
        """The released Wan 2.1 VAE (`Wan2.1_VAE.pth`, diffusers `Wan-AI/Wan2.1-*-Diffusers/vae`)."""
        return cls()

    @classmethod
    def tiny(cls, **overrides) -> WanVAEConfig:
        """A few-thousand-parameter VAE with the Wan 2.1 topology (tests, CPU demos)."""
        kw = dict(base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1)
        kw.update(overrides)
        if kw["z_dim"] != 16 and "latents_mean" not in kw:
            kw["latents_mean"] = (0.0,) * kw["z_dim"]
            kw["latents_std"] = (1.0,) * kw["z_dim"]
        return cls(**kw)

    def latent_frames(self, num_frames: int) -> int:
        return 1 + (num_frames - 1) // self.temporal_factor

    def video_frames(self, num_latent_frames: int) -> int:
        return 1 + (num_latent_frames - 1) * self.temporal_factor


# ----------------------------------------------------------------------------------------------
# Frame-count helpers


def is_valid_frame_count(num_frames: int) -> bool:
    """True when `num_frames` = 4k + 1 (k >= 0), the counts the Wan VAE encodes."""
    return num_frames >= 1 and (num_frames - 1) % ENCODE_CHUNK == 0


def largest_valid_frame_count(num_frames: int) -> int:
    """The largest 4k + 1 <= num_frames (num_frames >= 1)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1; got {num_frames}")
    return ENCODE_CHUNK * ((num_frames - 1) // ENCODE_CHUNK) + 1


def trim_to_valid_frames(video, *, axis: int = -4):
    """Drop trailing frames so the frame count is the largest 4k + 1 (the VAE's requirement).

    `axis` is the frame axis: -4 fits both (F, H, W, C) and (B, F, H, W, C). Works on numpy and jax arrays.
    """
    n = video.shape[axis]
    keep = largest_valid_frame_count(n)
    if keep == n:
        return video
    index = [slice(None)] * video.ndim
    index[axis] = slice(0, keep)
    return video[tuple(index)]


# ----------------------------------------------------------------------------------------------
# Latent normalisation


def _stats(mean, std, channels: int):
    mean = jnp.asarray(WAN21_LATENTS_MEAN if mean is None else mean, jnp.float32)
    std = jnp.asarray(WAN21_LATENTS_STD if std is None else std, jnp.float32)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(
            f"latents have {channels} channels but mean/std have shapes {mean.shape}/{std.shape}; "
            "pass the statistics of your VAE"
        )
    return mean, std


def normalize_latents(latents: jax.Array, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """(mu - mean) / std per channel: posterior means -> the latents the Wan DiT works on.

    latents: (..., C) channels-last; mean/std default to Wan 2.1's 16 values. Same dtype out.
    """
    latents = jnp.asarray(latents)
    m, s = _stats(mean, std, latents.shape[-1])
    return ((latents.astype(jnp.float32) - m) / s).astype(latents.dtype)


def denormalize_latents(latents: jax.Array, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """The inverse of `normalize_latents`: latents * std + mean per channel."""
    latents = jnp.asarray(latents)
    m, s = _stats(mean, std, latents.shape[-1])
    return (latents.astype(jnp.float32) * s + m).astype(latents.dtype)


# ----------------------------------------------------------------------------------------------
# The VAE


@dataclasses.dataclass(frozen=True)
class TileSpec:
    """Spatial tiling of encode/decode (sizes in pixels, like diffusers' `enable_tiling`).

    Tiles of `min_height` x `min_width` start every `stride_height` / `stride_width` pixels; the
    overlap is blended linearly. Frames no larger than one tile are not tiled. Both sizes must be
    multiples of the VAE's spatial factor (8).
    """

    min_height: int = 256
    min_width: int = 256
    stride_height: int = 192
    stride_width: int = 192


def check_latents(latents, z_dim: int) -> None:
    """Raise ValueError unless `latents` is (B, f, h, w, z_dim) with f >= 1 (any autoencoder's latents)."""
    if getattr(latents, "ndim", None) != 5 or latents.shape[-1] != z_dim or latents.shape[1] < 1:
        raise ValueError(
            f"latents must be (B, f, h, w, {z_dim}) with f >= 1; got shape {getattr(latents, 'shape', None)}"
        )


class WanVAE(nnx.Module):
    """The Wan 2.1 VAE. Channels-last; see the module docstring for the chunked causal inference.

    Submodules carry the diffusers names (encoder, quant_conv, post_quant_conv, decoder, ...), which
    `trackedit_jax.convert.wan_vae` maps from both the diffusers and the official key layouts.
    """

    def __init__(
        self, config: WanVAEConfig | None = None, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32
    ):
        self.config = config or WanVAEConfig()
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        z = self.config.z_dim
        self.encoder = Encoder3d(self.config, **kw)
        self.quant_conv = CausalConv3d(2 * z, 2 * z, (1, 1, 1), **kw)
        self.post_quant_conv = CausalConv3d(z, z, (1, 1, 1), **kw)
        self.decoder = Decoder3d(self.config, **kw)
        self.dtype = dtype

    # -- validation -------------------------------------------------------------------------
    def _check_video(self, video) -> None:
        f = self.config.spatial_factor
        if getattr(video, "ndim", None) != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must be (B, F, H, W, 3) in [-1, 1]; got shape {getattr(video, 'shape', None)}")
        if not jnp.issubdtype(video.dtype, jnp.floating):
            raise ValueError(
                f"video must be float in [-1, 1]; got dtype {video.dtype} (for uint8 frames use "
                "trackedit_jax.media.to_model_range)"
            )
        B, F, H, W, _ = video.shape
        if not is_valid_frame_count(F):
            raise ValueError(
                f"video has F={F} frames; the Wan VAE needs F = 4k + 1 (1, 5, 9, ..., 81). Use "
                f"`trim_to_valid_frames` to keep the first {largest_valid_frame_count(F)} frames."
                if F >= 1
                else f"video has no frames: shape {video.shape}"
            )
        if H % f or W % f or H == 0 or W == 0:
            raise ValueError(f"video height and width must be positive multiples of {f}; got (H, W) = ({H}, {W})")

    def _check_latents(self, latents) -> None:
        check_latents(latents, self.config.z_dim)

    # -- un-jitted maths (called inside jit) ---------------------------------------------------
    def encode_frames(self, video: jax.Array, *, chunked: bool = True) -> jax.Array:
        """Posterior means of (B, F, H, W, 3) -> (B, f, H/8, W/8, z_dim); traceable, not jitted."""
        z = self.config.z_dim
        video = video.astype(self.dtype)
        if not chunked:
            h, _ = self.encoder(video)
            return self.quant_conv(h)[0][..., :z]
        B, F = video.shape[:2]
        first, cache = self.encoder(video[:, :1])
        first = self.quant_conv(first)[0][..., :z]
        n = (F - 1) // ENCODE_CHUNK
        if n == 0:
            return first
        rest = video[:, 1:].reshape(B, n, ENCODE_CHUNK, *video.shape[2:]).swapaxes(0, 1)

        def step(cache, chunk):
            h, cache = self.encoder(chunk, cache)
            return cache, self.quant_conv(h)[0][..., :z]

        _, outs = jax.lax.scan(step, cache, rest)  # (n, B, 4 / temporal_factor, h, w, z)
        outs = outs.swapaxes(0, 1).reshape(B, -1, *outs.shape[3:])
        return jnp.concatenate([first, outs], axis=1)

    def decode_frames(self, latents: jax.Array, *, chunked: bool = True, clamp: bool = True) -> jax.Array:
        """(B, f, h, w, z_dim) -> (B, F, 8h, 8w, 3), clamped to [-1, 1]; traceable, not jitted."""
        lo, hi = (-1.0, 1.0) if clamp else (None, None)
        x = self.post_quant_conv(latents.astype(self.dtype))[0]
        if not chunked:
            return jnp.clip(self.decoder(x)[0], lo, hi)
        B = x.shape[0]
        first, cache = self.decoder(x[:, :1])
        if x.shape[1] == 1:
            return jnp.clip(first, lo, hi)

        def step(cache, frame):
            y, cache = self.decoder(frame[:, None], cache)
            return cache, y

        _, outs = jax.lax.scan(step, cache, x[:, 1:].swapaxes(0, 1))  # (f-1, B, tf, H, W, 3)
        outs = outs.swapaxes(0, 1).reshape(B, -1, *outs.shape[3:])
        return jnp.clip(jnp.concatenate([first, outs], axis=1), lo, hi)

    # -- public API ----------------------------------------------------------------------------
    def encode(self, video, *, chunked: bool = True, tiling: TileSpec | None = None) -> jax.Array:
        """Encode a video to posterior means (not normalised; see `normalize_latents`).

        Args:
          video: (B, F, H, W, 3) float in [-1, 1], F = 4k + 1, H and W multiples of 8.
          chunked: the reference's chunked causal inference (memory independent of F); False runs the
            whole sequence at once (same result, memory grows with F).
          tiling: optional spatial tiling for large frames.
        Returns:
          (B, 1 + (F - 1) // 4, H / 8, W / 8, z_dim) in the model dtype.
        """
        self._check_video(video)
        video = jnp.asarray(video)
        if tiling is not None:
            return _tiled(self, video, tiling, encode=True, chunked=chunked)
        return _encode_jit(self, video, chunked)

    def decode(self, latents, *, chunked: bool = True, tiling: TileSpec | None = None) -> jax.Array:
        """Decode posterior means (B, f, h, w, z_dim) -> video (B, 1 + 4 (f - 1), 8h, 8w, 3) in [-1, 1]."""
        self._check_latents(latents)
        latents = jnp.asarray(latents)
        if tiling is not None:
            return _tiled(self, latents, tiling, encode=False, chunked=chunked)
        return _decode_jit(self, latents, chunked)

    def normalize_latents(self, latents):
        """`normalize_latents` with this VAE's statistics."""
        return normalize_latents(latents, self.config.latents_mean, self.config.latents_std)

    def denormalize_latents(self, latents):
        """`denormalize_latents` with this VAE's statistics."""
        return denormalize_latents(latents, self.config.latents_mean, self.config.latents_std)


@functools.partial(nnx.jit, static_argnames=("chunked",))
def _encode_jit(model: WanVAE, video, chunked: bool):
    return model.encode_frames(video, chunked=chunked)


@functools.partial(nnx.jit, static_argnames=("chunked", "clamp"))
def _decode_jit(model: WanVAE, latents, chunked: bool, clamp: bool = True):
    return model.decode_frames(latents, chunked=chunked, clamp=clamp)


# ----------------------------------------------------------------------------------------------
# Spatial tiling (the scheme of diffusers' tiled_encode / tiled_decode)


def _blend_ramp(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32) / max(n, 1)


def _tiled(model: WanVAE, x: jax.Array, spec: TileSpec, *, encode: bool, chunked: bool) -> jax.Array:
    s = model.config.spatial_factor
    for name in ("min_height", "min_width", "stride_height", "stride_width"):
        v = getattr(spec, name)
        if v <= 0 or v % s:
            raise ValueError(f"tiling.{name} must be a positive multiple of {s}; got {v}")
    if spec.stride_height > spec.min_height or spec.stride_width > spec.min_width:
        raise ValueError(f"tile strides must not exceed tile sizes; got {spec}")
    H, W = x.shape[2:4]
    # Work in the input's units, blend and crop in the output's.
    if encode:
        tin_h, tin_w, st_h, st_w = spec.min_height, spec.min_width, spec.stride_height, spec.stride_width
        out_scale = 1.0 / s
        if H <= tin_h and W <= tin_w:
            return _encode_jit(model, x, chunked)
        fn = lambda t: _encode_jit(model, t, chunked)  # noqa: E731
    else:
        tin_h, tin_w = spec.min_height // s, spec.min_width // s
        st_h, st_w = spec.stride_height // s, spec.stride_width // s
        out_scale = float(s)
        if H <= tin_h and W <= tin_w:
            return _decode_jit(model, x, chunked)
        fn = lambda t: _decode_jit(model, t, chunked, clamp=False)  # noqa: E731
    # Tile sizes and blend widths in output units.
    out_tile_h, out_tile_w = int(round(tin_h * out_scale)), int(round(tin_w * out_scale))
    out_st_h, out_st_w = int(round(st_h * out_scale)), int(round(st_w * out_scale))
    blend_h, blend_w = out_tile_h - out_st_h, out_tile_w - out_st_w
    rows = []
    for i in range(0, H, st_h):
        rows.append([np.array(fn(x[:, :, i : i + tin_h, j : j + tin_w])) for j in range(0, W, st_w)])
    out_rows = []
    for i, row in enumerate(rows):
        out_row = []
        for j, tile in enumerate(row):
            # In place, as diffusers does: later tiles blend with already-blended neighbours.
            if i > 0:
                above = rows[i - 1][j]
                n = min(above.shape[2], tile.shape[2], blend_h)
                r = _blend_ramp(n)[:, None, None]
                tile[:, :, :n] = above[:, :, above.shape[2] - n :] * (1 - r) + tile[:, :, :n] * r
            if j > 0:
                left = row[j - 1]
                n = min(left.shape[3], tile.shape[3], blend_w)
                r = _blend_ramp(n)[:, None]
                tile[:, :, :, :n] = left[:, :, :, left.shape[3] - n :] * (1 - r) + tile[:, :, :, :n] * r
            out_row.append(tile[:, :, :out_st_h, :out_st_w])
        out_rows.append(np.concatenate(out_row, axis=3))
    out = np.concatenate(out_rows, axis=2)[:, :, : int(round(H * out_scale)), : int(round(W * out_scale))]
    if not encode:
        out = np.clip(out, -1.0, 1.0)  # clamp after blending, as the reference does
    return jnp.asarray(out)
