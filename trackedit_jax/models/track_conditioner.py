"""The 3D track conditioner of Edit-by-Track: sample -> temporal transformer -> z-embedding -> splat.

Given the source video tokens on the DiT's token grid and paired source/target track positions
(already projected, resampled to latent frames and normalised: x, y in [-1, 1] grid units,
z = normalised disparity in [0, 1]; see `trackedit_jax.geometry.conditioning`), it produces
track tokens tau_src and tau_tgt on the token grid, which the edit model adds to the source and
target video tokens.

  rho(p)  = Linear(Fourier(p))                 encoding of a track point p = (x, y, z) (2D: (x, y))
  G       = rho((x_g, y_g, 0))                 encoding of every token-grid cell centre (same encoder)
  sample  : per frame, Attn(Q = rho(p_src), K = G, V = nu_src)          -> one token per track and frame
            ("gaussian": fixed Gaussian weights of grid cells around p_src instead of attention)
  temporal: a transformer along each track over the f latent frames (sinusoidal time encoding)
  z-embed : + Linear(Fourier(z_src)) for tau_src, + Linear(Fourier(z_tgt)) for tau_tgt
  splat   : per frame, Attn(Q = G, K = rho(p_side), V = track tokens) for side in (src, tgt), with one
            learned "null" key whose value is zero, so cells far from every track can receive nothing
            ("gaussian": fixed Gaussian weights of tracks around each cell)
  out     : Linear to the DiT width, initialised at ZERO, so an untrained conditioner leaves the
            pretrained backbone's behaviour unchanged.

The design choices the paper does not state (Fourier bands, width, depth, the null key, per-frame
attention) are ours and are configuration. Padded tracks and points behind the camera are excluded
through the `valid` masks; the output is invariant to the order of the tracks and to appended
padding (attention over tracks is a masked sum).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from trackedit_jax.models.layers import gelu_tanh
from trackedit_jax.parallel.attention import attention
from trackedit_jax.parallel.rules import param


@dataclasses.dataclass(frozen=True)
class ConditionerConfig:
    """Track conditioner hyper-parameters.

    dim: width of the conditioner; heads: attention heads (dim % heads == 0).
    temporal_layers: transformer blocks along each track. num_freqs: Fourier bands per coordinate.
    track_dims: 3 (x, y, z) or 2 (x, y; z dropped everywhere, the 2D ablation).
    sampling: "cross_attn" (the paper) or "gaussian" (fixed Gaussian sample and splat, the baseline).
    z_embedding: add the z encoding to the sampled tokens before splatting (needs track_dims 3).
    gaussian_sigma: std of the fixed Gaussian in token-grid cells.
    """

    dim: int = 256
    heads: int = 4
    temporal_layers: int = 2
    num_freqs: int = 8
    mlp_ratio: int = 4
    track_dims: int = 3
    sampling: str = "cross_attn"
    z_embedding: bool = True
    gaussian_sigma: float = 1.0
    attention_impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        if self.track_dims not in (2, 3):
            raise ValueError(f"track_dims must be 2 or 3; got {self.track_dims}")
        if self.sampling not in ("cross_attn", "gaussian"):
            raise ValueError(f"sampling must be 'cross_attn' or 'gaussian'; got {self.sampling!r}")
        if self.z_embedding and self.track_dims != 3:
            raise ValueError("z_embedding needs track_dims=3 (2D tracks have no z)")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")


def fourier_features(p: jax.Array, num_freqs: int) -> jax.Array:
    """(..., k) coordinates -> (..., k * (2 * num_freqs + 1)) [p, sin(2^i pi p), cos(2^i pi p)]."""
    freqs = (2.0 ** jnp.arange(num_freqs, dtype=jnp.float32)) * jnp.pi
    ang = p[..., :, None].astype(jnp.float32) * freqs
    feats = jnp.concatenate([p[..., :, None].astype(jnp.float32), jnp.sin(ang), jnp.cos(ang)], axis=-1)
    return feats.reshape(*p.shape[:-1], -1)


def timestep_features(n: int, dim: int) -> jax.Array:
    """(n, dim) sinusoidal encoding of the frame index 0..n-1."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    ang = jnp.arange(n, dtype=jnp.float32)[:, None] * freqs
    out = jnp.concatenate([jnp.cos(ang), jnp.sin(ang)], axis=-1)
    return jnp.pad(out, ((0, 0), (0, dim - 2 * half)))


def token_grid(h: int, w: int) -> jax.Array:
    """(h, w, 2) centres (x, y) of an h x w grid in normalised [-1, 1] units (align_corners=False)."""
    ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h * 2.0 - 1.0
    xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w * 2.0 - 1.0
    return jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)


