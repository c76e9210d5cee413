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
