"""Inference: the pretrained directory (`pretrained`), export of training runs (`export`) and the edit
pipeline (`pipeline`)."""

from trackedit_jax.infer.pipeline import EditPipeline
from trackedit_jax.infer.pretrained import PretrainedConfig, load_pretrained, save_pretrained

__all__ = ["EditPipeline", "PretrainedConfig", "load_pretrained", "save_pretrained"]