class _Linear(nnx.Module):
    """y = x @ kernel (+ bias): kernel (in, out) and bias (out,) carry logical axis names, so they shard
    on a mesh through the rules table.

    The call is the arithmetic of `flax.nnx.Linear` (inputs and weights cast to `dtype`, one
    dot_general, bias added), and the keys are drawn in the same order (kernel, then bias), so values
    and checkpoints are those of the `nnx.Linear` this layer replaces.
    """

    def __init__(
        self,
        din: int,
        dout: int,
        axes: tuple[str | None, str | None],
        cfg: ConditionerConfig,
        *,
        rngs: nnx.Rngs,
        zero: bool = False,
        bias: bool = True,
    ):
        init = nnx.initializers.zeros_init() if zero else nnx.initializers.xavier_uniform()
        self.kernel = param(rngs, init, (din, dout), axes, cfg.param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros_init(), (dout,), axes[1:], cfg.param_dtype) if bias else None
        self.dtype = cfg.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (..., in) -> (..., out) in `dtype`."""
        kernel = self.kernel[...].astype(self.dtype)
        y = jax.lax.dot_general(x.astype(self.dtype), kernel, (((x.ndim - 1,), (0,)), ((), ())))
        if self.bias is not None:
            y += self.bias[...].astype(self.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return y


class _LayerNorm(nnx.Module):
    """LayerNorm over the last axis with `scale` and `bias` of logical axis ("norm",) (replicated).

    The arithmetic of `flax.nnx.LayerNorm` (statistics in float32 with the fast variance
    E[x^2] - E[x]^2, epsilon 1e-6, result in `dtype`), and one key drawn per weight as it does, so the
    conditioner keeps the values it had when it was built from `nnx.LayerNorm`.
    """

    def __init__(self, dim: int, cfg: ConditionerConfig, *, rngs: nnx.Rngs, eps: float = 1e-6):
        self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), ("norm",), cfg.param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros_init(), (dim,), ("norm",), cfg.param_dtype)
        self.eps = eps
        self.dtype = cfg.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (..., dim) -> (..., dim) in `dtype`."""
        x = x.astype(self.dtype)
        xf = x.astype(jnp.promote_types(self.dtype, jnp.float32))
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.maximum(0.0, jnp.mean(jax.lax.square(xf), axis=-1, keepdims=True) - jax.lax.square(mean))
        mul = jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(self.dtype)
        y = (x - mean) * mul + self.bias[...].astype(self.dtype)
        return y.astype(self.dtype)


class _MultiHeadAttention(nnx.Module):
    """Projections around the shared `attention()` entry point; inputs (B, L, D)."""

    def __init__(self, dq: int, dkv: int, cfg: ConditionerConfig, *, rngs: nnx.Rngs, out_bias: bool = True):
        self.cfg = cfg
        self.q = _Linear(dq, cfg.dim, ("embed", "heads"), cfg, rngs=rngs)
        self.k = _Linear(dkv, cfg.dim, ("embed", "heads"), cfg, rngs=rngs)
        self.v = _Linear(dkv, cfg.dim, ("embed", "heads"), cfg, rngs=rngs)
        self.o = _Linear(cfg.dim, cfg.dim, ("heads", "embed"), cfg, rngs=rngs, bias=out_bias)

    def heads(self, x):
        return x.reshape(*x.shape[:-1], self.cfg.heads, self.cfg.dim // self.cfg.heads)

    def __call__(self, xq, xk, xv, mask=None, *, null_key=None):
        """Attention of xq (B, Lq, dq) over xk/xv (B, Lk, dkv); mask (B, Lk) bool.

        null_key: optional (dim,) key, already in projected space, prepended to every row with a
        zero value and always valid: a row may put its weight on it and receive nothing.
        """
        q, k, v = self.heads(self.q(xq)), self.heads(self.k(xk)), self.heads(self.v(xv))
        if null_key is not None:
            B = k.shape[0]
            nk = jnp.broadcast_to(self.heads(null_key.astype(k.dtype))[None, None], (B, 1, *k.shape[2:]))
            k = jnp.concatenate([nk, k], axis=1)
            v = jnp.concatenate([jnp.zeros((B, 1, *v.shape[2:]), v.dtype), v], axis=1)
            if mask is not None:
                mask = jnp.concatenate([jnp.ones((B, 1), bool), mask], axis=1)
        out = attention(q, k, v, mask=mask, impl=self.cfg.attention_impl)
        return self.o(out.reshape(*out.shape[:-2], self.cfg.dim))


class _TemporalBlock(nnx.Module):
    """Pre-norm transformer block along the time axis of each track."""

    def __init__(self, cfg: ConditionerConfig, *, rngs: nnx.Rngs):
        self.norm1 = _LayerNorm(cfg.dim, cfg, rngs=rngs)
        self.attn = _MultiHeadAttention(cfg.dim, cfg.dim, cfg, rngs=rngs)
        self.norm2 = _LayerNorm(cfg.dim, cfg, rngs=rngs)
        self.fc1 = _Linear(cfg.dim, cfg.dim * cfg.mlp_ratio, ("embed", "mlp"), cfg, rngs=rngs)
        self.fc2 = _Linear(cfg.dim * cfg.mlp_ratio, cfg.dim, ("mlp", "embed"), cfg, rngs=rngs)

    def __call__(self, x, mask):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, mask)
        return x + self.fc2(gelu_tanh(self.fc1(self.norm2(x))))


