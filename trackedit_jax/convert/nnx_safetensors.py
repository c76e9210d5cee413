"""Our own modules' weights as safetensors: NNX state paths joined by "." -> tensors.

Used for the parts of a trained model that have no external layout (the track conditioner, our
VAE/DiT copies inside a pretrained directory). Loading checks every key and shape against the
module it fills and names what is missing, unexpected or mis-shaped.
"""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
from flax import nnx

from trackedit_jax.convert.checkpoint_files import open_checkpoint, write_safetensors


class StateMismatchError(ValueError):
    """Keys or shapes of a weights file do not match the module."""


def _flat(state: nnx.State) -> dict[str, jax.Array]:
    out = {}
    for path, leaf in nnx.to_flat_state(state):
        out[".".join(str(p) for p in path)] = leaf[...] if isinstance(leaf, nnx.Variable) else leaf
    return out


def save_module(
    module: nnx.Module, out_dir: str | os.PathLike, basename: str, *, filter=nnx.Param
) -> list[pathlib.Path]:
    """Write the `filter`-selected state of `module` to `out_dir/<basename>.safetensors` (atomic)."""
    tensors = {k: np.asarray(jax.device_get(v)) for k, v in _flat(nnx.state(module, filter)).items()}
    return write_safetensors(tensors, out_dir, basename=basename, metadata={"format": "trackedit-nnx"})


def load_module_state(module: nnx.Module, path: str | os.PathLike, *, filter=nnx.Param, dtype=None) -> nnx.Module:
    """Fill `module`'s `filter`-selected parameters in place from a file written by `save_module`.

    `module` may be abstract (from `nnx.eval_shape`); every parameter must be present with its shape.
    """
    state = nnx.state(module, filter)
    expected = {".".join(str(p) for p in path): leaf for path, leaf in nnx.to_flat_state(state)}
    with open_checkpoint(path) as reader:
        have = set(reader.keys())
        missing = sorted(set(expected) - have)
        unexpected = sorted(have - set(expected))
        if missing or unexpected:
            raise StateMismatchError(
                f"{path}: weights do not match the module: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        new_flat = []
        for path_t, leaf in nnx.to_flat_state(state):
            key = ".".join(str(p) for p in path_t)
            shape = tuple(reader.shape(key))
            want = tuple(leaf.shape)
            if shape != want:
                raise StateMismatchError(f"{path}: {key} has shape {shape}; the module expects {want}")
            arr = reader.get(key)
            arr = arr.astype(dtype or leaf.dtype)
            new_flat.append((path_t, leaf.replace(jax.numpy.asarray(arr))))
    nnx.update(module, nnx.from_flat_state(new_flat))
    return module
