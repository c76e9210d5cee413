"""Attention kernels behind one local dispatch, `attention()`; knows nothing of meshes or models.

Models call `trackedit_jax.parallel.attention.attention`, which adds context parallelism and calls this.
"""

from trackedit_jax.kernels.attention import attention

__all__ = ["attention"]
