"""Model FLOPs of the edit model (the maxdiffusion/MFU convention: matmul FLOPs only, 2 per MAC).

Per DiT block over S = 2L paired tokens (L per side), width d, FFN width m, T text tokens of width d:
  self-attention projections 8 S d^2, scores and weighted sum 4 S^2 d,
  cross-attention projections 4 S d^2 (q, o) + 4 T d^2 (k, v), scores and sum 4 S T d,
  feed-forward 4 S d m.
Training costs 3x the forward pass (forward + backward). The VAE and the track conditioner are not
counted (they are a few percent at the paper's size); this makes reported MFU a lower bound.
"""

from __future__ import annotations


def dit_forward_flops(
    *,
    dim: int,
    ffn_dim: int,
    num_layers: int,
    tokens: int,
    text_tokens: int,
    text_dim: int,
    patch_in: int,
    out_dim: int,
) -> float:
    """Forward FLOPs of one example through the Wan DiT on `tokens` tokens."""
    S, d, T = tokens, dim, text_tokens
    block = 8 * S * d * d + 4 * S * S * d + 4 * S * d * d + 4 * T * d * d + 4 * S * T * d + 4 * S * d * ffn_dim
    embed = 2 * S * patch_in * d + 2 * T * text_dim * d + 2 * T * d * d
    head = 2 * S * d * out_dim
    return float(num_layers * block + embed + head)


