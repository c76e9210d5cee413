"""The edit spec: a YAML/JSON file listing camera operations and object edits, validated and applied.

    camera:                      # applied in order to the source camera -> target camera
      - {op: arc, degrees: 30, axis: [0, -1, 0], pivot: centroid}
    objects:                     # each entry: a selection of source points and ops applied in order
      - select: {box: [x0, y0, x1, y1], frame: 0}
        ops:
          - {op: translate, offset: [0.2, 0.0, 0.0]}

Validation errors are `EditSpecError` (a ValueError) whose message starts with `file:line: key.path:`
(the line comes from the YAML node marks; JSON files are read with the same loader). `OPS_REFERENCE`
(and `spec_reference()`) describe every op and field; the table in docs/edits.md is the same content.

Order of application: camera ops first (giving the target camera), then object entries in order.
Selections are evaluated on the SOURCE tracks and camera (what the user sees in the source video);
view-dependent object ops (remove off screen, depth) use the TARGET camera. Relative file paths are
resolved against the spec file's folder first, then the working directory.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import pathlib
import re
from typing import Any, Callable, Optional

import numpy as np
import yaml

from trackedit_jax.geometry import edits as E
from trackedit_jax.geometry.dycheck import load_dycheck_cameras
from trackedit_jax.geometry.types import Camera, Tracks
from trackedit_jax.geometry.validation import check_extrinsics, check_intrinsics, validate_inputs

Path = tuple  # key path, e.g. ("objects", 0, "ops", 1, "degrees")


class EditSpecError(ValueError):
    """A problem with an edit spec; the message names the file, line and key."""


def format_path(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top>"


@dataclasses.dataclass
class _Where:
    source: str
    lines: dict

    def line_of(self, path: Path) -> Optional[int]:
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


# ----------------------------------------------------------------------------------------------
# loading with line numbers
# ----------------------------------------------------------------------------------------------
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


def _to_python(node, loader: _Loader, path: Path, lines: dict, where: _Where):
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
    where = _Where(str(path), lines)
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


# ----------------------------------------------------------------------------------------------
# schema
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Field:
    kind: str
    required: bool = False
    default: Any = None
    choices: tuple = ()
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class OpDef:
    doc: str
    fields: dict
    one_of: tuple = ()  # tuples of field names of which exactly one must be given


def _ramp(ease="linear"):
    return {
        "ease": Field("choice", default=ease, choices=E.EASES, doc="ramp shape"),
        "start": Field("frame", default=0, doc="ramp starts (weight 0) at this frame"),
        "end": Field("frame", default=None, doc="ramp reaches full amount here (default last frame)"),
    }


_PIVOT_DOC = "'centroid' (of the selection, per frame), 'scene' (scene centroid) or [x, y, z] world"

CAMERA_OPS: dict[str, OpDef] = {
    "pan": OpDef("turn the camera right (+) about its own centre", {"degrees": Field("number", True), **_ramp()}),
    "tilt": OpDef("turn the camera up (+)", {"degrees": Field("number", True), **_ramp()}),
    "roll": OpDef("turn the camera clockwise (+) about its viewing axis", {"degrees": Field("number", True), **_ramp()}),
    "arc": OpDef(
        "orbit the camera about a world axis through a pivot (keeps the distance to the pivot)",
        {
            "degrees": Field("number", True),
            "axis": Field("vec3", default=[0.0, -1.0, 0.0], doc="world axis (default up in OpenCV axes)"),
            "pivot": Field("pivot", default="centroid",
                           doc="'centroid' (scene), [x, y, z] world, or a selection mapping (its per-frame centroid)"),
            **_ramp(),
        },
    ),
    "dolly": OpDef("move the camera forward (+) along its viewing axis", {"distance": Field("number", True), **_ramp()}),
    "truck": OpDef("move the camera right (+)", {"distance": Field("number", True), **_ramp()}),
    "pedestal": OpDef("move the camera up (+)", {"distance": Field("number", True), **_ramp()}),
    "zoom": OpDef("multiply the focal length (intrinsics)", {"factor": Field("positive", True), **_ramp()}),
    "stabilize": OpDef(
        "smooth the camera path (local linear Gaussian regression)",
        {"sigma": Field("positive", default=3.0, doc="smoothing std in frames"),
         "rotation": Field("bool", default=True, doc="also smooth orientations")},
    ),
    "static": OpDef("freeze the camera at one frame", {"frame": Field("frame", default=0)}),
    "path": OpDef(
        "replace the camera path by one from a file: a DyCheck scene folder, an .npz with 'extrinsics' "
        "(w2c, e.g. a track file) or a .json list of 4x4 w2c matrices / {extrinsics: [...]}",
        {
            "file": Field("file", True),
            "fit": Field("choice", default="stretch", choices=("stretch", "trim"),
                         doc="resample the path onto the clip's frames, or take its first F"),
            "align": Field("choice", default="first", choices=("first", "none"),
                           doc="apply the path's motion from the source's first camera, or use it as is"),
            "scale": Field("positive", default=1.0, doc="multiplies the path's translations (align: first)"),
            "intrinsics": Field("choice", default="keep", choices=("keep", "path")),
            "camera_id": Field("int", default=0, doc="DyCheck camera id prefix"),
        },
    ),
    "keyframes": OpDef(
        "keyframed path: SLERP rotations and eased positions between keys",
        {
            "keys": Field("keys", True, doc="list of {frame, pan, tilt, roll, dolly, truck, pedestal, extrinsics}"),
            "mode": Field("choice", default="absolute", choices=("absolute", "offset"),
                          doc="interpolate key poses, or key offsets on top of the current path"),
            "ease": Field("choice", default="ease_in_out", choices=E.EASES, doc="ease of each segment"),
        },
    ),
}
CAMERA_ALIASES = {"stabilise": "stabilize", "orbit": "arc", "freeze": "static"}

KEY_FIELDS = {
    "frame": Field("frame", True),
    "pan": Field("number", default=0.0), "tilt": Field("number", default=0.0), "roll": Field("number", default=0.0),
    "dolly": Field("number", default=0.0), "truck": Field("number", default=0.0),
    "pedestal": Field("number", default=0.0),
    "extrinsics": Field("matrix4", default=None, doc="absolute 4x4 world-to-camera pose"),
}

OBJECT_OPS: dict[str, OpDef] = {
    "translate": OpDef(
        "move the selection by an offset (world units), or make its centroid follow a path",
        {"offset": Field("vec3"), "path": Field("vec3_list", doc="waypoints [[x, y, z], ...]"),
         "frames": Field("ints", doc="frame of each waypoint (default evenly spread)"), **_ramp()},
        one_of=(("offset", "path"),),
    ),
    "rotate": OpDef(
        "rotate the selection about an axis through its centroid (or a pivot)",
        {"degrees": Field("number", True), "axis": Field("vec3", default=[0.0, -1.0, 0.0]),
         "pivot": Field("point", default="centroid", doc=_PIVOT_DOC), **_ramp()},
    ),
    "scale": OpDef(
        "scale the selection about its centroid",
        {"factor": Field("factor", True, doc="number or [sx, sy, sz]"),
         "pivot": Field("point", default="centroid", doc=_PIVOT_DOC), **_ramp()},
    ),
    "stretch": OpDef(
        "scale along one axis (deformation)",
        {"factor": Field("positive", True), "axis": Field("vec3", True),
         "pivot": Field("point", default="centroid", doc=_PIVOT_DOC), **_ramp()},
    ),
    "bend": OpDef(
        "bend: rotation growing with the distance along `direction` from the pivot (deformation)",
        {"degrees": Field("number", True), "axis": Field("vec3", True), "direction": Field("vec3", True),
         "pivot": Field("point", default="centroid", doc=_PIVOT_DOC), **_ramp()},
    ),
    "depth": OpDef(
        "move in depth as seen by the target camera (occlusion order): factor scales the distance to "
        "the camera keeping pixels; distance moves along the viewing ray (+ away)",
        {"factor": Field("positive"), "distance": Field("number"), **_ramp("constant")},
        one_of=(("factor", "distance"),),
    ),
    "remove": OpDef(
        "remove the selection: move it off screen in every target frame, or drop its tracks",
        {"mode": Field("choice", default="offscreen", choices=("offscreen", "drop")),
         "side": Field("choice", default="auto", choices=("auto", "left", "right", "top", "bottom")),
         "margin": Field("number", default=None, doc="pixels beyond the border (default 1/4 image side)")},
    ),
    "duplicate": OpDef(
        "append a copy of the selection (ids map copies to their source points)",
        {"offset": Field("vec3", default=[0.0, 0.0, 0.0]),
         "ops": Field("ops", default=None, doc="object ops applied to the copy only"), **_ramp("constant")},
    ),
    "keep": OpDef(
        "partial tracks: keep only part of the selection (the rest is dropped)",
        {"select": Field("select", doc="keep these (a selection mapping)"),
         "fraction": Field("fraction", doc="keep a random fraction"), "seed": Field("int", default=0)},
        one_of=(("select", "fraction"),),
    ),
    "retime": OpDef(
        "play the selection's motion on a new clock",
        {"speed": Field("number"), "freeze": Field("frame", doc="hold from this frame on"),
         "reverse": Field("bool"), "remap": Field("pairs", doc="[[t_out, t_in], ...]"),
         "anchor": Field("frame", default=0, doc="frame kept fixed by speed")},
        one_of=(("speed", "freeze", "reverse", "remap"),),
    ),
    "transfer": OpDef(
        "give the selection the motion of other tracks (a selection of this clip or a track file)",
        {"from": Field("select"), "file": Field("file"), "ids": Field("ints", doc="driver point ids in the file"),
         "mode": Field("choice", default="auto", choices=("auto", "points", "rigid", "translation")),
         "frame": Field("frame", default=0, doc="reference frame"), "scale": Field("number", default=1.0)},
        one_of=(("from", "file"),),
    ),
    "parts": OpDef(
        "part-wise transforms: sub-selections (intersected with this one) with their own ops",
        {"parts": Field("parts", True, doc="list of {select, ops}")},
    ),
}
OBJECT_ALIASES = {"move": "translate", "delete": "remove", "copy": "duplicate"}

SELECT_FIELDS = {
    "box": Field("box", doc="[x0, y0, x1, y1] pixels at `frame`"),
    "mask": Field("file", doc="mask image; nonzero pixels select, at `frame`"),
    "frame": Field("frame", default=0),
    "depth": Field("vec2", doc="[near, far] camera depth at `frame`"),
    "ids": Field("ints", doc="point indices"),
    "group": Field("int", doc="rigid group index (0 = largest) from automatic grouping"),
    "group_at": Field("vec2", doc="the rigid group of the point nearest to pixel [x, y] at `frame`"),
    "threshold": Field("positive", default=None, doc="grouping inlier distance (world units)"),
    "all": Field("bool", doc="every point"),
    "visible_only": Field("bool", default=False, doc="only points visible at `frame`"),
    "invert": Field("bool", default=False, doc="select the complement"),
}
SELECT_CRITERIA = ("box", "mask", "depth", "ids", "group", "group_at", "all")


# ----------------------------------------------------------------------------------------------
# validated spec
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Op:
    name: str
    params: dict
    path: Path


@dataclasses.dataclass
class Selection:
    params: dict
    path: Path


@dataclasses.dataclass
class ObjectEdit:
    select: Selection
    ops: list
    path: Path


@dataclasses.dataclass
class EditSpec:
    camera: list
    objects: list
    where: _Where
    base_dir: Optional[pathlib.Path] = None


def _type_name(v) -> str:
    if isinstance(v, list):
        return f"a list of length {len(v)}"
    if isinstance(v, dict):
        return f"a mapping with keys {list(v)}"
    return "null" if v is None else f"{type(v).__name__} {v!r}"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Validator:
    def __init__(self, where: _Where):
        self.w = where

    def numbers(self, v, path, n=None, what="numbers"):
        if not isinstance(v, list) or not all(_is_number(x) for x in v) or (n is not None and len(v) != n):
            exp = f"a list of {n} numbers" if n else "a list of numbers"
            raise self.w.error(path, f"expected {exp} ({what}), got {_type_name(v)}")
        if not all(np.isfinite(x) for x in v):
            raise self.w.error(path, f"values must be finite; got {v}")
        return [float(x) for x in v]

    def value(self, f: Field, v, path):
        k = f.kind
        if k in ("number", "positive", "fraction"):
            if not _is_number(v) or not np.isfinite(v):
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
                raise self.w.error(path, f"expected one of {list(f.choices)}, got {_type_name(v)}"
                                   + (f"; did you mean {hint[0]!r}?" if hint else ""))
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
                    f"unknown field for the {what}" + (f"; did you mean {hint[0]!r}?" if hint else "")
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
                raise self.w.error(
                    path, f"the {what} needs exactly one of {list(group)}; got {given or 'none'}"
                )
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
                f"unknown {kind} op {d['op']!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
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
        return ObjectEdit(self.selection(d["select"], path + ("select",)),
                          self.ops(d["ops"], path + ("ops",), OBJECT_OPS, OBJECT_ALIASES, "object"), path)


def parse_edit_spec(data, *, source: str = "<edit spec>", lines: Optional[dict] = None,
                    base_dir: Optional[str | os.PathLike] = None) -> EditSpec:
    """Validate spec data (dict from YAML/JSON) into an `EditSpec`; raises `EditSpecError`."""
    where = _Where(source, lines or {})
    v = _Validator(where)
    if not isinstance(data, dict):
        raise where.error((), f"the edit spec must be a mapping with 'camera' and/or 'objects', got {_type_name(data)}")
    for key in data:
        if key not in ("camera", "objects"):
            hint = difflib.get_close_matches(str(key), ["camera", "objects"], 1)
            raise where.error((key,), "unknown top-level key" + (f"; did you mean {hint[0]!r}?" if hint else "")
                              + " (expected 'camera' and/or 'objects')")
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


# ----------------------------------------------------------------------------------------------
# application
# ----------------------------------------------------------------------------------------------
def load_camera_path(path: str | os.PathLike, *, camera_id: int = 0) -> Camera | np.ndarray:
    """A camera path from a DyCheck scene folder, an .npz (key 'extrinsics', w2c; with 'intrinsics' and
    'image_size'/'video' it is a `Camera`), or a .json (a list of 4x4 w2c matrices, or a mapping with
    'extrinsics' and optional 'intrinsics' and 'image_size' [H, W]). Returns a `Camera` or (P, 4, 4)."""
    path = pathlib.Path(path)
    if path.is_dir():
        return load_dycheck_cameras(path, camera_id=camera_id)
    if not path.is_file():
        raise FileNotFoundError(f"camera path file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as d:
            if "extrinsics" not in d.files:
                raise ValueError(f"{path}: no 'extrinsics' key (has {sorted(d.files)})")
            extr = check_extrinsics(d["extrinsics"].astype(np.float64), f"{path}: extrinsics")
            if "intrinsics" in d.files:
                K = check_intrinsics(d["intrinsics"].astype(np.float64), f"{path}: intrinsics")
                hw = None
                if "image_size" in d.files:
                    hw = tuple(int(s) for s in d["image_size"])
                elif "video" in d.files:
                    shp = d["video"].shape
                    hw = shp[1:3] if shp[-1] == 3 else shp[2:4]
                if hw is not None and K.shape[0] == extr.shape[0]:
                    return Camera(K, extr, hw)
            return extr
    if suffix == ".json":
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: JSON syntax error: {e.msg}") from e
        if isinstance(d, dict):
            if "extrinsics" not in d:
                raise ValueError(f"{path}: no 'extrinsics' key (has {sorted(d)})")
            extr = check_extrinsics(np.asarray(d["extrinsics"], np.float64), f"{path}: extrinsics")
            if "intrinsics" in d and "image_size" in d:
                K = check_intrinsics(np.asarray(d["intrinsics"], np.float64), f"{path}: intrinsics")
                return Camera(K, extr, tuple(d["image_size"]))
            return extr
        return check_extrinsics(np.asarray(d, np.float64), f"{path}: extrinsics")
    raise ValueError(f"{path}: camera paths are DyCheck folders, .npz or .json files")


class _Context:
    """What the ops need besides their parameters: source data, target camera, file resolution, caches."""

    def __init__(self, spec: EditSpec, tracks: Tracks, camera: Camera):
        self.spec = spec
        self.source = tracks
        self.source_camera = camera
        self.target_camera = camera
        self.N0 = tracks.num_points
        self._groups: dict = {}

    def file(self, name: str, path: Path) -> pathlib.Path:
        p = pathlib.Path(name).expanduser()
        candidates = [p] if p.is_absolute() else (
            ([self.spec.base_dir / p] if self.spec.base_dir is not None else []) + [pathlib.Path.cwd() / p]
        )
        for c in candidates:
            if c.exists():
                return c
        raise self.spec.where.error(path, f"file not found: {name} (looked in {', '.join(str(c.parent) for c in candidates)})")

    def groups(self, threshold) -> np.ndarray:
        if threshold not in self._groups:
            self._groups[threshold] = E.rigid_groups(self.source, threshold=threshold)
        return self._groups[threshold]

    def select(self, s: Selection, num_points: int) -> np.ndarray:
        """Evaluate a selection on the source tracks; returns an (num_points,) mask (False past N0)."""
        p, tr, cam = s.params, self.source, self.source_camera
        F = tr.num_frames
        frame = p["frame"]
        if frame >= F:
            raise self.spec.where.error(s.path + ("frame",), f"frame {frame} is past the clip's last frame {F - 1}")
        sel = np.ones(self.N0, bool)
        if p.get("box") is not None:
            sel &= E.select_box(tr, cam, p["box"], frame)
        if p.get("mask") is not None:
            from PIL import Image

            mpath = self.file(p["mask"], s.path + ("mask",))
            try:
                img = np.asarray(Image.open(mpath))
            except Exception as e:
                raise self.spec.where.error(s.path + ("mask",), f"cannot read mask image {mpath}: {e}") from e
            sel &= E.select_mask(tr, cam, img, frame)
        if p.get("depth") is not None:
            sel &= E.select_depth(tr, cam, p["depth"][0], p["depth"][1], frame)
        if p.get("ids") is not None:
            try:
                sel &= E.select_ids(self.N0, p["ids"])
            except ValueError as e:
                raise self.spec.where.error(s.path + ("ids",), str(e)) from e
        if p.get("group") is not None or p.get("group_at") is not None:
            labels = self.groups(p["threshold"])
            g = p["group"] if p.get("group") is not None else E.group_at_pixel(tr, cam, labels, p["group_at"], frame)
            if g > labels.max():
                raise self.spec.where.error(
                    s.path + ("group",), f"group {g} does not exist; automatic grouping found {labels.max() + 1} group(s)"
                )
            sel &= labels == g
        if p["visible_only"]:
            sel &= np.asarray(tr.visibility, bool)[frame]
        if p["invert"]:
            sel = ~sel
        out = np.zeros(num_points, bool)
        out[: self.N0] = sel
        return out


def _ramp_kw(p: dict) -> dict:
    return {"ease": p["ease"], "start": p["start"], "end": p["end"]}


def _apply_camera_op(op: Op, cam: Camera, ctx: _Context) -> Camera:
    p, n = op.params, op.name
    if n in ("pan", "tilt", "roll"):
        return E.rotate_camera(cam, n, p["degrees"], **_ramp_kw(p))
    if n in ("dolly", "truck", "pedestal"):
        return E.move_camera(cam, n, p["distance"], **_ramp_kw(p))
    if n == "zoom":
        return E.zoom(cam, p["factor"], **_ramp_kw(p))
    if n == "arc":
        piv = p["pivot"]
        if isinstance(piv, Selection):
            sel = ctx.select(piv, ctx.N0)
            if not sel.any():
                raise ctx.spec.where.error(piv.path, "the pivot selection selects no points")
            piv = E.selection_centroid(ctx.source, sel)
        elif isinstance(piv, str):
            piv = E.scene_centroid(ctx.source)
        return E.arc(cam, p["degrees"], axis=p["axis"], pivot=piv, **_ramp_kw(p))
    if n == "stabilize":
        return E.stabilize(cam, p["sigma"], rotation=p["rotation"])
    if n == "static":
        return E.make_static(cam, p["frame"])
    if n == "path":
        f = ctx.file(p["file"], op.path + ("file",))
        path = load_camera_path(f, camera_id=p["camera_id"])
        return E.replace_path(cam, path, fit=p["fit"], align=p["align"], scale=p["scale"], intrinsics=p["intrinsics"])
    if n == "keyframes":
        return E.keyframes(cam, p["keys"], mode=p["mode"], ease=p["ease"])
    raise AssertionError(n)


class _State:
    def __init__(self, tracks: Tracks):
        self.tracks = tracks
        self.alive = np.ones(tracks.num_points, bool)

    @property
    def N(self) -> int:
        return self.tracks.num_points

    def pad(self, sel: np.ndarray) -> np.ndarray:
        out = np.zeros(self.N, bool)
        out[: len(sel)] = sel
        return out & self.alive


def _apply_object_op(op: Op, st: _State, sel: np.ndarray, ctx: _Context) -> None:
    p, n = op.params, op.name
    sel = st.pad(sel)
    if not sel.any() and n not in ("parts",):
        return
    tr = st.tracks
    if n == "translate":
        if p["offset"] is not None:
            st.tracks = E.translate(tr, sel, p["offset"], **_ramp_kw(p))
        else:
            st.tracks = E.follow_path(tr, sel, p["path"], p["frames"], ease=p["ease"])
    elif n == "rotate":
        st.tracks = E.rotate(tr, sel, p["degrees"], axis=p["axis"], pivot=p["pivot"], **_ramp_kw(p))
    elif n == "scale":
        st.tracks = E.scale(tr, sel, p["factor"], pivot=p["pivot"], **_ramp_kw(p))
    elif n == "stretch":
        st.tracks = E.stretch(tr, sel, p["factor"], axis=p["axis"], pivot=p["pivot"], **_ramp_kw(p))
    elif n == "bend":
        st.tracks = E.bend(tr, sel, p["degrees"], axis=p["axis"], direction=p["direction"], pivot=p["pivot"],
                           **_ramp_kw(p))
    elif n == "depth":
        st.tracks = E.move_depth(tr, sel, ctx.target_camera, factor=p["factor"], distance=p["distance"], **_ramp_kw(p))
    elif n == "remove":
        if p["mode"] == "drop":
            st.alive &= ~sel
        else:
            st.tracks = E.move_off_screen(tr, sel, ctx.target_camera, side=p["side"], margin=p["margin"])
    elif n == "duplicate":
        N = st.N
        st.tracks = E.duplicate(tr, sel, p["offset"], **_ramp_kw(p))
        st.alive = np.concatenate([st.alive, np.ones(st.N - N, bool)])
        copy = np.zeros(st.N, bool)
        copy[N:] = True
        for sub in p["ops"] or []:
            _apply_object_op(sub, st, copy, ctx)
    elif n == "keep":
        if p["select"] is not None:
            keep = st.pad(ctx.select(p["select"], st.N))
        else:
            idx = np.flatnonzero(sel)
            rng = np.random.default_rng(p["seed"])
            chosen = rng.choice(idx, size=max(1, int(round(p["fraction"] * len(idx)))), replace=False)
            keep = np.zeros(st.N, bool)
            keep[chosen] = True
        st.alive &= ~(sel & ~keep)
    elif n == "retime":
        tau = E.retime_map(tr.num_frames, speed=p["speed"], anchor=p["anchor"], freeze=p["freeze"],
                           reverse=bool(p["reverse"]), remap=p["remap"])
        st.tracks = E.retime(tr, sel, tau)
    elif n == "transfer":
        if p["from"] is not None:
            drv = st.pad(ctx.select(p["from"], st.N))
            if not drv.any():
                raise ctx.spec.where.error(op.path + ("from",), "the driver selection selects no points")
            D = np.asarray(tr.xyz)[:, drv]
        else:
            from trackedit_jax.geometry.io import load_tracks

            other, _ = load_tracks(ctx.file(p["file"], op.path + ("file",)))
            D = np.asarray(other.xyz, np.float64)
            if p["ids"] is not None:
                D = D[:, E.select_ids(D.shape[1], p["ids"])]
            if D.shape[0] != tr.num_frames:  # retime the driver onto this clip's frames
                t = np.linspace(0, D.shape[0] - 1, tr.num_frames)
                i0 = np.floor(t).astype(int)
                i1 = np.minimum(i0 + 1, D.shape[0] - 1)
                a = (t - i0)[:, None, None]
                D = D[i0] * (1 - a) + D[i1] * a
        st.tracks = E.transfer_motion(tr, sel, D, mode=p["mode"], frame=p["frame"], scale=p["scale"])
    elif n == "parts":
        for part in p["parts"]:
            sub = st.pad(ctx.select(part.select, st.N)) & sel
            if not sub.any():
                raise ctx.spec.where.error(part.path + ("select",), "this part selects none of the object's points")
            for sop in part.ops:
                _apply_object_op(sop, st, sub, ctx)
    else:
        raise AssertionError(n)


@dataclasses.dataclass
class EditResult:
    """Target tracks (ids = source point of every target point) and target camera."""

    tracks: Tracks
    camera: Camera
    log: list


def _wrap(where: _Where, path: Path, fn: Callable):
    try:
        return fn()
    except EditSpecError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise where.error(path, str(e)) from e


def apply_edit_spec(spec: EditSpec, tracks: Tracks, camera: Camera) -> EditResult:
    """Apply a validated spec to source tracks and camera; returns the targets (see module docstring).

    The target keeps the source point order; dropped points are removed, duplicated ones appended, and
    `tracks.ids` maps every target point to its source point index. Raises `EditSpecError` naming the
    op that failed (file missing, empty selection, frame out of range, ...).
    """
    validate_inputs(tracks, camera)
    N = tracks.num_points
    ids = np.arange(N, dtype=np.int32) if tracks.ids is None else np.asarray(tracks.ids, np.int32)
    tracks = Tracks(np.asarray(tracks.xyz), np.asarray(tracks.visibility, bool), ids)
    ctx = _Context(spec, tracks, camera)
    log = []
    cam = camera
    for op in spec.camera:
        cam = _wrap(spec.where, op.path, lambda: _apply_camera_op(op, cam, ctx))
        log.append(f"camera: {op.name}")
    ctx.target_camera = cam
    st = _State(tracks)
    for obj in spec.objects:
        sel = _wrap(spec.where, obj.select.path, lambda: ctx.select(obj.select, st.N))
        n_sel = int(sel.sum())
        if n_sel == 0:
            raise spec.where.error(obj.select.path, f"selects no points (of {N}); check the box/mask/frame")
        log.append(f"{format_path(obj.path)}: {n_sel} of {N} points selected")
        for op in obj.ops:
            _wrap(spec.where, op.path, lambda: _apply_object_op(op, st, sel, ctx))
    if not st.alive.any():
        raise spec.where.error(("objects",), "every point was removed; at least one track must remain")
    out = E.subset(st.tracks, st.alive) if not st.alive.all() else st.tracks
    return EditResult(out, cam, log)


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
    out += ["  keyframe keys:"] + [f"      {k}: {f.kind}{', required' if f.required else ''}" for k, f in KEY_FIELDS.items()]
    out += block("object ops:", OBJECT_OPS, OBJECT_ALIASES)
    out += ["selection fields (criteria are ANDed; at least one of " + ", ".join(SELECT_CRITERIA) + "):"]
    out += [f"      {k}: {f.kind}{'; ' + f.doc if f.doc else ''}" for k, f in SELECT_FIELDS.items()]
    return "\n".join(out)
