"""Reading an edit spec file: YAML/JSON into plain data plus the line of every key, and the errors that
name `file:line: key.path:` (`EditSpecError`, built by `SpecSource.error`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Any

import yaml

Path = tuple  # key path, e.g. ("objects", 0, "ops", 1, "degrees")


class EditSpecError(ValueError):
    """A problem with an edit spec; the message names the file, line and key."""


def format_path(path: Path) -> str:
    """A key path as the user wrote it: ("objects", 0, "ops") -> "objects[0].ops"."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top>"


@dataclasses.dataclass
class SpecSource:
    """Where spec data came from: a file name and {key path: line}; turns a key path into an error."""

    source: str
    lines: dict

    def line_of(self, path: Path) -> int | None:
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def error(self, path: Path, msg: str) -> EditSpecError:
        line = self.line_of(path)
        loc = f"{self.source}:{line}" if line is not None else self.source
        return EditSpecError(f"{loc}: {format_path(path)}: {msg}")


class _Loader(yaml.SafeLoader):
    """SafeLoader whose floats include 1e-3 (PyYAML's YAML 1.1 resolver reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _to_python(node, loader: _Loader, path: Path, lines: dict, where: SpecSource):
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k_node, v_node in node.value:
            key = loader.construct_object(k_node, deep=True)
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                lines[path] = k_node.start_mark.line + 1
                raise where.error(path, f"keys must be strings; got {key!r}")
            if key in out:
                lines[path + (key,)] = k_node.start_mark.line + 1
                raise where.error(path + (key,), "duplicate key")
            out[key] = _to_python(v_node, loader, path + (key,), lines, where)
            lines[path + (key,)] = k_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, loader, path + (i,), lines, where) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_spec_data(path: str | os.PathLike) -> tuple[Any, dict]:
    """Read a YAML or JSON spec file into plain data plus {key path: line number}."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"edit spec not found: {path}")
    text = path.read_text()
    lines: dict = {}
    where = SpecSource(str(path), lines)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise EditSpecError(f"{path}: the edit spec is empty")
        data = _to_python(node, loader, (), lines, where)
    except yaml.YAMLError as e:
        if path.suffix.lower() == ".json":  # JSON that YAML cannot read (e.g. tab indentation)
            try:
                return json.loads(text), {}
            except json.JSONDecodeError as je:
                raise EditSpecError(f"{path}:{je.lineno}: JSON syntax error: {je.msg}") from je
        mark = getattr(e, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise EditSpecError(f"{loc}: syntax error: {problem}") from e
    finally:
        loader.dispose()
    return data, lines