def train_step_flops(wan, *, latent_shape: tuple[int, int, int], text_tokens: int, batch_size: int) -> float:
    """FLOPs of one training step: 3 x forward over the paired sequence, for the whole global batch.

    Args:
      wan: `WanConfig`; latent_shape: (f, h, w) latent grid of one side; text_tokens: T.
    """
    f, h, w = latent_shape
    pt, ph, pw = wan.patch_size
    tokens_per_side = (f // pt) * (h // ph) * (w // pw)
    fwd = dit_forward_flops(
        dim=wan.dim,
        ffn_dim=wan.ffn_dim,
        num_layers=wan.num_layers,
        tokens=2 * tokens_per_side,
        text_tokens=text_tokens,
        text_dim=wan.text_dim,
        patch_in=wan.in_dim * pt * ph * pw,
        out_dim=wan.out_dim * pt * ph * pw,
    )
    return 3.0 * fwd * batch_size


# --------------------------------------------------------------------------------------------------------
# The whole edit model, by kind of work, and what a compiled step executes (for checking a compiled program)


def edit_model_forward_parts(
    wan,
    cond,
    *,
    latent_shape: tuple[int, int, int],
    num_tracks: int,
    text_tokens: int,
    warp_prior: bool = False,
    prior_clips: int = 1,
    source_gate: bool = False,
    gate_coverage: bool = False,
) -> dict[str, float]:
    """Forward matmul FLOPs of one example through `EditByTrack`, by kind (all floats):

    dit_linear     the DiT's projections, FFN, second text-embedding layer and head (`dit_forward_flops`
                   less the attention cores and dit_inputs); dit_inputs  the patch embedding and the first
                   text-embedding layer (applied to inputs: no input gradient); dit_attention  the attention
                   cores (scores and weighted sums, self over S = 2L paired tokens, cross over T text tokens);
    lora           the LoRA adapters on q/k/v/o of both attentions and the FFN (x A then B, rank r);
    conditioner    the track conditioner's projections (sample, temporal transformer, two splats);
    conditioner_inputs  its Fourier-feature encodings of points, grid cells and z (no input gradient);
    conditioner_attention  its attention cores;
    prior_inputs   the warp prior's patch embedding (`warp_prior` models; trained, applied to inputs);
    gate_head      the source gate's projection of the target tokens (`source_gate` models), plus its
                   projection of the coverage clip's patches (`gate_coverage` models).

    Args:
      wan: `WanConfig`; cond: `ConditionerConfig`; latent_shape: (f, h, w) latent grid of one side;
      num_tracks: N (the padded track count the model sees); text_tokens: T; warp_prior: the model's flag;
      prior_clips: clips the prior stacks (2 with `warp_coverage`); source_gate, gate_coverage: the model's
      flags.
    """
    f, h, w = latent_shape
    pt, ph, pw = wan.patch_size
    fl, K = f // pt, (h // ph) * (w // pw)  # latent frames, token cells per frame
    L = fl * K
    S, d, T, m, Lyr = 2 * L, wan.dim, text_tokens, wan.ffn_dim, wan.num_layers
    full = dit_forward_flops(
        dim=d,
        ffn_dim=m,
        num_layers=Lyr,
        tokens=S,
        text_tokens=T,
        text_dim=wan.text_dim,
        patch_in=wan.in_dim * pt * ph * pw,
        out_dim=wan.out_dim * pt * ph * pw,
    )
    attn = Lyr * (4 * S * S * d + 4 * S * T * d)
    dit_inputs = 2 * S * wan.in_dim * pt * ph * pw * d + 2 * T * wan.text_dim * d  # first layers: no input gradient
    r = int(getattr(wan, "lora_rank", 0) or 0)
    lora = Lyr * r * (24 * S * d + 8 * T * d + 4 * S * (d + m))
    # the conditioner: c wide, D = model width, P / Z Fourier features of a point / of z
    c, D, N, mr = cond.dim, d, int(num_tracks), cond.mlp_ratio
    P, Z = cond.track_dims * (2 * cond.num_freqs + 1), 2 * cond.num_freqs + 1
    temporal_lin = cond.temporal_layers * (8 * N * fl * c * c + 4 * N * fl * c * c * mr)
    temporal_attn = cond.temporal_layers * 4 * N * fl * fl * c
    lin = 2 * fl * K * D * c + temporal_lin + 2 * fl * K * c * D  # sample values, temporal, output (x2 sides below)
    lin += 2 * fl * K * c * D  # the second side's output projection
    encodings = 2 * (2 * fl * N * Z * c) if cond.z_embedding else 0  # Fourier features -> c: no input gradient
    if cond.sampling == "cross_attn":
        encodings += 3 * (2 * K * P * c) + 3 * (2 * fl * N * P * c)  # grid and point encodings (sample + 2 splats)
        lin += 2 * fl * N * c * c * 2 + 2 * fl * K * c * c * 2  # sample attention: q, o on tracks; k, v on cells
        lin += 2 * (2 * fl * K * c * c * 2 + 2 * fl * N * c * c * 2)  # splats: q, o on cells; k, v on tracks
        cattn = 4 * fl * N * K * c + 2 * 4 * fl * K * (N + 1) * c
    else:
        cattn = 2 * fl * N * K * c * 3  # fixed-weight sample and two splats (einsums)
    return {
        "dit_linear": float(full - attn - dit_inputs),
        "dit_inputs": float(dit_inputs),
        "dit_attention": float(attn),
        "lora": float(lora),
        "conditioner": float(lin),
        "conditioner_inputs": float(encodings),
        "conditioner_attention": float(cattn + temporal_attn),
        "prior_inputs": float(2 * L * wan.in_dim * prior_clips * pt * ph * pw * d if warp_prior else 0),
        "gate_head": float(2 * L * d * wan.out_dim * pt * ph * pw if source_gate else 0)
        + float(2 * L * wan.in_dim * wan.out_dim * (pt * ph * pw) ** 2 if gate_coverage else 0),
    }


def executed_train_step_flops(
    parts: dict[str, float],
    *,
    batch_size: int,
    base_trainable: bool,
    remat_full: bool,
    recompute_scores: bool,
) -> float:
    """Matmul FLOPs a compiled training step executes for `edit_model_forward_parts`, which differ from
    the model FLOPs (3 x forward) in three ways:

    * a frozen projection (the Wan base under LoRA) needs the input gradient only: 2 x forward, not 3;
      a layer applied to the inputs needs no input gradient: 2 x forward when trained, 1 x when frozen;
    * full rematerialisation recomputes each DiT block's forward in the backward pass: + 1 x forward of
      the blocks (the embeddings, head and conditioner are outside the scanned blocks);
    * flash-style attention kernels (the chunked CPU kernel, splash, cuDNN, Pallas) recompute the scores
      in the backward pass instead of storing them: the attention core costs 3.5 x forward, not 3.

    recompute_scores: whether the DiT's attention runs on such a kernel (the conditioner's attention
    cores are counted at 3 x: they are a small share either way).
    """
    remat = 1.0 if remat_full else 0.0
    lin = parts["dit_linear"] * ((3.0 if base_trainable else 2.0) + remat)
    lin += parts["dit_inputs"] * (2.0 if base_trainable else 1.0)
    attn = parts["dit_attention"] * ((3.5 if recompute_scores else 3.0) + remat)
    lora = parts["lora"] * (3.0 + remat)
    cond = 3.0 * (parts["conditioner"] + parts["conditioner_attention"]) + 2.0 * parts["conditioner_inputs"]
    cond += 2.0 * parts.get("prior_inputs", 0.0) + 3.0 * parts.get("gate_head", 0.0)  # the gate is trained, mid-network
    return float(batch_size * (lin + attn + lora + cond))
