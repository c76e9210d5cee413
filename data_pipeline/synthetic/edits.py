"""Edit families: from a source scene, the target scene of a pair (same objects and textures).

Only `edit_camera` changes the camera; object edits keep it, and the generator retries an edit whose
objects come too close to the camera (so labels stay honest).

Each function takes (scene, rng) and returns (target scene, metadata dict). `apply_edit` dispatches
by family name; "combination" applies two different base families in sequence.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.synthetic.scene import (
    CAMERA_KINDS,
    Scene,
    TimeWarp,
    _yaw,
    ensure_camera_clear,
    frame_times,
    random_camera_path,
)

BASE_FAMILIES = ("camera", "object_path", "rotation", "deformation", "removal", "duplication", "retiming")
ALL_FAMILIES = BASE_FAMILIES + ("combination",)


def _pick_object(scene: Scene, rng, *, articulated: bool | None = None, exclude=()) -> int:
    cands = [
        i
        for i, o in enumerate(scene.objects)
        if o.duplicate_of < 0
        and not o.removed
        and i not in exclude
        and (articulated is None or o.articulated == articulated)
    ]
    if not cands:
        cands = [i for i, o in enumerate(scene.objects) if o.duplicate_of < 0 and not o.removed]
    return int(rng.choice(cands))


def _set_object(scene: Scene, i: int, obj) -> Scene:
    objs = list(scene.objects)
    objs[i] = obj
    return scene.replace(objects=tuple(objs))


def edit_camera(scene: Scene, rng, **_) -> tuple[Scene, dict]:
    src = scene.camera
    kind = str(rng.choice(CAMERA_KINDS))
    fov = src.fov_x * (rng.uniform(0.8, 1.2) if rng.uniform() < 0.3 else 1.0)
    cam = random_camera_path(rng, kind=kind, fov_x=fov)
    # stay on the same scene but from a clearly different viewpoint
    cam = cam.replace(
        target=src.target + rng.normal(scale=0.2, size=3) * np.array([1, 1, 0.3]),
        azimuth=src.azimuth + rng.choice([-1, 1]) * rng.uniform(np.radians(20), np.radians(90)),
    )
    target = ensure_camera_clear(scene.replace(camera=cam), rng)
    return target, {
        "source_camera": src.kind,
        "target_camera": target.camera.kind,
        "azimuth_change_deg": float(np.degrees(target.camera.azimuth - src.azimuth)),
        "fov_ratio": float(target.camera.fov_x / src.fov_x),
    }


def edit_object_path(scene: Scene, rng, exclude=(), **_) -> tuple[Scene, dict]:
    i = _pick_object(scene, rng, exclude=exclude)
    obj = scene.objects[i]
    speed = rng.uniform(0.6, 1.8)
    heading = np.arctan2(obj.velocity[1], obj.velocity[0]) + rng.choice([-1, 1]) * rng.uniform(np.radians(60), np.pi)
    vel = speed * np.array([np.cos(heading), np.sin(heading), 0.0])
    center = obj.center.copy()
    center[:2] += rng.uniform(-0.5, 0.5, 2)
    new = obj.replace(
        velocity=vel,
        center=center,
        wobble_amp=rng.uniform(0, 0.4) * np.array([*rng.normal(size=2), 0.0]) / np.sqrt(2),
        wobble_phase=float(rng.uniform(0, 2 * np.pi)),
    )
    if new.articulated:  # walkers face where they go
        new = new.replace(base_rotation=_yaw(heading) if obj.name == "quadruped" else obj.base_rotation)
    return _set_object(scene, i, new), {"object": i, "object_name": obj.name}


def edit_rotation(scene: Scene, rng, exclude=(), **_) -> tuple[Scene, dict]:
    i = _pick_object(scene, rng, exclude=exclude)
    obj = scene.objects[i]
    axis = np.array([0.0, 0.0, 1.0]) if rng.uniform() < 0.5 else rng.normal(size=3)
    axis = axis / np.linalg.norm(axis)
    if rng.uniform() < 0.5:  # re-oriented for the whole clip
        a0, rate = float(rng.choice([-1, 1]) * rng.uniform(np.radians(45), np.pi)), 0.0
    else:  # rotating progressively
        a0, rate = 0.0, float(rng.choice([-1, 1]) * rng.uniform(np.radians(90), np.radians(360)))
    new = obj.replace(extra_axis=axis, extra_angle0=a0, extra_rate=rate)
    return _set_object(scene, i, new), {
        "object": i,
        "object_name": obj.name,
        "axis": axis.tolist(),
        "angle0_deg": float(np.degrees(a0)),
        "rate_deg": float(np.degrees(rate)),
    }


def edit_deformation(scene: Scene, rng, exclude=(), **_) -> tuple[Scene, dict]:
    i = _pick_object(scene, rng, articulated=True, exclude=exclude)
    obj = scene.objects[i]
    parts = list(obj.parts)
    changed = []
    for k in range(1, len(parts)):
        if rng.uniform() < 0.7:
            p = parts[k]
            parts[k] = dataclasses.replace(
                p,
                amp=float(p.amp * rng.uniform(0.2, 2.0) + rng.uniform(0, 0.3)),
                phase=float(p.phase + rng.uniform(-np.pi, np.pi)),
                angle0=float(p.angle0 + rng.uniform(-0.5, 0.5)),
            )
            changed.append(p.name)
    scaled = None
    if rng.uniform() < 0.5 or not changed:
        k = int(rng.integers(1, len(parts)))
        p = parts[k]
        factor = float(rng.choice([rng.uniform(0.6, 0.8), rng.uniform(1.3, 1.7)]))
        parts[k] = dataclasses.replace(p, scale=p.scale * factor)
        scaled = {"part": p.name, "factor": factor}
    new = obj.replace(parts=tuple(parts))
    return _set_object(scene, i, new), {
        "object": i,
        "object_name": obj.name,
        "joints_changed": changed,
        "scaled": scaled,
    }


def edit_removal(scene: Scene, rng, exclude=(), **_) -> tuple[Scene, dict]:
    i = _pick_object(scene, rng, exclude=exclude)
    obj = scene.objects[i]
    side = float(rng.choice([-1.0, 1.0]))
    return _set_object(scene, i, obj.replace(removed=True, removal_side=side)), {
        "object": i,
        "object_name": obj.name,
        "side": side,
    }


def _in_view_fraction(scene: Scene, path: np.ndarray, s: np.ndarray) -> float:
    """Fraction of times at which a world point path (T, 3) projects well inside the view."""
    c, R = scene.camera.centers_and_rotations(s)
    cam = np.einsum("fij,fj->fi", R, path - c)
    tan = np.tan(scene.camera.fov_x / 2)
    z = np.maximum(cam[:, 2], 1e-6)
    ok = (cam[:, 2] > 0.5) & (np.abs(cam[:, 0] / z) < 0.75 * tan) & (np.abs(cam[:, 1] / z) < 0.4 * tan)
    return float(ok.mean())


def edit_duplication(scene: Scene, rng, exclude=(), **_) -> tuple[Scene, dict]:
    i = _pick_object(scene, rng, exclude=exclude)
    obj = scene.objects[i]
    s = frame_times(17)
    c, R = scene.camera.centers_and_rotations(np.array([0.5]))
    right, fwd = R[0, 0].copy(), R[0, 2].copy()
    right[2] = fwd[2] = 0
    right /= max(np.linalg.norm(right), 1e-9)
    fwd /= max(np.linalg.norm(fwd), 1e-9)
    r_b = obj.bound_radius()
    best, best_score = None, -np.inf
    for angle in np.linspace(0, 2 * np.pi, 12, endpoint=False):
        for dist in rng.uniform(2.1, 3.0, size=2) * r_b:
            off = dist * (np.cos(angle) * right + np.sin(angle) * fwd)
            path = obj.path(s) + off
            gaps = [
                np.min(np.linalg.norm(path[:, :2] - o.path(s)[:, :2], axis=-1)) - r_b - o.bound_radius()
                for j, o in enumerate(scene.objects)
                if j != i
            ]
            gap = min(gaps) if gaps else 1.0
            # the copy should be seen and should not run through other objects or the camera
            score = _in_view_fraction(scene, path, s) + min(gap, 0.0) + 0.1 * abs(np.cos(angle))
            if np.min(np.linalg.norm(path - scene.camera.centers_and_rotations(s)[0], axis=-1)) < r_b + 0.5:
                score -= 10
            if score > best_score:
                best, best_score = off, score
    turn = float(rng.uniform(-np.pi, np.pi)) if rng.uniform() < 0.5 else 0.0
    copy = obj.replace(offset=obj.offset + best, duplicate_of=i, base_rotation=_yaw(turn) @ obj.base_rotation)
    target = scene.replace(objects=tuple(scene.objects) + (copy,))
    return target, {
        "object": i,
        "object_name": obj.name,
        "copy": len(scene.objects),
        "offset": best.tolist(),
        "turn_deg": float(np.degrees(turn)),
    }


def edit_retiming(scene: Scene, rng, exclude=(), **_) -> tuple[Scene, dict]:
    kind = str(rng.choice(["speed", "reverse", "freeze", "ease", "shift"]))
    a = {
        "speed": rng.choice([rng.uniform(0.25, 0.6), rng.uniform(1.5, 2.2)]),
        "reverse": 0.0,
        "freeze": rng.uniform(0.3, 0.7),
        "ease": rng.choice([rng.uniform(0.4, 0.7), rng.uniform(1.6, 2.5)]),
        "shift": rng.choice([-1, 1]) * rng.uniform(0.2, 0.5),
    }[kind]
    warp = TimeWarp(kind, float(a))
    if rng.uniform() < 0.5:
        which = [_pick_object(scene, rng, exclude=exclude)]
    else:
        which = [j for j, o in enumerate(scene.objects) if o.duplicate_of < 0 and j not in exclude] or [0]
    target = scene
    for j in which:
        target = _set_object(target, j, target.objects[j].replace(time_warp=warp))
    return target, {"objects": which, "warp": kind, "a": float(a)}


EDITS = {
    "camera": edit_camera,
    "object_path": edit_object_path,
    "rotation": edit_rotation,
    "deformation": edit_deformation,
    "removal": edit_removal,
    "duplication": edit_duplication,
    "retiming": edit_retiming,
}


def apply_edit(scene: Scene, family: str, rng: np.random.Generator) -> tuple[Scene, dict]:
    """The target scene for `family` (one of ALL_FAMILIES) and a JSON-able description of the edit."""
    if family in EDITS:
        target, meta = EDITS[family](scene, rng)
        return target, {"family": family, "components": [family], family: meta}
    if family != "combination":
        raise ValueError(f"unknown edit family {family!r}; expected one of {ALL_FAMILIES}")
    first = str(rng.choice(BASE_FAMILIES))
    second = str(rng.choice([f for f in BASE_FAMILIES if f != first]))
    # deformation needs the (only) articulated object and removal should not hide another edit: apply
    # deformation first and removal last
    order = ("deformation", "rotation", "object_path", "retiming", "duplication", "camera", "removal")
    first, second = sorted((first, second), key=order.index)
    target, meta = scene, {"family": "combination", "components": [first, second]}
    used: list = []
    for fam in (first, second):
        target, m = EDITS[fam](target, rng, exclude=tuple(used))
        meta[fam] = m
        if "object" in m:
            used.append(m["object"])
    return target, meta
