"""Cameras of a DyCheck iPhone scene (`camera/<id>.json` files, e.g. paper-windmill).

A DyCheck camera JSON holds `orientation` (3x3 world-to-camera rotation), `position` (camera centre in
world), `focal_length`, `pixel_aspect_ratio`, `skew`, `principal_point` (x, y), `image_size` [W, H] and
distortion coefficients, with OpenCV axes; so extrinsics are [R | -R @ position] (world-to-camera).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from trackedit_jax.geometry.types import Camera


def _read_camera_json(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    with open(path) as f:
        d = json.load(f)
    try:
        R = np.asarray(d["orientation"], np.float64)
        c = np.asarray(d["position"], np.float64)
        fl = float(d["focal_length"])
        cx, cy = (float(v) for v in d["principal_point"])
        W, H = (int(v) for v in d["image_size"])
    except KeyError as e:
        raise ValueError(f"{path}: DyCheck camera JSON lacks key {e}") from e
    skew = float(d.get("skew", 0.0))
    aspect = float(d.get("pixel_aspect_ratio", 1.0))
    K = np.array([[fl, skew, cx], [0.0, fl * aspect, cy], [0.0, 0.0, 1.0]])
    E = np.eye(4)
    E[:3, :3] = R
    E[:3, 3] = -R @ c
    return K, E, (H, W)


def dycheck_camera_ids(folder: str | os.PathLike, camera_id: int = 0) -> list[str]:
    """Frame ids `<camera_id>_<time>` present in `folder/camera/`, in time order."""
    cam_dir = pathlib.Path(folder) / "camera"
    if not cam_dir.is_dir():
        raise FileNotFoundError(f"{folder}: no camera/ folder (not a DyCheck scene)")
    ids = sorted(p.stem for p in cam_dir.glob(f"{camera_id}_*.json"))
    if not ids:
        raise ValueError(f"{cam_dir}: no cameras with id prefix {camera_id}_")
    return ids


def load_dycheck_cameras(
    folder: str | os.PathLike,
    ids: Sequence[str] | None = None,
    *,
    camera_id: int = 0,
    image_scale: float = 1.0,
    normalize_scene: bool = False,
) -> Camera:
    """Read DyCheck cameras as one `Camera` with F = len(ids) frames.

    Args:
      folder: the scene folder (holding `camera/`, `scene.json`).
      ids: frame ids to read (e.g. ["0_00000", ...]); default: all of `camera_id` in time order.
      image_scale: scale of the image domain (0.5 for the 2x-downsampled frames): intrinsics and
        image_size are scaled, pixel centres kept consistent.
      normalize_scene: apply the scene's `center`/`scale` from scene.json (world -> (x - center) * scale),
        as DyCheck's loaders do.
    Returns:
      Camera: intrinsics (F, 3, 3) float32, extrinsics (F, 4, 4) float32 world-to-camera, image_size (H, W).
    """
    folder = pathlib.Path(folder)
    ids = list(ids) if ids is not None else dycheck_camera_ids(folder, camera_id)
    Ks, Es, sizes = [], [], set()
    for i in ids:
        path = folder / "camera" / f"{i}.json"
        if not path.is_file():
            raise FileNotFoundError(f"DyCheck camera {i!r} not found at {path}")
        K, E, hw = _read_camera_json(path)
        Ks.append(K)
        Es.append(E)
        sizes.add(hw)
    if len(sizes) != 1:
        raise ValueError(f"{folder}: cameras have different image sizes {sorted(sizes)}")
    H, W = sizes.pop()
    K = np.stack(Ks)
    E = np.stack(Es)
    if image_scale != 1.0:
        # pixel centres at integers: x' = (x + 0.5) * s - 0.5
        K[:, :2, :] *= image_scale
        K[:, :2, 2] += 0.5 * image_scale - 0.5
        H, W = int(round(H * image_scale)), int(round(W * image_scale))
    if normalize_scene:
        with open(folder / "scene.json") as f:
            scene = json.load(f)
        center = np.asarray(scene["center"], np.float64)
        scale = float(scene["scale"])
        # x_cam = R x + t with x = x'/scale + center  =>  x_cam * scale = R x' + scale * (R center + t)
        E[:, :3, 3] = scale * (np.einsum("fij,j->fi", E[:, :3, :3], center) + E[:, :3, 3])
    return Camera(K.astype(np.float32), E.astype(np.float32), (H, W))