class TrackConditioner(nnx.Module):
    """Track tokens from source video tokens and paired source/target track positions.

    Args:
      cfg: `ConditionerConfig`.
      model_dim: width D of the video tokens (the DiT width).
    """

    def __init__(self, cfg: ConditionerConfig, model_dim: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model_dim = model_dim
        if cfg.sampling == "cross_attn":
            self.pos_embed = _Linear(cfg.track_dims * (2 * cfg.num_freqs + 1), cfg.dim, (None, "embed"), cfg, rngs=rngs)
            self.sample_attn = _MultiHeadAttention(cfg.dim, cfg.dim, cfg, rngs=rngs)
            self.sample_value = _Linear(model_dim, cfg.dim, ("embed", "embed"), cfg, rngs=rngs)
            # no output bias: a cell attending only to the null key gets exactly zero
            self.splat_attn = _MultiHeadAttention(cfg.dim, cfg.dim, cfg, rngs=rngs, out_bias=False)
            # in projected key space (heads * head_dim); zeros need no key, so none is drawn
            self.null_key = param(None, nnx.initializers.zeros_init(), (cfg.dim,), ("heads",), cfg.param_dtype)
        else:
            self.sample_value = _Linear(model_dim, cfg.dim, ("embed", "embed"), cfg, rngs=rngs)
        self.temporal = nnx.List([_TemporalBlock(cfg, rngs=rngs) for _ in range(cfg.temporal_layers)])
        self.temporal_norm = _LayerNorm(cfg.dim, cfg, rngs=rngs)
        if cfg.z_embedding:
            self.z_embed = _Linear(2 * cfg.num_freqs + 1, cfg.dim, (None, "embed"), cfg, rngs=rngs)
        # zero and without bias: empty cells stay exactly 0
        self.out = _Linear(cfg.dim, model_dim, ("embed", "embed"), cfg, rngs=rngs, zero=True, bias=False)

    # --- helpers -----------------------------------------------------------------------------
    def _coords(self, p):
        return p[..., : self.cfg.track_dims]

    def _gaussian_weights(self, p_xy, grid_xy, h, w):
        """exp(-d^2 / 2 sigma^2) between points (..., N, 2) and cells (hw, 2), d in token cells."""
        scale = jnp.asarray([w / 2.0, h / 2.0], jnp.float32)
        d = (p_xy[..., :, None, :] - grid_xy[None, :, :]) * scale
        return jnp.exp(-jnp.sum(d * d, axis=-1) / (2.0 * self.cfg.gaussian_sigma**2))

    # --- stages ------------------------------------------------------------------------------
    def sample(self, nu_src: jax.Array, src_xyz: jax.Array, src_valid: jax.Array) -> jax.Array:
        """Sample one token per track and latent frame, then mix along each track in time.

        Args:
          nu_src: (B, f, h, w, D) source video tokens.
          src_xyz: (B, f, N, 3) source track positions (x, y in [-1, 1], z in [0, 1]).
          src_valid: (B, f, N) bool.
        Returns:
          (B, f, N, dim) sampled track tokens.
        """
        B, f, h, w, D = nu_src.shape
        N = src_xyz.shape[2]
        cfg = self.cfg
        grid = token_grid(h, w).reshape(h * w, 2)
        values = self.sample_value(nu_src.reshape(B * f, h * w, D).astype(cfg.dtype))
        if cfg.sampling == "cross_attn":
            grid_p = jnp.concatenate([grid, jnp.zeros((h * w, cfg.track_dims - 2))], -1)
            G = self.pos_embed(fourier_features(grid_p, cfg.num_freqs).astype(cfg.dtype))
            rho = self.pos_embed(fourier_features(self._coords(src_xyz), cfg.num_freqs).astype(cfg.dtype))
            Gb = jnp.broadcast_to(G[None], (B * f, h * w, cfg.dim))
            tok = self.sample_attn(rho.reshape(B * f, N, cfg.dim), Gb, values)
        else:
            wts = self._gaussian_weights(src_xyz[..., :2].reshape(B * f, N, 2), grid, h, w)
            wts = wts / (jnp.sum(wts, axis=-1, keepdims=True) + 1e-6)
            tok = jnp.einsum("bnk,bkd->bnd", wts.astype(values.dtype), values)
        tok = tok.reshape(B, f, N, cfg.dim)
        # temporal transformer along each track: (B*N, f, dim)
        x = jnp.transpose(tok, (0, 2, 1, 3)).reshape(B * N, f, cfg.dim)
        x = x + timestep_features(f, cfg.dim).astype(x.dtype)[None]
        tmask = jnp.transpose(src_valid, (0, 2, 1)).reshape(B * N, f)
        tmask = tmask | ~jnp.any(tmask, axis=1, keepdims=True)  # all-invalid tracks: attend freely, masked later
        for blk in self.temporal:
            x = blk(x, tmask)
        x = self.temporal_norm(x)
        return jnp.transpose(x.reshape(B, N, f, cfg.dim), (0, 2, 1, 3))

    def splat(self, tokens: jax.Array, xyz: jax.Array, valid: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
        """Place track tokens on the token grid at the given positions.

        Args:
          tokens: (B, f, N, dim) track tokens; xyz: (B, f, N, 3) positions; valid: (B, f, N) bool.
          grid_hw: (h, w) of the token grid.
        Returns:
          (B, f, h, w, D) track tokens on the grid (D = model_dim).
        """
        B, f, N, _ = tokens.shape
        h, w = grid_hw
        cfg = self.cfg
        grid = token_grid(h, w).reshape(h * w, 2)
        if cfg.z_embedding:
            tokens = tokens + self.z_embed(fourier_features(xyz[..., 2:3], cfg.num_freqs).astype(cfg.dtype))
        tok = tokens.reshape(B * f, N, cfg.dim)
        if cfg.sampling == "cross_attn":
            grid_p = jnp.concatenate([grid, jnp.zeros((h * w, cfg.track_dims - 2))], -1)
            G = self.pos_embed(fourier_features(grid_p, cfg.num_freqs).astype(cfg.dtype))
            rho = self.pos_embed(fourier_features(self._coords(xyz), cfg.num_freqs).astype(cfg.dtype))
            Gb = jnp.broadcast_to(G[None], (B * f, h * w, cfg.dim))
            out = self.splat_attn(
                Gb, rho.reshape(B * f, N, cfg.dim), tok, valid.reshape(B * f, N), null_key=self.null_key[...]
            )
        else:
            wts = self._gaussian_weights(xyz[..., :2].reshape(B * f, N, 2), grid, h, w)
            wts = jnp.where(valid.reshape(B * f, N)[:, :, None], wts, 0.0)  # (Bf, N, hw)
            norm = jnp.maximum(jnp.sum(wts, axis=1), 1.0)  # cells near one track keep its weight
            out = jnp.einsum("bnk,bnd->bkd", wts.astype(tok.dtype), tok) / norm[..., None].astype(tok.dtype)
        out = self.out(out)
        return out.reshape(B, f, h, w, self.model_dim)

    def __call__(
        self,
        nu_src: jax.Array,
        src_xyz: jax.Array,
        tgt_xyz: jax.Array,
        src_valid: jax.Array,
        tgt_valid: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """Track tokens for the source and the target video.

        Args:
          nu_src: (B, f, h, w, D) source video tokens on the DiT token grid.
          src_xyz, tgt_xyz: (B, f, N, 3) float, x and y in [-1, 1] grid units, z in [0, 1].
          src_valid, tgt_valid: (B, f, N) bool; False for padded tracks and points behind the camera.
        Returns:
          tau_src, tau_tgt: (B, f, h, w, D). tau_tgt depends on the target positions only through
          the splatting keys and the z-embedding; tau_src does not depend on them at all.
        """
        B, f, h, w, D = nu_src.shape
        for name, a in (("src_xyz", src_xyz), ("tgt_xyz", tgt_xyz)):
            if a.ndim != 4 or a.shape[:2] != (B, f) or a.shape[-1] != 3:
                raise ValueError(f"{name} must have shape (B={B}, f={f}, N, 3); got {a.shape}")
        if tgt_xyz.shape != src_xyz.shape:
            raise ValueError(f"src_xyz {src_xyz.shape} and tgt_xyz {tgt_xyz.shape} must match")
        for name, m in (("src_valid", src_valid), ("tgt_valid", tgt_valid)):
            if m.shape != src_xyz.shape[:3]:
                raise ValueError(f"{name} must have shape {src_xyz.shape[:3]}; got {m.shape}")
        if D != self.model_dim:
            raise ValueError(f"nu_src has width {D}; the conditioner was built for {self.model_dim}")
        sampled = self.sample(nu_src, src_xyz, src_valid)
        tau_src = self.splat(sampled, src_xyz, src_valid, (h, w))
        tau_tgt = self.splat(sampled, tgt_xyz, tgt_valid, (h, w))
        return tau_src, tau_tgt
