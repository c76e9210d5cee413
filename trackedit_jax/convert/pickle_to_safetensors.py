"""The ONE place in trackedit that unpickles: convert a PyTorch `.pth`/`.pt`/`.bin`/`.ckpt` to safetensors.

Unpickling runs whatever code the file asks for, so a malicious checkpoint can take over the machine
the moment it is loaded. We therefore only do it when the caller passes ``trust_pickle=True`` (the
`--trust-pickle` flag of `trackedit convert`), and even then we first try torch's restricted
``weights_only=True`` loader, which only rebuilds tensors and plain containers. Everything else in
trackedit reads safetensors only.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from trackedit_jax.convert.checkpoint_files import write_safetensors

PICKLE_DANGER = (
    "PyTorch .pth/.pt/.bin/.ckpt files are Python pickles: loading one can execute arbitrary code hidden in "
    "it, with your user's rights. Convert only files from a source you trust"
)


class UntrustedPickleError(ValueError):
    """Conversion of a pickle was requested without trust_pickle=True."""


def _flatten(obj: Any, prefix: str, out: dict, skipped: list[str]) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, skipped)
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(v, torch.Tensor) for v in obj):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), out, skipped)
    else:
        skipped.append(prefix or "<root>")


def _unwrap(obj: Any) -> Any:
    """Training checkpoints often nest the weights under 'state_dict' / 'model' / 'module'."""
    import torch

    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "module", "model_state_dict", "ema"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            break
    return obj


def _to_numpy(t) -> np.ndarray:
    import ml_dtypes
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        name = {torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e5m2: "float8_e5m2"}[t.dtype]
        return t.view(torch.uint8).numpy().view(getattr(ml_dtypes, name))
    return t.numpy()


def convert_pickle_to_safetensors(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    max_shard_bytes: int | None = None,
) -> dict:
    """Convert a PyTorch pickle checkpoint to safetensors.

    Args:
      src: the `.pth` / `.pt` / `.bin` / `.ckpt` file.
      dst: output `NAME.safetensors` (with `max_shard_bytes`, shards `NAME-0000i-of-0000n.safetensors`
        plus `NAME.safetensors.index.json` when larger).
      trust_pickle: must be True; see the module docstring for why.
      max_shard_bytes: None = one file.
    Returns:
      a report: {"tensors": n, "bytes": total, "files": [paths], "skipped": [non-tensor entries],
      "restricted_loader": bool (False when the weights_only loader failed and full unpickling was used)}.
    Raises:
      UntrustedPickleError without trust_pickle; FileNotFoundError; ValueError when no tensors are found.
    """
    if not trust_pickle:
        raise UntrustedPickleError(
            f"refusing to unpickle {src}: {PICKLE_DANGER}; pass --trust-pickle (trust_pickle=True) to convert it."
        )
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    if dst.suffix != ".safetensors":
        raise ValueError(f"output must end in .safetensors; got {dst}")
    try:
        import torch
    except ImportError:
        raise ValueError("reading a PyTorch pickle needs PyTorch: pip install torch (CPU build is enough)") from None

    restricted = True
    try:
        # mmap: tensors stay in the page cache rather than being copied into process memory.
        obj = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
    except Exception as first:  # the restricted unpickler refused something in the file
        try:
            obj = torch.load(src, map_location="cpu", weights_only=True)
        except Exception:
            restricted = False
            warnings.warn(
                f"{src}: torch's restricted weights_only loader failed ({type(first).__name__}: {first}); "
                "unpickling it fully because --trust-pickle was given",
                stacklevel=2,
            )
            obj = torch.load(src, map_location="cpu", weights_only=False)
    tensors: dict = {}
    skipped: list[str] = []
    _flatten(_unwrap(obj), "", tensors, skipped)
    if not tensors:
        raise ValueError(f"{src}: no tensors found in the checkpoint (top-level type {type(obj).__name__})")
    arrays = {k: _to_numpy(v) for k, v in tensors.items()}
    total = int(sum(a.nbytes for a in arrays.values()))
    files = write_safetensors(
        arrays,
        dst.parent,
        basename=dst.name[: -len(".safetensors")],
        max_shard_bytes=max_shard_bytes or max(total, 1) + 1,
        metadata={"converted_from": src.name},
    )
    return {
        "tensors": len(arrays),
        "bytes": total,
        "files": [str(f) for f in files],
        "skipped": skipped,
        "restricted_loader": restricted,
    }
