"""The Wan 2.1 family in Flax NNX.

The DiT (`dit`, `config`, `rope`), the causal VAE (`vae`), the UMT5 encoder (`umt5`).
"""
