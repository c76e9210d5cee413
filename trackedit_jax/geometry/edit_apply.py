"""Applying a validated edit spec: camera ops in order (source camera -> target camera), then each object
entry (a selection on the SOURCE tracks and camera, then its ops; view-dependent ops use the TARGET camera).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable

import numpy as np

from trackedit_jax.geometry import edits as E
from trackedit_jax.geometry.dycheck import load_dycheck_cameras
from trackedit_jax.geometry.io import read_npz
from trackedit_jax.geometry.spec_schema import EditSpec, Op, Selection
from trackedit_jax.geometry.spec_source import EditSpecError, Path, SpecSource, format_path
from trackedit_jax.geometry.types import Camera, Tracks
from trackedit_jax.geometry.validation import check_extrinsics, check_intrinsics, validate_inputs


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
        d = read_npz(path)  # no pickle, no allocation beyond what the file holds
        if "extrinsics" not in d:
            raise ValueError(f"{path}: no 'extrinsics' key (has {sorted(d)})")
        for key in ("extrinsics", "intrinsics", "image_size"):
            if key in d and d[key].dtype.kind not in "biuf":
                raise ValueError(f"{path}: {key!r} must be numeric; got dtype {d[key].dtype.str}")
        extr = check_extrinsics(d["extrinsics"].astype(np.float64), f"{path}: extrinsics")
        if "intrinsics" in d:
            K = check_intrinsics(d["intrinsics"].astype(np.float64), f"{path}: intrinsics")
            hw = None
            if "image_size" in d:
                if d["image_size"].shape != (2,):
                    raise ValueError(f"{path}: 'image_size' must be (H, W); got shape {d['image_size'].shape}")
                hw = tuple(int(s) for s in d["image_size"])
            elif "video" in d and d["video"].ndim == 4:
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
        candidates = (
            [p]
            if p.is_absolute()
            else (([self.spec.base_dir / p] if self.spec.base_dir is not None else []) + [pathlib.Path.cwd() / p])
        )
        for c in candidates:
            if c.exists():
                return c
        raise self.spec.where.error(
            path, f"file not found: {name} (looked in {', '.join(str(c.parent) for c in candidates)})"
        )

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
                    s.path + ("group",),
                    f"group {g} does not exist; automatic grouping found {labels.max() + 1} group(s)",
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
        st.tracks = E.bend(
            tr, sel, p["degrees"], axis=p["axis"], direction=p["direction"], pivot=p["pivot"], **_ramp_kw(p)
        )
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
        tau = E.retime_map(
            tr.num_frames,
            speed=p["speed"],
            anchor=p["anchor"],
            freeze=p["freeze"],
            reverse=bool(p["reverse"]),
            remap=p["remap"],
        )
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


def _wrap(where: SpecSource, path: Path, fn: Callable):
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
        cam = _wrap(spec.where, op.path, lambda op=op, cam=cam: _apply_camera_op(op, cam, ctx))
        log.append(f"camera: {op.name}")
    ctx.target_camera = cam
    st = _State(tracks)
    for obj in spec.objects:
        sel = _wrap(spec.where, obj.select.path, lambda obj=obj: ctx.select(obj.select, st.N))
        n_sel = int(sel.sum())
        if n_sel == 0:
            raise spec.where.error(obj.select.path, f"selects no points (of {N}); check the box/mask/frame")
        log.append(f"{format_path(obj.path)}: {n_sel} of {N} points selected")
        for op in obj.ops:
            _wrap(spec.where, op.path, lambda op=op, sel=sel: _apply_object_op(op, st, sel, ctx))
    if not st.alive.any():
        raise spec.where.error(("objects",), "every point was removed; at least one track must remain")
    out = E.subset(st.tracks, st.alive) if not st.alive.all() else st.tracks
    return EditResult(out, cam, log)
