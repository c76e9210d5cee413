"""The edit spec: a YAML/JSON file listing camera operations and object edits; this module validates it.

    camera:                      # applied in order to the source camera -> target camera
      - {op: arc, degrees: 30, axis: [0, -1, 0], pivot: centroid}
    objects:                     # each entry: a selection of source points and ops applied in order
      - select: {box: [x0, y0, x1, y1], frame: 0}
        ops:
          - {op: translate, offset: [0.2, 0.0, 0.0]}

Validation errors are `EditSpecError` (a ValueError) whose message starts with `file:line: key.path:`
(the line comes from the YAML node marks; JSON files are read with the same loader). `spec_reference()`
describes every op and field; the table in docs/edits.md is the same content.

Order of application: camera ops first (giving the target camera), then object entries in order.
Selections are evaluated on the SOURCE tracks and camera (what the user sees in the source video);
view-dependent object ops (remove off screen, depth) use the TARGET camera. Relative file paths are
resolved against the spec file's folder first, then the working directory.

Where the parts live: `geometry.spec_source` (reading the file with line numbers, `EditSpecError`),
`geometry.spec_schema` (every op and field, the validated types), this module (validation:
`parse_edit_spec`, `load_edit_spec`, `spec_reference`) and `geometry.edit_apply` (`apply_edit_spec`,
re-exported here with `EditResult` and `load_camera_path`).
"""

from __future__ import annotations

import difflib
import os
import pathlib

import numpy as np

from trackedit_jax.geometry.edit_apply import EditResult, apply_edit_spec, load_camera_path
from trackedit_jax.geometry.spec_schema import (
    CAMERA_ALIASES,
    CAMERA_OPS,
    KEY_FIELDS,
    OBJECT_ALIASES,
    OBJECT_OPS,
    SELECT_CRITERIA,
    SELECT_FIELDS,
    EditSpec,
    Field,
    ObjectEdit,
    Op,
    OpDef,
    Selection,
)
from trackedit_jax.geometry.spec_source import EditSpecError, SpecSource, load_spec_data

__all__ = [
    "EditSpecError",
    "EditSpec",
    "parse_edit_spec",
    "load_edit_spec",
    "spec_reference",
    "apply_edit_spec",
    "EditResult",
    "load_camera_path",
    "CAMERA_OPS",
    "OBJECT_OPS",
    "CAMERA_ALIASES",
    "OBJECT_ALIASES",
    "KEY_FIELDS",
    "SELECT_FIELDS",
    "SELECT_CRITERIA",
    "Field",
    "OpDef",
    "Op",
    "Selection",
    "ObjectEdit",
]


def _type_name(v) -> str:
    if isinstance(v, list):
        return f"a list of length {len(v)}"
    if isinstance(v, dict):
        return f"a mapping with keys {list(v)!r:.120}"
    return "null" if v is None else f"{type(v).__name__} {v!r:.80}"


