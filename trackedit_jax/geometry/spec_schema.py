"""The edit spec schema: every camera op, object op, keyframe key and selection field with its kind,
default and doc (what the validator checks and `spec_reference` prints), and the validated spec types.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from trackedit_jax.geometry.easing import EASES
from trackedit_jax.geometry.spec_source import Path, SpecSource


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
        "ease": Field("choice", default=ease, choices=EASES, doc="ramp shape"),
        "start": Field("frame", default=0, doc="ramp starts (weight 0) at this frame"),
        "end": Field("frame", default=None, doc="ramp reaches full amount here (default last frame)"),
    }


_PIVOT_DOC = "'centroid' (of the selection, per frame), 'scene' (scene centroid) or [x, y, z] world"

CAMERA_OPS: dict[str, OpDef] = {
    "pan": OpDef("turn the camera right (+) about its own centre", {"degrees": Field("number", True), **_ramp()}),
    "tilt": OpDef("turn the camera up (+)", {"degrees": Field("number", True), **_ramp()}),
    "roll": OpDef(
        "turn the camera clockwise (+) about its viewing axis", {"degrees": Field("number", True), **_ramp()}
    ),
    "arc": OpDef(
        "orbit the camera about a world axis through a pivot (keeps the distance to the pivot)",
        {
            "degrees": Field("number", True),
            "axis": Field("vec3", default=[0.0, -1.0, 0.0], doc="world axis (default up in OpenCV axes)"),
            "pivot": Field(
                "pivot",
                default="centroid",
                doc="'centroid' (scene), [x, y, z] world, or a selection mapping (its per-frame centroid)",
            ),
            **_ramp(),
        },
    ),
    "dolly": OpDef(
        "move the camera forward (+) along its viewing axis", {"distance": Field("number", True), **_ramp()}
    ),
    "truck": OpDef("move the camera right (+)", {"distance": Field("number", True), **_ramp()}),
    "pedestal": OpDef("move the camera up (+)", {"distance": Field("number", True), **_ramp()}),
    "zoom": OpDef("multiply the focal length (intrinsics)", {"factor": Field("positive", True), **_ramp()}),
    "stabilize": OpDef(
        "smooth the camera path (local linear Gaussian regression)",
        {
            "sigma": Field("positive", default=3.0, doc="smoothing std in frames"),
            "rotation": Field("bool", default=True, doc="also smooth orientations"),
        },
    ),
    "static": OpDef("freeze the camera at one frame", {"frame": Field("frame", default=0)}),
    "path": OpDef(
        "replace the camera path by one from a file: a DyCheck scene folder, an .npz with 'extrinsics' "
        "(w2c, e.g. a track file) or a .json list of 4x4 w2c matrices / {extrinsics: [...]}",
        {
            "file": Field("file", True),
            "fit": Field(
                "choice",
                default="stretch",
                choices=("stretch", "trim"),
                doc="resample the path onto the clip's frames, or take its first F",
            ),
            "align": Field(
                "choice",
                default="first",
                choices=("first", "none"),
                doc="apply the path's motion from the source's first camera, or use it as is",
            ),
            "scale": Field("positive", default=1.0, doc="multiplies the path's translations (align: first)"),
            "intrinsics": Field("choice", default="keep", choices=("keep", "path")),
            "camera_id": Field("int", default=0, doc="DyCheck camera id prefix"),
        },
    ),
    "keyframes": OpDef(
        "keyframed path: SLERP rotations and eased positions between keys",
        {
            "keys": Field("keys", True, doc="list of {frame, pan, tilt, roll, dolly, truck, pedestal, extrinsics}"),
            "mode": Field(
                "choice",
                default="absolute",
                choices=("absolute", "offset"),
                doc="interpolate key poses, or key offsets on top of the current path",
            ),
            "ease": Field("choice", default="ease_in_out", choices=EASES, doc="ease of each segment"),
        },
    ),
}
CAMERA_ALIASES = {"stabilise": "stabilize", "orbit": "arc", "freeze": "static"}

KEY_FIELDS = {
    "frame": Field("frame", True),
    "pan": Field("number", default=0.0),
    "tilt": Field("number", default=0.0),
    "roll": Field("number", default=0.0),
    "dolly": Field("number", default=0.0),
    "truck": Field("number", default=0.0),
    "pedestal": Field("number", default=0.0),
    "extrinsics": Field("matrix4", default=None, doc="absolute 4x4 world-to-camera pose"),
}

OBJECT_OPS: dict[str, OpDef] = {
    "translate": OpDef(
        "move the selection by an offset (world units), or make its centroid follow a path",
        {
            "offset": Field("vec3"),
            "path": Field("vec3_list", doc="waypoints [[x, y, z], ...]"),
            "frames": Field("ints", doc="frame of each waypoint (default evenly spread)"),
            **_ramp(),
        },
        one_of=(("offset", "path"),),
    ),
    "rotate": OpDef(
        "rotate the selection about an axis through its centroid (or a pivot)",
        {
            "degrees": Field("number", True),
            "axis": Field("vec3", default=[0.0, -1.0, 0.0]),
            "pivot": Field("point", default="centroid", doc=_PIVOT_DOC),
            **_ramp(),
        },
    ),
    "scale": OpDef(
        "scale the selection about its centroid",
        {
            "factor": Field("factor", True, doc="number or [sx, sy, sz]"),
            "pivot": Field("point", default="centroid", doc=_PIVOT_DOC),
            **_ramp(),
        },
    ),
    "stretch": OpDef(
        "scale along one axis (deformation)",
        {
            "factor": Field("positive", True),
            "axis": Field("vec3", True),
            "pivot": Field("point", default="centroid", doc=_PIVOT_DOC),
            **_ramp(),
        },
    ),
    "bend": OpDef(
        "bend: rotation growing with the distance along `direction` from the pivot (deformation)",
        {
            "degrees": Field("number", True),
            "axis": Field("vec3", True),
            "direction": Field("vec3", True),
            "pivot": Field("point", default="centroid", doc=_PIVOT_DOC),
            **_ramp(),
        },
    ),
    "depth": OpDef(
        "move in depth as seen by the target camera (occlusion order): factor scales the distance to "
        "the camera keeping pixels; distance moves along the viewing ray (+ away)",
        {"factor": Field("positive"), "distance": Field("number"), **_ramp("constant")},
        one_of=(("factor", "distance"),),
    ),
    "remove": OpDef(
        "remove the selection: move it off screen in every target frame, or drop its tracks",
        {
            "mode": Field("choice", default="offscreen", choices=("offscreen", "drop")),
            "side": Field("choice", default="auto", choices=("auto", "left", "right", "top", "bottom")),
            "margin": Field("number", default=None, doc="pixels beyond the border (default 1/4 image side)"),
        },
    ),
    "duplicate": OpDef(
        "append a copy of the selection (ids map copies to their source points)",
        {
            "offset": Field("vec3", default=[0.0, 0.0, 0.0]),
            "ops": Field("ops", default=None, doc="object ops applied to the copy only"),
            **_ramp("constant"),
        },
    ),
    "keep": OpDef(
        "partial tracks: keep only part of the selection (the rest is dropped)",
        {
            "select": Field("select", doc="keep these (a selection mapping)"),
            "fraction": Field("fraction", doc="keep a random fraction"),
            "seed": Field("int", default=0),
        },
        one_of=(("select", "fraction"),),
    ),
    "retime": OpDef(
        "play the selection's motion on a new clock",
        {
            "speed": Field("number"),
            "freeze": Field("frame", doc="hold from this frame on"),
            "reverse": Field("bool"),
            "remap": Field("pairs", doc="[[t_out, t_in], ...]"),
            "anchor": Field("frame", default=0, doc="frame kept fixed by speed"),
        },
        one_of=(("speed", "freeze", "reverse", "remap"),),
    ),
    "transfer": OpDef(
        "give the selection the motion of other tracks (a selection of this clip or a track file)",
        {
            "from": Field("select"),
            "file": Field("file"),
            "ids": Field("ints", doc="driver point ids in the file"),
            "mode": Field("choice", default="auto", choices=("auto", "points", "rigid", "translation")),
            "frame": Field("frame", default=0, doc="reference frame"),
            "scale": Field("number", default=1.0),
        },
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
    where: SpecSource
    base_dir: pathlib.Path | None = None
