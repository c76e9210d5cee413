"""Checkpoint conversion: official / diffusers / transformers safetensors <-> NNX state."""

from trackedit_jax.convert.checkpoint_files import (
    CheckpointReader,
    PickleCheckpointError,
    open_checkpoint,
    write_safetensors,
)
from trackedit_jax.convert.wan_transformer import (
    export_wan_transformer,
    infer_config,
    load_wan_transformer,
    wan_state_dict,
)

__all__ = [
    "CheckpointReader",
    "PickleCheckpointError",
    "export_wan_transformer",
    "infer_config",
    "load_wan_transformer",
    "open_checkpoint",
    "wan_state_dict",
    "write_safetensors",
]