def _is_number(v) -> bool:
    """An int or float (not a bool) that a float holds: 10**400 is an int but no float."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        float(v)
    except OverflowError:
        return False
    return True


class _Validator:
    def __init__(self, where: SpecSource):
        self.w = where

    def numbers(self, v, path, n=None, what="numbers"):
        if not isinstance(v, list) or not all(_is_number(x) for x in v) or (n is not None and len(v) != n):
            exp = f"a list of {n} numbers" if n else "a list of numbers"
            raise self.w.error(path, f"expected {exp} ({what}), got {_type_name(v)}")
        if not all(np.isfinite(float(x)) for x in v):
            raise self.w.error(path, f"values must be finite; got {v!r:.120}")
        return [float(x) for x in v]

    def value(self, f: Field, v, path):
        k = f.kind
        if k in ("number", "positive", "fraction"):
            if not _is_number(v) or not np.isfinite(float(v)):
                raise self.w.error(path, f"expected a number, got {_type_name(v)}")
            if k == "positive" and not v > 0:
                raise self.w.error(path, f"must be > 0; got {v}")
            if k == "fraction" and not 0 < v <= 1:
                raise self.w.error(path, f"must be in (0, 1]; got {v}")
            return float(v)
        if k in ("int", "frame"):
            if not isinstance(v, int) or isinstance(v, bool):
                raise self.w.error(path, f"expected an integer, got {_type_name(v)}")
            if k == "frame" and v < 0:
                raise self.w.error(path, f"frame must be >= 0; got {v}")
            return int(v)
        if k == "bool":
            if not isinstance(v, bool):
                raise self.w.error(path, f"expected true or false, got {_type_name(v)}")
            return v
        if k == "choice":
            if v not in f.choices:
                hint = difflib.get_close_matches(str(v), f.choices, 1)
                raise self.w.error(
                    path,
                    f"expected one of {list(f.choices)}, got {_type_name(v)}"
                    + (f"; did you mean {hint[0]!r}?" if hint else ""),
                )
            return v
        if k == "file":
            if not isinstance(v, str) or not v:
                raise self.w.error(path, f"expected a file path (string), got {_type_name(v)}")
            return v
        if k == "vec2":
            return self.numbers(v, path, 2, "[a, b]")
        if k == "vec3":
            out = self.numbers(v, path, 3, "[x, y, z]")
            return out
        if k == "box":
            b = self.numbers(v, path, 4, "[x0, y0, x1, y1]")
            if b[0] > b[2] or b[1] > b[3]:
                raise self.w.error(path, f"box needs x0 <= x1 and y0 <= y1; got {b}")
            return b
        if k == "ints":
            if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise self.w.error(path, f"expected a non-empty list of integers, got {_type_name(v)}")
            return [int(x) for x in v]
        if k == "vec3_list":
            if not isinstance(v, list) or not v:
                raise self.w.error(path, f"expected a list of [x, y, z] points, got {_type_name(v)}")
            return [self.numbers(p, path + (i,), 3, "[x, y, z]") for i, p in enumerate(v)]
        if k == "pairs":
            if not isinstance(v, list) or not v:
                raise self.w.error(path, f"expected a list of [a, b] pairs, got {_type_name(v)}")
            return [self.numbers(p, path + (i,), 2, "[t_out, t_in]") for i, p in enumerate(v)]
        if k == "matrix4":
            if not isinstance(v, list) or len(v) != 4:
                raise self.w.error(path, f"expected a 4x4 matrix (4 rows of 4 numbers), got {_type_name(v)}")
            return [self.numbers(r, path + (i,), 4, "a matrix row") for i, r in enumerate(v)]
        if k == "factor":
            if _is_number(v):
                return self.value(Field("positive"), v, path)
            out = self.numbers(v, path, 3, "[sx, sy, sz]")
            if not all(x > 0 for x in out):
                raise self.w.error(path, f"factors must be > 0; got {out}")
            return out
        if k == "point":
            if v in ("centroid", "scene"):
                return v
            if isinstance(v, list):
                return self.numbers(v, path, 3, "[x, y, z]")
            raise self.w.error(path, f"expected 'centroid', 'scene' or [x, y, z], got {_type_name(v)}")
        if k == "pivot":
            if isinstance(v, dict):
                return self.selection(v, path)
            return self.value(Field("point"), v, path)
        if k == "select":
            return self.selection(v, path)
        if k == "ops":
            return self.ops(v, path, OBJECT_OPS, OBJECT_ALIASES, "object")
        if k == "keys":
            if not isinstance(v, list) or not v:
                raise self.w.error(path, f"expected a non-empty list of keyframes, got {_type_name(v)}")
            return [self.fields(key, path + (i,), KEY_FIELDS, "keyframe") for i, key in enumerate(v)]
        if k == "parts":
            if not isinstance(v, list) or not v:
                raise self.w.error(path, f"expected a non-empty list of {{select, ops}}, got {_type_name(v)}")
            return [self.object_edit(p, path + (i,)) for i, p in enumerate(v)]
        raise AssertionError(k)

    def fields(self, d, path, schema: dict, what: str, one_of=()) -> dict:
        if not isinstance(d, dict):
            raise self.w.error(path, f"expected a mapping for the {what}, got {_type_name(d)}")
        for key in d:
            if key not in schema and key != "op":
                hint = difflib.get_close_matches(str(key), list(schema), 1)
                raise self.w.error(
                    path + (key,),
                    f"unknown field for the {what}"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + f" (fields: {', '.join(schema)})",
                )
        out = {}
        for name, f in schema.items():
            if name in d and d[name] is not None:
                out[name] = self.value(f, d[name], path + (name,))
            elif f.required:
                raise self.w.error(path, f"the {what} needs field {name!r} ({f.kind})")
            else:
                out[name] = f.default
        for group in one_of:
            given = [g for g in group if d.get(g) not in (None, False)]  # `reverse: false` = not given
            if len(given) != 1:
                raise self.w.error(path, f"the {what} needs exactly one of {list(group)}; got {given or 'none'}")
        return out

    def op(self, d, path, table, aliases, kind) -> Op:
        if not isinstance(d, dict):
            raise self.w.error(path, f"expected a mapping like {{op: ...}}, got {_type_name(d)}")
        if "op" not in d:
            raise self.w.error(path, f"missing key 'op' (one of: {', '.join(table)})")
        name = d["op"]
        if not isinstance(name, str):
            raise self.w.error(path + ("op",), f"expected an op name, got {_type_name(name)}")
        name = aliases.get(name, name)
        if name not in table:
            hint = difflib.get_close_matches(name, list(table) + list(aliases), 1)
            raise self.w.error(
                path + ("op",),
                f"unknown {kind} op {d['op']!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" ({kind} ops: {', '.join(table)})",
            )
        od = table[name]
        return Op(name, self.fields(d, path, od.fields, f"{kind} op {name!r}", od.one_of), path)

    def ops(self, v, path, table, aliases, kind) -> list:
        if not isinstance(v, list):
            raise self.w.error(path, f"expected a list of {kind} ops, got {_type_name(v)}")
        return [self.op(d, path + (i,), table, aliases, kind) for i, d in enumerate(v)]

    def selection(self, v, path) -> Selection:
        if v == "all":
            v = {"all": True}
        p = self.fields(v, path, SELECT_FIELDS, "selection")
        if not any(p.get(c) not in (None, False) for c in SELECT_CRITERIA):
            raise self.w.error(path, f"the selection needs at least one of {list(SELECT_CRITERIA)}")
        return Selection(p, path)

    def object_edit(self, d, path) -> ObjectEdit:
        if not isinstance(d, dict):
            raise self.w.error(path, f"expected a mapping with 'select' and 'ops', got {_type_name(d)}")
        for key in d:
            if key not in ("select", "ops"):
                raise self.w.error(path + (key,), "unknown key (an object entry has 'select' and 'ops')")
        if "select" not in d:
            raise self.w.error(path, "missing key 'select'")
        if "ops" not in d:
            raise self.w.error(path, "missing key 'ops'")
        return ObjectEdit(
            self.selection(d["select"], path + ("select",)),
            self.ops(d["ops"], path + ("ops",), OBJECT_OPS, OBJECT_ALIASES, "object"),
            path,
        )


def parse_edit_spec(
    data, *, source: str = "<edit spec>", lines: dict | None = None, base_dir: str | os.PathLike | None = None
) -> EditSpec:
    """Validate spec data (dict from YAML/JSON) into an `EditSpec`; raises `EditSpecError`."""
    where = SpecSource(source, lines or {})
    v = _Validator(where)
    if not isinstance(data, dict):
        raise where.error((), f"the edit spec must be a mapping with 'camera' and/or 'objects', got {_type_name(data)}")
    for key in data:
        if key not in ("camera", "objects"):
            hint = difflib.get_close_matches(str(key), ["camera", "objects"], 1)
            raise where.error(
                (key,),
                "unknown top-level key"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + " (expected 'camera' and/or 'objects')",
            )
    if not data:
        raise where.error((), "the edit spec is empty (expected 'camera' and/or 'objects')")
    camera = v.ops(data.get("camera") or [], ("camera",), CAMERA_OPS, CAMERA_ALIASES, "camera")
    objs = data.get("objects") or []
    if not isinstance(objs, list):
        raise where.error(("objects",), f"expected a list of {{select, ops}} entries, got {_type_name(objs)}")
    objects = [v.object_edit(o, ("objects", i)) for i, o in enumerate(objs)]
    return EditSpec(camera, objects, where, pathlib.Path(base_dir) if base_dir is not None else None)


def load_edit_spec(path: str | os.PathLike) -> EditSpec:
    """Read and validate a YAML/JSON edit spec file (relative paths in it resolve from its folder)."""
    data, lines = load_spec_data(path)
    return parse_edit_spec(data, source=str(path), lines=lines, base_dir=pathlib.Path(path).parent)


def spec_reference() -> str:
    """Plain-text reference of every op and field (what `trackedit edit-tracks --list-ops` prints)."""

    def block(title, table, aliases):
        lines = [title]
        for name, od in table.items():
            al = [a for a, t in aliases.items() if t == name]
            lines.append(f"  {name}{' (alias ' + ', '.join(al) + ')' if al else ''}: {od.doc}")
            for fname, f in od.fields.items():
                req = "required" if f.required else f"default {f.default!r}"
                ch = f" one of {list(f.choices)}" if f.choices else ""
                lines.append(f"      {fname}: {f.kind}{ch}, {req}{'; ' + f.doc if f.doc else ''}")
            for g in od.one_of:
                lines.append(f"      (exactly one of {', '.join(g)})")
        return lines

    out = block("camera ops:", CAMERA_OPS, CAMERA_ALIASES)
    out += ["  keyframe keys:"] + [
        f"      {k}: {f.kind}{', required' if f.required else ''}" for k, f in KEY_FIELDS.items()
    ]
    out += block("object ops:", OBJECT_OPS, OBJECT_ALIASES)
    out += ["selection fields (criteria are ANDed; at least one of " + ", ".join(SELECT_CRITERIA) + "):"]
    out += [f"      {k}: {f.kind}{'; ' + f.doc if f.doc else ''}" for k, f in SELECT_FIELDS.items()]
    return "\n".join(out)
