"""The optimiser: AdamW with linear warm-up and cosine decay, global-norm clipping (optax)."""

from __future__ import annotations

import optax


def learning_rate_schedule(*, peak_lr: float, warmup_steps: int, total_steps: int, end_lr_ratio: float = 0.1):
    """Linear warm-up from 0 to `peak_lr` over `warmup_steps`, then cosine decay to `end_lr_ratio * peak_lr`."""
    if total_steps <= 0:
        raise ValueError(f"train.num_steps must be positive; got {total_steps}")
    warmup_steps = min(int(warmup_steps), total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_lr,
        warmup_steps=max(warmup_steps, 1),
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=peak_lr * end_lr_ratio,
    )


def make_optimizer(
    *,
    peak_lr: float,
    warmup_steps: int,
    total_steps: int,
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip_norm: float | None = 1.0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW + warm-up/cosine schedule, preceded by global-norm clipping when `clip_norm` is set."""
    schedule = learning_rate_schedule(peak_lr=peak_lr, warmup_steps=warmup_steps, total_steps=total_steps)
    parts = []
    if clip_norm:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts), schedule
