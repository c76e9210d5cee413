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
        if isinstance(p, int):
            out += f"[{p}]"
        elif not p.isprintable() or not p or p != p.strip():  # a key with a line break, tab, ... : quoted
            out += f"[{p!r:.60}]"
        else:
            out += f".{p}" if out else p
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
        msg = msg.replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever text the spec brought in
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


# An edit spec is a short hand-written file; bounds that no real spec reaches keep hostile files (a YAML
# "billion laughs" of nested aliases, a 100 MB file, 10,000 nested brackets) from hanging the parser.
MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_VALUES = 100_000
MAX_SPEC_DEPTH = 64


class _Walk:
    """Counts the values a spec expands to (aliases repeat a subtree) and the open nodes (cycles)."""

    def __init__(self):
        self.values = 0
        self.open: set[int] = set()


def _to_python(node, loader: _Loader, path: Path, lines: dict, where: SpecSource, walk: _Walk):
    lines[path] = node.start_mark.line + 1
    walk.values += 1
    if walk.values > MAX_SPEC_VALUES:
        raise where.error(path, f"the spec expands to more than {MAX_SPEC_VALUES} values (anchors and aliases)")
    if len(path) > MAX_SPEC_DEPTH:
        raise where.error(path, f"the spec nests deeper than {MAX_SPEC_DEPTH} levels")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if id(node) in walk.open:
            raise where.error(path, "an alias refers to a node that contains it (a cycle)")
        walk.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [_to_python(v, loader, path + (i,), lines, where, walk) for i, v in enumerate(node.value)]
            out = {}
            for k_node, v_node in node.value:
                if not isinstance(k_node, yaml.ScalarNode):
                    lines[path] = k_node.start_mark.line + 1
                    raise where.error(path, "keys must be strings; got a list or mapping")
                key = _scalar(k_node, loader, path, where)
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    lines[path] = k_node.start_mark.line + 1
                    raise where.error(path, f"keys must be strings; got {key!r:.80}")
                if key in out:
                    lines[path + (key,)] = k_node.start_mark.line + 1
                    raise where.error(path + (key,), "duplicate key")
                out[key] = _to_python(v_node, loader, path + (key,), lines, where, walk)
                lines[path + (key,)] = k_node.start_mark.line + 1
            return out
        finally:
            walk.open.discard(id(node))
    return _scalar(node, loader, path, where)


def _scalar(node, loader: _Loader, path: Path, where: SpecSource):
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except (ValueError, TypeError, OverflowError) as e:  # e.g. an int of 5000 digits, a date 2024-13-45
        raise where.error(path, f"{' '.join(node.value.split())[:80]!r} is not a valid value ({e})") from e


def load_spec_data(path: str | os.PathLike) -> tuple[Any, dict]:
    """Read a YAML or JSON spec file into plain data plus {key path: line number}.

    Raises FileNotFoundError, or `EditSpecError` (one line, `file:line: ...`) for a file that is not
    UTF-8 text, exceeds MAX_SPEC_BYTES, MAX_SPEC_VALUES or MAX_SPEC_DEPTH, or is not valid YAML/JSON.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"edit spec not found: {path}")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise EditSpecError(f"{path}: the edit spec is {size} bytes; specs over {MAX_SPEC_BYTES} bytes are refused")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EditSpecError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from e
    return spec_data_from_text(text, str(path))


def spec_data_from_text(text: str, source: str) -> tuple[Any, dict]:
    """The text of a YAML or JSON spec into plain data plus {key path: line number}; `source` names it in
    errors (`source:line: ...`) and a `.json` ending allows the JSON fallback. Bounds and errors as
    `load_spec_data`."""
    if len(text) > MAX_SPEC_BYTES:
        raise EditSpecError(f"{source}: the edit spec has {len(text)} characters; over {MAX_SPEC_BYTES} are refused")
    lines: dict = {}
    where = SpecSource(source, lines)
    loader = None
    try:
        loader = _Loader(text)  # its reader refuses control characters here
        node = loader.get_single_node()
        if node is None:
            raise EditSpecError(f"{source}: the edit spec is empty")
        data = _to_python(node, loader, (), lines, where, _Walk())
    except RecursionError as e:
        raise EditSpecError(f"{source}: the spec nests too deeply to parse") from e
    except yaml.YAMLError as e:
        if source.lower().endswith(".json"):  # JSON that YAML cannot read (e.g. tab indentation)
            try:
                return json.loads(text), {}
            except json.JSONDecodeError as je:
                raise EditSpecError(f"{source}:{je.lineno}: JSON syntax error: {je.msg}") from je
            except (ValueError, RecursionError) as je:  # an int of 5000 digits, 10,000 nested brackets
                raise EditSpecError(f"{source}: JSON not accepted ({' '.join(str(je).split())[:120]})") from je
        mark = getattr(e, "problem_mark", None)
        loc = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e)
        raise EditSpecError(f"{loc}: syntax error: {' '.join(str(problem).split())}") from e
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines
