"""Checkpoint conversion: official / diffusers / transformers safetensors <-> NNX state."""

from trackedit_jax.convert.checkpoint_files import (
    CheckpointReader,
    PickleCheckpointError,
    open_checkpoint,
    write_safetensors,
)
from trackedit_jax.convert.pickle_to_safetensors import convert_pickle_to_safetensors
from trackedit_jax.convert.umt5 import load_tokenizer, load_umt5_encoder
from trackedit_jax.convert.wan_transformer import (
    export_wan_transformer,
    infer_config,
    load_wan_transformer,
    wan_state_dict,
)
from trackedit_jax.convert.wan_vae import CheckpointMismatchError, load_wan_vae

__all__ = [
    "CheckpointMismatchError",
    "CheckpointReader",
    "PickleCheckpointError",
    "convert_pickle_to_safetensors",
    "export_wan_transformer",
    "infer_config",
    "load_tokenizer",
    "load_umt5_encoder",
    "load_wan_transformer",
    "load_wan_vae",
    "open_checkpoint",
    "wan_state_dict",
    "write_safetensors",
]
