"""The built-in model: the demo model trained on a CPU (`configs/demo_cpu.py`), shipped in the package.

It is the default `--checkpoint` of `trackedit edit`, `trackedit eval` and `trackedit demo`.
"""

from __future__ import annotations

import pathlib

BUILTIN_MODEL = pathlib.Path(__file__).resolve().parent.parent / "assets" / "demo_model"


def resolve_checkpoint(path: str | None) -> pathlib.Path:
    """`path` as an absolute path, or the built-in model when None; FileNotFoundError if absent."""
    if path:
        return pathlib.Path(path).expanduser().absolute()
    if not (BUILTIN_MODEL / "config.json").is_file():
        raise FileNotFoundError(
            f"the built-in model is missing ({BUILTIN_MODEL}); reinstall the package or pass --checkpoint DIR"
        )
    return BUILTIN_MODEL
