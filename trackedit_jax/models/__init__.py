"""Flax NNX modules (channels-last): the Wan DiT, VAE and UMT5, the track conditioner, LoRA."""
