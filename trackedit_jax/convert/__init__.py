"""Checkpoint conversion: official / diffusers / transformers safetensors <-> NNX state."""

from trackedit_jax.convert.checkpoint_files import (
    CheckpointReader,
    PickleCheckpointError,
    open_checkpoint,
    write_safetensors,
)

__all__ = ["CheckpointReader", "PickleCheckpointError", "open_checkpoint", "write_safetensors"]
