"""Attention kernels behind one entry point, `attention()`."""

from trackedit_jax.kernels.attention import attention

__all__ = ["attention"]
