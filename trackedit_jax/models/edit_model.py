"""Edit-by-Track: the Wan DiT conditioned on a source video and paired 3D tracks (paired V2V tokens).

  nu_src = patchify(z_src)          clean source latents, (B, L, D), L = f*h*w tokens
  nu_tgt = patchify(x_t)            noisy target latents
  tau_src, tau_tgt = TrackConditioner(nu_src, tracks)
  tokens = [nu_src + tau_src, nu_tgt + tau_tgt]        (B, 2L, D), concatenated along the sequence
  RoPE   : "sequential": source frames 0..f-1, target frames f..2f-1 (target follows source in time)
           "shared":     both 0..f-1, plus a learned source/target embedding added to the tokens
  text cross-attention and timestep modulation exactly as in Wan; the head runs on the target half.
  source_skip (option, x0-predicting models only): output = patches(z_src) + head(...), the head
           initialised at zero, so an untrained model returns the source and learns only the change.
  warp_prior (option): the model is also given z_warp, the latents of the source moved into the target
           view by the classical warp (`geometry.warp`): tau_tgt += Linear(patches(z_warp)), and a
           source_skip model adds its change to patches(z_warp) instead (an untrained one is the warp).
  source_gate (option, source_skip + warp_prior models): a second head reads the same final features
           and gives, for every output value, g = sigmoid(gate) in (0, 1):
             output = patches(z_warp) + g * (patches(z_src) - patches(z_warp)) + head(...)
           so the model can take any pixel from the source instead of the warp (where an object turns in
           place, the source is closer than the warp's fragments of it), which a change of rank D per token
           cannot express; its bias starts at -4 (g = 0.018: an untrained model is nearly the warp).
  gate_coverage (option, source_gate + warp_coverage models): the gate also reads the coverage clip's
           patches directly, gate = gate_head(features) + Linear(patches(z_coverage)) (zero-initialised),
           so the choice can follow, pixel by pixel, where the warp guessed and how far the source's own
           pixel moved (a token's final features do not resolve single pixels). It does not depend on the
           noise level and is computed once, in `encode_source`.

The source path (patchify of z_src, the conditioner) does not depend on the noise level, so
`encode_source` computes it once and `__call__` reuses it at every sampling step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from trackedit_jax.models.lora import LoRALinear
from trackedit_jax.models.track_conditioner import ConditionerConfig, TrackConditioner
from trackedit_jax.models.wan.config import WanConfig
from trackedit_jax.models.wan.dit import WanDiT
from trackedit_jax.models.wan.rope import grid_positions
from trackedit_jax.parallel.rules import param, shard_activation

ROPE_MODES = ("sequential", "shared")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SourceCache:
    """What `EditByTrack.encode_source` computes once per clip.

    source_tokens: (B, L, D) nu_src + tau_src (+ source embedding in "shared" mode).
    target_tracks: (B, L, D) tau_tgt (+ target embedding in "shared" mode, + the embedded warp in
      `warp_prior` models), added to nu_tgt each step.
    source_patches: (B, L, pt*ph*pw*C) float32 raw source patches (warp patches in `warp_prior`
      models), added to the head's output (`source_skip` models), else None.
    source_gap: (B, L, pt*ph*pw*C) float32 raw source patches minus warp patches, scaled by the gate
      and added to the output (`source_gate` models), else None.
    gate_logits: (B, L, pt*ph*pw*C) float32 the gate's term read from the coverage clip, added to the gate
      head's output before the sigmoid (`gate_coverage` models), else None.
    """

    source_tokens: Any
    target_tracks: Any
    source_patches: Any = None
    source_gap: Any = None
    gate_logits: Any = None


class EditByTrack(nnx.Module):
    """The edit model. Parameters: `dit` (the Wan backbone, optionally with LoRA), `conditioner`,
    in "shared" RoPE mode `side_embedding` (2, D), and in `warp_prior` models `prior_embedding`
    (pt*ph*pw*C_in*k -> D, k = 2 with `warp_coverage`, else 1), in `source_gate` models `gate_head`
    (D -> pt*ph*pw*C_out), and in `gate_coverage` models `gate_prior` (pt*ph*pw*C_in -> pt*ph*pw*C_out).

    Args:
      wan: `WanConfig` of the backbone (set `lora_rank` for LoRA fine-tuning).
      conditioner: `ConditionerConfig`.
      rope_mode: "sequential" or "shared" (see module docstring).
      source_skip: add the source latents to the output (the model predicts the target clip, x0, as the
        source plus a change; see module docstring). Needs in_dim == out_dim.
      warp_prior: take the warp's latents as a further input (see module docstring).
      warp_coverage: the prior also stacks the latents of the warp's coverage clip
        (`geometry.warp.coverage_video`) after the warp's on the channel axis: where the warp guessed, and
        how far it moved each source pixel.
      source_gate: a learned per-value choice between the warp and the source (see module docstring);
        needs source_skip and warp_prior.
      gate_coverage: the gate also reads the coverage clip (see module docstring); needs source_gate and
        warp_coverage.
    """

    GATE_BIAS = -4.0  # sigmoid(-4) = 0.018: an untrained gated model is the warp to within 2% of (source - warp)

    def __init__(
        self,
        wan: WanConfig,
        conditioner: ConditionerConfig,
        *,
        rope_mode: str = "sequential",
        source_skip: bool = False,
        warp_prior: bool = False,
        warp_coverage: bool = False,
        source_gate: bool = False,
        gate_coverage: bool = False,
        rngs: nnx.Rngs,
    ):
        if rope_mode not in ROPE_MODES:
            raise ValueError(f"rope_mode must be one of {ROPE_MODES}; got {rope_mode!r}")
        if source_skip and wan.in_dim != wan.out_dim:
            raise ValueError(f"source_skip needs in_dim == out_dim; got {wan.in_dim} and {wan.out_dim}")
        self.wan_config = wan
        self.rope_mode = rope_mode
        self.source_skip = source_skip
        if warp_coverage and not warp_prior:
            raise ValueError("warp_coverage needs warp_prior")
        self.warp_prior = warp_prior
        if source_gate and not (source_skip and warp_prior):
            raise ValueError("source_gate chooses between the source and the warp: it needs source_skip and warp_prior")
        self.source_gate = source_gate
        if gate_coverage and not (source_gate and warp_coverage):
            raise ValueError(
                "gate_coverage feeds the coverage clip to the source gate: it needs source_gate and warp_coverage"
            )
        self.gate_coverage = gate_coverage
        self.prior_clips = (2 if warp_coverage else 1) if warp_prior else 0
        self.dit = WanDiT(wan, rngs=rngs)
        if source_skip:
            # zero head: the untrained model returns the source exactly
            head = self.dit.head.linear
            head.kernel[...] = jnp.zeros_like(head.kernel[...])
            head.bias[...] = jnp.zeros_like(head.bias[...])
        self.conditioner = TrackConditioner(conditioner, wan.dim, rngs=rngs)
        if rope_mode == "shared":
            self.side_embedding = param(rngs, nnx.initializers.normal(0.02), (2, wan.dim), (None, "embed"), jnp.float32)
        if warp_prior:  # created last: the other parameters draw the same keys with or without it
            self.prior_embedding = LoRALinear(
                wan.patch_volume * wan.in_dim * self.prior_clips,
                wan.dim,
                logical_axes=("patch", "embed"),
                param_dtype=wan.param_dtype,
                dtype=wan.dtype,
                rngs=rngs,
            )
        if source_gate:  # after the prior embedding, for the same reason
            self.gate_head = LoRALinear(
                wan.dim,
                wan.patch_volume * wan.out_dim,
                logical_axes=("embed", "patch"),
                param_dtype=wan.param_dtype,
                dtype=wan.dtype,
                rngs=rngs,
            )
            self.gate_head.kernel[...] = jnp.zeros_like(self.gate_head.kernel[...])
            self.gate_head.bias[...] = jnp.full_like(self.gate_head.bias[...], self.GATE_BIAS)
        if gate_coverage:  # last again; zero: an untrained model gates exactly as one without it
            self.gate_prior = LoRALinear(
                wan.patch_volume * wan.in_dim,
                wan.patch_volume * wan.out_dim,
                logical_axes=("patch", "patch"),
                param_dtype=wan.param_dtype,
                dtype=wan.dtype,
                rngs=rngs,
            )
            self.gate_prior.kernel[...] = jnp.zeros_like(self.gate_prior.kernel[...])
            self.gate_prior.bias[...] = jnp.zeros_like(self.gate_prior.bias[...])

    # the parameters that train besides LoRA adapters in "lora" mode (paths contain these names)
    EXTRA_TRAINABLE = ("conditioner", "side_embedding", "prior_embedding", "gate_head", "gate_prior")

    def _check_latents(self, name: str, z: jax.Array) -> None:
        c = self.wan_config.in_dim
        if z.ndim != 5 or z.shape[-1] != c:
            raise ValueError(f"{name} must have shape (B, f, h, w, {c}); got {z.shape}")

    def encode_source(
        self,
        source_latents: jax.Array,
        source_xyz: jax.Array,
        target_xyz: jax.Array,
        source_valid: jax.Array,
        target_valid: jax.Array,
        prior_latents: jax.Array | None = None,
    ) -> SourceCache:
        """The noise-independent source path.

        Args:
          source_latents: (B, f, h, w, C_in) clean (normalised) source VAE latents.
          source_xyz, target_xyz: (B, f, N, 3) projected tracks (x, y in [-1, 1], z in [0, 1]).
          source_valid, target_valid: (B, f, N) bool.
          prior_latents: (B, f, h, w, C_in * k) normalised latents of the warp clip (k = 1), then of its
            coverage clip (k = 2, `warp_coverage` models); required by (and only accepted by) `warp_prior`
            models.
        Returns:
          SourceCache with (B, L, D) source tokens and target track tokens.
        """
        self._check_latents("source_latents", source_latents)
        nu_src, grid = self.dit.patchify(source_latents)
        B, L, D = nu_src.shape
        f, h, w = grid
        tau_src, tau_tgt = self.conditioner(
            nu_src.reshape(B, f, h, w, D), source_xyz, target_xyz, source_valid, target_valid
        )
        src = nu_src + tau_src.reshape(B, L, D).astype(nu_src.dtype)
        tgt = tau_tgt.reshape(B, L, D).astype(nu_src.dtype)
        if self.rope_mode == "shared":
            emb = self.side_embedding[...].astype(nu_src.dtype)
            src, tgt = src + emb[0], tgt + emb[1]
        skip = None  # the raw patches a source_skip model adds to its output
        if self.warp_prior:
            if prior_latents is None:
                raise ValueError("this model takes the warp prior: prior_latents (B, f, h, w, C) is required")
            want = (*source_latents.shape[:-1], source_latents.shape[-1] * self.prior_clips)
            if prior_latents.shape != want:
                raise ValueError(
                    f"prior_latents must have shape {want} (B, f, h, w, C * {self.prior_clips}); "
                    f"got {prior_latents.shape}"
                )
            C = source_latents.shape[-1]
            clips = [self.dit.patches(prior_latents[..., i * C : (i + 1) * C])[0] for i in range(self.prior_clips)]
            skip = clips[0]  # the warp (the coverage only informs the change)
            prior = jnp.concatenate(clips, axis=-1).astype(nu_src.dtype)
            tgt = tgt + self.prior_embedding(prior).astype(nu_src.dtype)
        elif prior_latents is not None:
            raise ValueError("prior_latents given to a model without warp_prior")
        if not self.source_skip:
            return SourceCache(src, tgt, None)
        source_patches = self.dit.patches(source_latents)[0]
        skip = source_patches if skip is None else skip
        gap = (source_patches - skip).astype(jnp.float32) if self.source_gate else None
        # clips[1] is the coverage clip (gate_coverage needs warp_coverage)
        logits = self.gate_prior(clips[1].astype(nu_src.dtype)).astype(jnp.float32) if self.gate_coverage else None
        return SourceCache(src, tgt, skip.astype(jnp.float32), gap, logits)

    def positions(self, grid: tuple[int, int, int]) -> jax.Array:
        """(2L, 3) int RoPE positions of [source, target] tokens for a token grid (f, h, w)."""
        f, h, w = grid
        offset = f if self.rope_mode == "sequential" else 0
        return jnp.concatenate([jnp.asarray(grid_positions(f, h, w)), jnp.asarray(grid_positions(f, h, w, offset))])

    def __call__(
        self, x_t: jax.Array, t: jax.Array, context: jax.Array, cache: SourceCache, return_gate: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Predict the velocity of the target latents.

        Args:
          x_t: (B, f, h, w, C_in) noisy target latents.
          t: (B,) timesteps in [0, 1000].
          context: (B, L_text, text_dim) text embeddings.
          cache: from `encode_source` for the same clip (same f, h, w).
          return_gate: also return the source gate's logits (`source_gate` models; a training loss reads them).
        Returns:
          (B, f, h, w, C_out) float32 network output: the velocity, or the clean target (x0) for a model
          trained with diffusion.prediction "sample" (always so for `source_skip` models); with return_gate,
          (output, (B, f, h, w, C_out) float32 gate logits), the gate being their sigmoid.
        """
        if return_gate and not self.source_gate:
            raise ValueError("return_gate: this model has no source gate (model.source_gate)")
        self._check_latents("x_t", x_t)
        nu_tgt, grid = self.dit.patchify(x_t)
        if cache.source_tokens.shape != nu_tgt.shape:
            raise ValueError(
                f"x_t gives {nu_tgt.shape[1]} tokens but the source cache holds {cache.source_tokens.shape[1]}: "
                "source and target latents must have the same (f, h, w)"
            )
        L = nu_tgt.shape[1]
        tokens = jnp.concatenate([cache.source_tokens, nu_tgt + cache.target_tracks], axis=1)
        tokens = shard_activation(tokens, ("act_batch", "act_length", "act_embed"))
        e, e0 = self.dit.embed_time(t)
        text = self.dit.embed_text(context)
        rope = self.dit.rope_frequencies(self.positions(grid))
        tokens = self.dit.run_blocks(tokens, e0, text, rope)
        features = self.dit.head.features(tokens[:, L:], e)
        out = self.dit.head.linear(features).astype(jnp.float32)  # = self.dit.head(tokens[:, L:], e)
        if self.source_gate:
            gate = self.gate_head(features).astype(jnp.float32)
            if cache.gate_logits is not None:
                gate = gate + cache.gate_logits
            out = out + jax.nn.sigmoid(gate) * cache.source_gap
        if cache.source_patches is not None:
            out = out + cache.source_patches
        if return_gate:
            return self.dit.unpatchify(out, grid), self.dit.unpatchify(gate, grid)
        return self.dit.unpatchify(out, grid)

    def forward(
        self,
        x_t,
        t,
        context,
        source_latents,
        source_xyz,
        target_xyz,
        source_valid,
        target_valid,
        prior_latents=None,
        return_gate=False,
    ):
        """`encode_source` then `__call__` (training: one noise level per example, nothing to reuse)."""
        cache = self.encode_source(
            source_latents, source_xyz, target_xyz, source_valid, target_valid, prior_latents=prior_latents
        )
        return self(x_t, t, context, cache, return_gate=return_gate)
