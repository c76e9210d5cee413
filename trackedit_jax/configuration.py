"""Loading configurations: a preset file or name, plus `--config.key=value` overrides.

    load_config("configs/tiny_cpu.py", ["--config.train.num_steps=20", "--config.mesh.data=2"])
    load_config("tiny_cpu")                       # the same preset by name

Override values are parsed as Python literals (`3`, `1e-4`, `true`, `(1, 2, 2)`, `'text'`) and must
keep the type of the field they replace (ints may become floats); unknown keys are errors naming them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pathlib
from collections.abc import Sequence

from ml_collections import ConfigDict

OVERRIDE_PREFIX = "--config."


def _load_module(spec: str):
    path = pathlib.Path(spec)
    if path.suffix == ".py":
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {spec}")
        mod_spec = importlib.util.spec_from_file_location(f"_trackedit_config_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(f"configs.{spec}")
    except ModuleNotFoundError as e:
        raise ValueError(f"unknown config {spec!r}: give a file (configs/NAME.py) or a preset name") from e


def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(key: str, old, new):
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise ValueError(f"--config.{key}: expected true/false; got {new!r}")
        return new
    if isinstance(old, int) and isinstance(new, int) and not isinstance(new, bool):
        return new
    if isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
        return float(new)
    if isinstance(old, str):
        return str(new)
    if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
        return type(old)(new)
    raise ValueError(f"--config.{key}: expected a {type(old).__name__}; got {new!r}")


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
    """Apply `--config.a.b=value` strings to `config` in place (and return it)."""
    for item in overrides:
        if not item.startswith(OVERRIDE_PREFIX) or "=" not in item:
            raise ValueError(f"bad override {item!r}: use --config.<key>=<value>")
        key, text = item[len(OVERRIDE_PREFIX) :].split("=", 1)
        node = config
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, ConfigDict) or part not in node:
                raise ValueError(f"--config.{key}: unknown key {'.'.join(parts[: i + 1])!r}")
            node = node[part]
        last = parts[-1]
        if not isinstance(node, ConfigDict) or last not in node:
            raise ValueError(f"--config.{key}: unknown key")
        old = node[last]
        # a string field takes the text as written ("none" stays the string "none")
        node[last] = text if isinstance(old, str) else _coerce(key, old, _parse_value(text))
    return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """A preset's `get_config()` with overrides applied."""
    module = _load_module(spec)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{spec}: a config module must define get_config()")
    return apply_overrides(module.get_config(), overrides)


def config_from_json(path: str | pathlib.Path) -> ConfigDict:
    """A ConfigDict saved with `to_json_best_effort` (e.g. `WORKDIR/config.json`)."""
    with open(path) as f:
        return ConfigDict(json.load(f))
