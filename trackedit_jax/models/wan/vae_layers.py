"""The layers of the Wan 2.1 causal 3D video VAE (`vae.WanVAE`), channels-last.

Causal convolutions, norms, residual and attention blocks, temporal/spatial resampling and the encoder
and decoder stacks. Every module follows the cache convention of `vae` (its module docstring):
``module(x, cache) -> (y, new_cache)``, ``cache=None`` meaning that the sequence starts with x.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trackedit_jax.parallel.attention import attention
from trackedit_jax.parallel.rules import param

if TYPE_CHECKING:  # annotations only: vae imports this module
    from trackedit_jax.models.wan.vae import WanVAEConfig

# History frames a kernel-3 causal convolution needs.
CACHE_T = 2

Cache = Any  # a pytree of arrays (or None) mirroring the module tree


def host_normal(std_of_shape):
    """An initializer N(0, std(shape)^2) drawn with numpy when the key is concrete.

    On CPU, compiling jax's threefry `random.normal` costs seconds per distinct shape, which made
    building even a tiny VAE take most of a minute. Under tracing (`nnx.eval_shape`, jit) the key is
    abstract and jax.random is used, which costs nothing there.
    """

    def init(key, shape, dtype=jnp.float32):
        std = std_of_shape(shape)
        try:
            seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel().tolist()
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
        values = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * np.float32(std)
        return jnp.asarray(values, dtype)

    return init


# He/LeCun-style scale: weights (..., fan_in, fan_out).
fan_in_normal = host_normal(lambda shape: 1.0 / math.sqrt(max(1, math.prod(shape[:-1]))))


def _conv(x, kernel, bias, strides, padding, dtype):
    nd = kernel.ndim - 2
    spec = {2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}[nd]
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), window_strides=strides, padding=padding, dimension_numbers=spec
    )
    return y + bias.astype(dtype)


class CausalConv3d(nnx.Module):
    """3D convolution, causal in time, zero 'same' padding in space.

    kernel (kt, kh, kw, Cin, Cout), bias (Cout,). With kt > 1 the call carries the last kt - 1 input
    frames as its cache: ``y, cache = conv(x, cache)``; x (B, T, H, W, Cin) -> y (B, T, H, W, Cout).
    """

    def __init__(
        self, cin: int, cout: int, kernel=(3, 3, 3), *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32
    ):
        kernel = tuple(kernel)
        self.kernel = param(rngs, fan_in_normal, (*kernel, cin, cout), (None, None, None, "conv", "conv"), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros_init(), (cout,), ("conv",), param_dtype)
        self.dtype = dtype
        self.history = kernel[0] - 1

    def __call__(self, x: jax.Array, cache: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        kt, kh, kw = self.kernel.shape[:3]
        if self.history:
            if cache is None:
                cache = jnp.zeros((x.shape[0], self.history, *x.shape[2:]), x.dtype)
            x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
            cache = x[:, -self.history :]
        y = _conv(
            x, self.kernel[...], self.bias[...], (1, 1, 1), ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)), self.dtype
        )
        return y, (cache if self.history else None)


class TimeConv(nnx.Module):
    """Convolution over time only, kernel (kt, 1, 1, Cin, Cout), no padding (callers supply history)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kt: int = 3,
        *,
        stride: int = 1,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        self.kernel = param(rngs, fan_in_normal, (kt, 1, 1, cin, cout), (None, None, None, "conv", "conv"), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros_init(), (cout,), ("conv",), param_dtype)
        self.stride = stride
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv(x, self.kernel[...], self.bias[...], (self.stride, 1, 1), "VALID", self.dtype)


class FrameConv2d(nnx.Module):
    """A 2D convolution applied to every frame: (B, T, H, W, Cin) -> (B, T, H', W', Cout)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        stride: int = 1,
        padding=((1, 1), (1, 1)),
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        self.kernel = param(rngs, fan_in_normal, (3, 3, cin, cout), (None, None, "conv", "conv"), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros_init(), (cout,), ("conv",), param_dtype)
        self.stride = stride
        self.padding = tuple(tuple(p) for p in padding)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        B, T = x.shape[:2]
        y = _conv(
            x.reshape(B * T, *x.shape[2:]),
            self.kernel[...],
            self.bias[...],
            (self.stride,) * 2,
            self.padding,
            self.dtype,
        )
        return y.reshape(B, T, *y.shape[1:])


class RMSNorm(nnx.Module):
    """x / ||x||_2 * sqrt(C) * gamma over the channel axis (the reference's `RMS_norm`), in fp32."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        del rngs  # ones need no key; drawing none keeps the key stream of the later parameters
        self.gamma = param(None, nnx.initializers.ones_init(), (dim,), ("norm",), param_dtype)
        self.scale = float(dim) ** 0.5

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
        y = xf / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...].astype(jnp.float32)
        return y.astype(x.dtype)


