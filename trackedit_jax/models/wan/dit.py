"""The Wan 2.1 text-to-video DiT as a Flax NNX module, channels-last.

`WanDiT.__call__(x, t, context)` computes the same function as diffusers
`WanTransformer3DModel.forward(hidden_states, timestep, encoder_hidden_states)` (and the official
`WanModel` with text already padded), with latents channels-last. The stages are public methods so
other models can compose them (the Edit-by-Track model concatenates source and target tokens and gives
the target tokens RoPE positions that follow the source frames):

    tokens, grid = dit.patchify(x)                       # (B, L, D), (f, h, w)
    rope = dit.rope_frequencies(grid_positions(*grid))   # cos, sin (L, head_dim // 2)
    e, e0 = dit.embed_time(t)                            # (B, D), (B, 6, D)
    text = dit.embed_text(context)                       # (B, L_text, D)
    tokens = dit.run_blocks(tokens, e0, text, rope)      # (B, L, D) float32
    out = dit.unpatchify(dit.head(tokens, e), grid)      # (B, F, H, W, C_out)

The residual stream, norms, adaLN modulation and RoPE are float32 (as the reference keeps them);
matmuls and attention run in `config.dtype`. Blocks are created stacked (`nnx.vmap`, leading "layers"
axis) and run with `nnx.scan`, so compile time does not grow with depth; `config.remat_policy`
selects what the backward pass recomputes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from trackedit_jax.models.layers import (
    LayerNorm,
    RMSNorm,
    cpu_tuned_backward,
    gelu_tanh,
    layer_norm,
    mul_broadcast,
    transpose_tokens,
)
from trackedit_jax.models.lora import LoRALinear
from trackedit_jax.models.wan import rope as rope_lib
from trackedit_jax.models.wan.config import WanConfig, remat_policy_fn
from trackedit_jax.parallel.attention import attention
from trackedit_jax.parallel.rules import param, shard_activation

TOKENS = ("act_batch", "act_length", "act_embed")
HEADS = ("act_batch", "act_length", "act_heads", "act_kv")


def _linear(config: WanConfig, n_in: int, n_out: int, axes, rngs, *, lora: bool = False, dtype=None) -> LoRALinear:
    return LoRALinear(
        n_in,
        n_out,
        rank=config.lora_rank if lora else 0,
        alpha=config.lora_alpha,
        logical_axes=axes,
        param_dtype=config.param_dtype,
        dtype=config.dtype if dtype is None else dtype,
        rngs=rngs,
    )


@functools.lru_cache(maxsize=8)
def _timestep_frequencies(freq_dim: int) -> np.ndarray:
    """exp(-ln(10000) * i / half) for i < half, rounded to float32 the way diffusers computes it."""
    half = freq_dim // 2
    exponent = np.float32(-math.log(10000.0)) * np.arange(half, dtype=np.float32) / np.float32(half)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """(B,) timesteps -> (B, dim) float32 [cos(t f_i), sin(t f_i)] (the Wan / diffusers order)."""
    args = t.astype(jnp.float32)[:, None] * jnp.asarray(_timestep_frequencies(dim))[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class _Attention(nnx.Module):
    """The projections of a Wan attention layer: q, k, v, o (`LoRALinear`, D -> D) and RMS q/k norms
    over all heads (when `config.qk_norm`)."""

    def __init__(self, config: WanConfig, *, rngs: nnx.Rngs):
        d = config.dim
        self.num_heads = config.num_heads
        self.impl = config.attention_impl
        self.q = _linear(config, d, d, ("embed", "heads"), rngs, lora=True)
        self.k = _linear(config, d, d, ("embed", "heads"), rngs, lora=True)
        self.v = _linear(config, d, d, ("embed", "heads"), rngs, lora=True)
        self.o = _linear(config, d, d, ("heads", "embed"), rngs, lora=True)
        pd = config.param_dtype
        self.norm_q = RMSNorm(d, eps=config.eps, param_dtype=pd, axis_name="heads") if config.qk_norm else None
        self.norm_k = RMSNorm(d, eps=config.eps, param_dtype=pd, axis_name="heads") if config.qk_norm else None


class SelfAttention(_Attention):
    """Multi-head self-attention with RMS q/k norm over all heads and 3D RoPE."""

    def _heads(self, x):
        return shard_activation(x.reshape(x.shape[:2] + (self.num_heads, -1)), HEADS)

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], mask: jax.Array | None = None) -> jax.Array:
        """x (B, L, D) -> (B, L, D); rope = (cos, sin) each (L, head_dim // 2)."""
        dtype = self.q.dtype
        x = x.astype(dtype)
        # one saved input for the three kernel gradients (only the CPU-tuned backward passes read it)
        x_t = transpose_tokens(x) if cpu_tuned_backward() else None
        q, k, v = self.q(x, x_t), self.k(x, x_t), self.v(x, x_t)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        q = rope_lib.apply_rope(self._heads(q), *rope).astype(dtype)
        k = rope_lib.apply_rope(self._heads(k), *rope).astype(dtype)
        out = attention(q, k, self._heads(v.astype(dtype)), mask=mask, impl=self.impl)
        out = checkpoint_name(out, "attention_out")
        return self.o(out.reshape(x.shape[:2] + (-1,)))


class CrossAttention(_Attention):
    """Multi-head attention from video tokens to text tokens (q/k RMS norm, no RoPE)."""

    def __call__(self, x: jax.Array, context: jax.Array, context_mask: jax.Array | None = None) -> jax.Array:
        """x (B, L, D), context (B, L_text, D) -> (B, L, D)."""
        dtype = self.q.dtype
        context = context.astype(dtype)
        context_t = transpose_tokens(context) if cpu_tuned_backward() else None
        q, k, v = self.q(x), self.k(context, context_t), self.v(context, context_t)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        split = lambda a: a.reshape(a.shape[:2] + (self.num_heads, -1)).astype(dtype)  # noqa: E731
        out = attention(split(q), split(k), split(v), mask=context_mask, impl=self.impl)
        out = checkpoint_name(out, "attention_out")
        return self.o(out.reshape(x.shape[:2] + (-1,)))


class FeedForward(nnx.Module):
    """Linear -> GELU (tanh approximation) -> Linear."""

    def __init__(self, config: WanConfig, *, rngs: nnx.Rngs):
        self.up = _linear(config, config.dim, config.ffn_dim, ("embed", "mlp"), rngs, lora=True)
        self.down = _linear(config, config.ffn_dim, config.dim, ("mlp", "embed"), rngs, lora=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        # GELU and its transpose are recomputed in the backward pass rather than saved: one (tokens x
        # ffn) array per block instead of two, for one cheap elementwise pass.
        return nnx.remat(_gelu_down, policy=jax.checkpoint_policies.nothing_saveable)(self.down, self.up(x))


def _gelu_down(down: LoRALinear, h: jax.Array) -> jax.Array:
    g = shard_activation(gelu_tanh(h.astype(jnp.float32)).astype(h.dtype), ("act_batch", "act_length", "act_mlp"))
    return down(g)


class WanBlock(nnx.Module):
    """One Wan transformer block: adaLN-modulated self-attention, cross-attention, adaLN-modulated FFN.

    `modulation` (6, D) is added to the per-sample time projection e0 (B, 6, D) to give
    (shift, scale, gate) for self-attention and (shift, scale, gate) for the FFN.
    """

    def __init__(self, config: WanConfig, *, rngs: nnx.Rngs):
        d = config.dim
        self.eps = config.eps
        self.modulation = param(
            rngs,
            lambda key, shape, dtype: jax.random.normal(key, shape, dtype) / math.sqrt(d),
            (6, d),
            (None, "embed"),
            config.param_dtype,
        )
        self.self_attn = SelfAttention(config, rngs=rngs)
        self.cross_norm = (
            LayerNorm(d, eps=config.eps, param_dtype=config.param_dtype, axis_name="embed")
            if config.cross_attn_norm
            else None
        )
        self.cross_attn = CrossAttention(config, rngs=rngs)
        self.ffn = FeedForward(config, rngs=rngs)

    def __call__(self, x, e0, context, rope, mask=None, context_mask=None):
        """x (B, L, D) float32, e0 (B, 6, D) float32, context (B, L_text, D) -> (B, L, D) float32."""
        mod = self.modulation[...].astype(jnp.float32)[None] + e0.astype(jnp.float32)
        shift, scale, gate, c_shift, c_scale, c_gate = (mod[:, i : i + 1] for i in range(6))

        h = mul_broadcast(layer_norm(x, self.eps), 1.0 + scale) + shift
        x = x + mul_broadcast(self.self_attn(h, rope, mask).astype(jnp.float32), gate)
        x = shard_activation(checkpoint_name(x, "block_io"), TOKENS)

        h = self.cross_norm(x) if self.cross_norm is not None else x
        x = x + self.cross_attn(h, context, context_mask).astype(jnp.float32)
        x = shard_activation(checkpoint_name(x, "block_io"), TOKENS)

        h = mul_broadcast(layer_norm(x, self.eps), 1.0 + c_scale) + c_shift
        x = x + mul_broadcast(self.ffn(h).astype(jnp.float32), c_gate)
        return shard_activation(x, TOKENS)


class WanHead(nnx.Module):
    """Final adaLN-modulated LayerNorm and projection to patch pixels."""

    def __init__(self, config: WanConfig, *, rngs: nnx.Rngs):
        d = config.dim
        self.eps = config.eps
        self.modulation = param(
            rngs,
            lambda key, shape, dtype: jax.random.normal(key, shape, dtype) / math.sqrt(d),
            (2, d),
            (None, "embed"),
            config.param_dtype,
        )
        self.linear = _linear(config, d, config.out_dim * config.patch_volume, ("embed", "patch"), rngs)

    def features(self, x: jax.Array, e: jax.Array) -> jax.Array:
        """tokens (B, L, D), e (B, D) from `embed_time` -> (B, L, D): the normalised, modulated tokens the
        projection reads (a further per-token output head can read them too)."""
        mod = self.modulation[...].astype(jnp.float32)[None] + e.astype(jnp.float32)[:, None]
        shift, scale = mod[:, 0:1], mod[:, 1:2]
        return mul_broadcast(layer_norm(x, self.eps), 1.0 + scale) + shift

    def __call__(self, x: jax.Array, e: jax.Array) -> jax.Array:
        """tokens (B, L, D), e (B, D) from `embed_time` -> (B, L, pt*ph*pw*C_out) float32."""
        return self.linear(self.features(x, e)).astype(jnp.float32)


class MLPEmbedding(nnx.Module):
    """linear_1 -> activation -> linear_2 (the text and time embeddings)."""

    def __init__(self, config: WanConfig, n_in: int, axes_in, activation, *, rngs: nnx.Rngs, dtype=None):
        self.linear_1 = _linear(config, n_in, config.dim, axes_in, rngs, dtype=dtype)
        self.linear_2 = _linear(config, config.dim, config.dim, ("embed", "mlp"), rngs, dtype=dtype)
        self.activation = activation

    def __call__(self, x):
        return self.linear_2(self.activation(self.linear_1(x).astype(jnp.float32)))


def _silu(x):
    return jax.nn.silu(x.astype(jnp.float32))


def _gelu_tanh(x):
    return gelu_tanh(x.astype(jnp.float32))


class WanDiT(nnx.Module):
    """Wan 2.1 T2V transformer. See the module docstring for the stage methods."""

    def __init__(self, config: WanConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.patch_embedding = _linear(c, c.patch_volume * c.in_dim, c.dim, ("patch", "embed"), rngs)
        self.text_embedding = MLPEmbedding(c, c.text_dim, ("text", "embed"), _gelu_tanh, rngs=rngs)
        # Time embedding and projection stay float32 whatever the compute dtype (they set the adaLN
        # modulation of every block; diffusers keeps them float32 too).
        self.time_embedding = MLPEmbedding(c, c.freq_dim, (None, "embed"), _silu, rngs=rngs, dtype=jnp.float32)
        self.time_projection = _linear(c, c.dim, 6 * c.dim, ("embed", "mlp"), rngs, dtype=jnp.float32)

        @nnx.split_rngs(splits=c.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs):
            return WanBlock(c, rngs=rngs)

        self.blocks = make_blocks(rngs)
        # `dit.head(tokens, e)` is this module's call: (B, L, D), (B, D) -> (B, L, pt*ph*pw*C_out).
        self.head = WanHead(c, rngs=rngs)

    # ----------------------------------------------------------------------------------------------
    # stages
    # ----------------------------------------------------------------------------------------------
    def check_inputs(self, x: jax.Array, t: jax.Array, context: jax.Array) -> None:
        """Raise ValueError naming the argument and the expected shape for malformed inputs."""
        c = self.config
        pt, ph, pw = c.patch_size
        if getattr(x, "ndim", None) != 5 or x.shape[-1] != c.in_dim:
            raise ValueError(
                f"x must be latents of shape (B, F, H, W, {c.in_dim}) (channels last); "
                f"got {getattr(x, 'shape', type(x))}"
            )
        b, f, h, w, _ = x.shape
        if f % pt or h % ph or w % pw:
            raise ValueError(
                f"x (B, F, H, W, C) needs F, H, W divisible by patch_size {c.patch_size}; got F, H, W = {(f, h, w)}"
            )
        if getattr(t, "ndim", None) != 1 or t.shape[0] != b:
            raise ValueError(
                f"t must have shape (B,) = ({b},), one timestep per sample; got {getattr(t, 'shape', type(t))}"
            )
        if getattr(context, "ndim", None) != 3 or context.shape[0] != b or context.shape[2] != c.text_dim:
            raise ValueError(
                f"context must have shape (B, L_text, text_dim) = ({b}, L_text, {c.text_dim}); "
                f"got {getattr(context, 'shape', type(context))}"
            )
        if context.shape[1] < 1:
            raise ValueError("context must hold at least one text token; got L_text = 0")
        if not isinstance(t, jax.core.Tracer):
            t_np = np.asarray(t, dtype=np.float64)
            if not np.all(np.isfinite(t_np)):
                raise ValueError(f"t (B,) must be finite timesteps in [0, 1000]; got {t_np}")

    def patchify(self, x: jax.Array) -> tuple[jax.Array, tuple[int, int, int]]:
        """x (B, F, H, W, C_in) -> tokens (B, f*h*w, D) in the compute dtype (row-major f, h, w) and
        the token grid (f, h, w) = (F/pt, H/ph, W/pw). The 3D patch conv as one matmul."""
        patches, grid = self.patches(x)
        return shard_activation(self.patch_embedding(patches), TOKENS), grid

    def patches(self, x: jax.Array) -> tuple[jax.Array, tuple[int, int, int]]:
        """x (B, F, H, W, C) -> raw patches (B, f*h*w, pt*ph*pw*C) in x's dtype (the layout `unpatchify`
        reads) and the token grid (f, h, w)."""
        pt, ph, pw = self.config.patch_size
        b, fr, hh, ww, ch = x.shape
        f, h, w = fr // pt, hh // ph, ww // pw
        x = x.reshape(b, f, pt, h, ph, w, pw, ch).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        return x.reshape(b, f * h * w, pt * ph * pw * ch), (f, h, w)

    def unpatchify(self, tokens: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
        """tokens (B, f*h*w, pt*ph*pw*C_out) -> (B, f*pt, h*ph, w*pw, C_out)."""
        c = self.config
        pt, ph, pw = c.patch_size
        f, h, w = grid
        b = tokens.shape[0]
        x = tokens.reshape(b, f, h, w, pt, ph, pw, c.out_dim).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return x.reshape(b, f * pt, h * ph, w * pw, c.out_dim)

    def rope_frequencies(self, positions) -> tuple[jax.Array, jax.Array]:
        """positions (L, 3) int (frame, row, col) -> (cos, sin), each (L, head_dim // 2) float32.
        Use `grid_positions(f, h, w, frame_offset)` for a token grid."""
        c = self.config
        return rope_lib.rope_frequencies(positions, c.head_dim, c.rope_max_seq_len, c.rope_theta)

    def embed_time(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """t (B,) in [0, 1000] -> e (B, D) (head modulation) and e0 (B, 6, D) (block modulation), float32."""
        e = self.time_embedding(sinusoidal_embedding(t, self.config.freq_dim)).astype(jnp.float32)
        e0 = self.time_projection(_silu(e)).astype(jnp.float32)
        return e, e0.reshape(e0.shape[0], 6, self.config.dim)

    def embed_text(self, context: jax.Array) -> jax.Array:
        """context (B, L_text, text_dim) -> (B, L_text, D) in the compute dtype."""
        return self.text_embedding(context)

    def run_blocks(
        self,
        tokens: jax.Array,
        e0: jax.Array,
        text: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        *,
        mask: jax.Array | None = None,
        text_mask: jax.Array | None = None,
    ) -> jax.Array:
        """All blocks (scanned over the stacked layer axis).

        Args:
          tokens: (B, L, D) video tokens; e0: (B, 6, D) from `embed_time`; text: (B, L_text, D) from
            `embed_text`; rope: (cos, sin) each (L, head_dim // 2) from `rope_frequencies`.
          mask: optional (B, L) bool key mask for self-attention; text_mask: optional (B, L_text) bool
            key mask for cross-attention (the reference uses neither).
        Returns:
          (B, L, D) float32.
        """
        policy_name = self.config.remat_policy

        def body(x, block, e0, text, rope, mask, text_mask):
            return block(x, e0, text, rope, mask, text_mask)

        if policy_name != "none":
            body = nnx.remat(body, policy=remat_policy_fn(policy_name), prevent_cse=False)
        body = nnx.scan(body, in_axes=(nnx.Carry, 0, None, None, None, None, None), out_axes=nnx.Carry)
        x = shard_activation(tokens.astype(jnp.float32), TOKENS)
        return body(x, _in_current_trace(self.blocks), e0, text, rope, mask, text_mask)

    def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
        """x (B, F, H, W, C_in) latents, t (B,) timesteps in [0, 1000], context (B, L_text, text_dim)
        -> (B, F, H, W, C_out) float32 (the velocity / flow prediction)."""
        self.check_inputs(x, t, context)
        tokens, grid = self.patchify(x)
        rope = self.rope_frequencies(rope_lib.grid_positions(*grid))
        e, e0 = self.embed_time(t)
        text = self.embed_text(context)
        tokens = self.run_blocks(tokens, e0, text, rope)
        return self.unpatchify(self.head(tokens, e), grid)


def _in_current_trace(module: nnx.Module) -> nnx.Module:
    """`module` rebuilt with new Variable objects holding the same arrays, owned by the current JAX trace.

    NNX transforms (the blocks' `nnx.scan`) refuse Variables made at another trace level, which is what
    the plain functional pattern hands them: `nnx.merge(graphdef, state)` inside `jax.grad`/`jax.jit`
    reuses (or rebuilds in the outer trace) the Variables of `state`. The arrays are shared, so values and
    gradients are unchanged; the blocks are read-only in a forward pass, so nothing needs writing back.
    """
    return nnx.merge(*nnx.split(module), copy=True)


grid_positions = rope_lib.grid_positions
