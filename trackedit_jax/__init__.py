"""trackedit_jax: Edit-by-Track video motion editing with 3D point tracks, in JAX/Flax NNX."""

__version__ = "0.1.0"