class Linear(nnx.Module):
    """y = x @ kernel + bias; kernel (Cin, Cout). Stands for the reference's 1x1 Conv2d."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.kernel = param(rngs, fan_in_normal, (cin, cout), ("conv", "conv"), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros_init(), (cout,), ("conv",), param_dtype)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype)) + self.bias[
            ...
        ].astype(self.dtype)


class ResidualBlock(nnx.Module):
    """RMSNorm-SiLU-CausalConv3d twice, plus a 1x1x1 projection shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = RMSNorm(cin, rngs=rngs, param_dtype=param_dtype)
        self.conv1 = CausalConv3d(cin, cout, **kw)
        self.norm2 = RMSNorm(cout, rngs=rngs, param_dtype=param_dtype)
        self.conv2 = CausalConv3d(cout, cout, **kw)
        self.conv_shortcut = CausalConv3d(cin, cout, (1, 1, 1), **kw) if cin != cout else None

    def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
        c1, c2 = (None, None) if cache is None else cache
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)[0]
        x, c1 = self.conv1(jax.nn.silu(self.norm1(x)), c1)
        x, c2 = self.conv2(jax.nn.silu(self.norm2(x)), c2)
        return x + h, (c1, c2)


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.norm = RMSNorm(dim, rngs=rngs, param_dtype=param_dtype)
        self.to_qkv = Linear(dim, 3 * dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.proj = Linear(dim, dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        B, T, H, W, C = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(B * T, H * W, 1, 3 * C)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        y = attention(q, k, v).reshape(B, T, H, W, C)
        return x + self.proj(y)


class Resample(nnx.Module):
    """Spatial (and optionally temporal) down/up-sampling by 2.

    modes: 'downsample2d', 'downsample3d' (time halved by a stride-2 time conv, frame 0 kept),
    'upsample2d', 'upsample3d' (every frame but frame 0 doubled in time by a causal time conv).
    Upsampling halves the channels (the reference's `dim // 2`).
    """

    MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

    def __init__(self, dim: int, mode: str, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}; got {mode!r}")
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.mode = mode
        if mode.startswith("down"):
            # The reference pads right/bottom by one pixel, then a valid stride-2 3x3 conv.
            self.resample = FrameConv2d(dim, dim, stride=2, padding=((0, 1), (0, 1)), **kw)
        else:
            self.resample = FrameConv2d(dim, dim // 2, **kw)
        if mode == "downsample3d":
            self.time_conv = TimeConv(dim, dim, 3, stride=2, **kw)
        elif mode == "upsample3d":
            self.time_conv = TimeConv(dim, 2 * dim, 3, **kw)
        else:
            self.time_conv = None

    def _time_up(self, x, cache):
        B, T, H, W, C = x.shape
        head = None
        if cache is None:
            # The sequence starts here: frame 0 is not doubled, the later frames see zero history.
            head, x = x[:, :1], x[:, 1:]
            cache = jnp.zeros((B, CACHE_T, H, W, C), x.dtype)
        if x.shape[1] == 0:
            return head, cache
        xx = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        y = self.time_conv(xx)  # (B, t, H, W, 2C): channel block s is output frame 2t + s
        t = y.shape[1]
        y = y.reshape(B, t, H, W, 2, C).transpose(0, 1, 4, 2, 3, 5).reshape(B, 2 * t, H, W, C)
        if head is not None:
            y = jnp.concatenate([head, y], axis=1)
        return y, xx[:, -CACHE_T:]

    def _time_down(self, x, cache):
        if cache is None:
            # Frame 0 passes; then windows (0,1,2), (2,3,4), ... of a valid stride-2 conv.
            y = x[:, :1]
            if x.shape[1] > 1:
                y = jnp.concatenate([y, self.time_conv(x)], axis=1)
        else:
            y = self.time_conv(jnp.concatenate([cache.astype(x.dtype), x], axis=1))
        return y, x[:, -1:]

    def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
        if self.mode == "upsample3d":
            x, cache = self._time_up(x, cache)
        if self.mode.startswith("up"):
            # nearest-exact x2 == repeat each pixel
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        x = self.resample(x)
        if self.mode == "downsample3d":
            x, cache = self._time_down(x, cache)
        return x, (cache if self.time_conv is not None else None)


class MidBlock(nnx.Module):
    """ResidualBlock, AttentionBlock, ResidualBlock."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List([ResidualBlock(dim, dim, **kw), ResidualBlock(dim, dim, **kw)])
        self.attentions = nnx.List([AttentionBlock(dim, **kw)])

    def __call__(self, x, cache: Cache = None):
        c0, c1 = (None, None) if cache is None else cache
        x, c0 = self.resnets[0](x, c0)
        x = self.attentions[0](x)
        x, c1 = self.resnets[1](x, c1)
        return x, (c0, c1)


class Encoder3d(nnx.Module):
    """Video (B, T, H, W, 3) -> (B, t, H/8, W/8, 2 z_dim) posterior parameters (before quant_conv)."""

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(3, dims[0], **kw)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout, **kw))
                cin = cout
            if i != len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(cout, mode, **kw))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], **kw)
        self.norm_out = RMSNorm(dims[-1], rngs=rngs, param_dtype=param_dtype)
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, **kw)

    def __call__(self, x, cache: Cache = None):
        c_in, c_down, c_mid, c_out = (None, [None] * len(self.down_blocks), None, None) if cache is None else cache
        x, c_in = self.conv_in(x, c_in)
        new_down = []
        for block, c in zip(self.down_blocks, c_down):
            x, c = block(x, c)
            new_down.append(c)
        x, c_mid = self.mid_block(x, c_mid)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
        return x, (c_in, tuple(new_down), c_mid, c_out)


class UpBlock(nnx.Module):
    """num_res_blocks + 1 residual blocks, then an optional Resample (upsample2d/3d)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        num_res_blocks: int,
        upsample_mode: str | None,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        resnets = []
        for _ in range(num_res_blocks + 1):
            resnets.append(ResidualBlock(cin, cout, **kw))
            cin = cout
        self.resnets = nnx.List(resnets)
        self.upsamplers = nnx.List([Resample(cout, upsample_mode, **kw)] if upsample_mode else [])

    def __call__(self, x, cache: Cache = None):
        c_res, c_up = ([None] * len(self.resnets), [None] * len(self.upsamplers)) if cache is None else cache
        new_res, new_up = [], []
        for block, c in zip(self.resnets, c_res):
            x, c = block(x, c)
            new_res.append(c)
        for block, c in zip(self.upsamplers, c_up):
            x, c = block(x, c)
            new_up.append(c)
        return x, (tuple(new_res), tuple(new_up))


class Decoder3d(nnx.Module):
    """Latents (B, t, h, w, z_dim) -> video (B, T, 8h, 8w, 3) (unclamped)."""

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        mult = cfg.dim_mult
        dims = [cfg.base_dim * m for m in (mult[-1], *mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], **kw)
        self.mid_block = MidBlock(dims[0], **kw)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin = cin // 2  # the previous level's upsampler halved the channels
            mode = None
            if i != len(mult) - 1:
                mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
            blocks.append(UpBlock(cin, cout, cfg.num_res_blocks, mode, **kw))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], rngs=rngs, param_dtype=param_dtype)
        self.conv_out = CausalConv3d(dims[-1], 3, **kw)

    def __call__(self, x, cache: Cache = None):
        c_in, c_mid, c_up, c_out = (None, None, [None] * len(self.up_blocks), None) if cache is None else cache
        x, c_in = self.conv_in(x, c_in)
        x, c_mid = self.mid_block(x, c_mid)
        new_up = []
        for block, c in zip(self.up_blocks, c_up):
            x, c = block(x, c)
            new_up.append(c)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
        return x, (c_in, c_mid, tuple(new_up), c_out)
