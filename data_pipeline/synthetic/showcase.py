"""The demo scene: an edit that is plain to see, rendered with exact ground truth.

Two objects stand near a static camera. The edit: the camera arcs 30 degrees around the scene over the
clip, and the object that passed beside the front one in the source is moved to pass BEHIND it (its
depth order with the front object changes). Everything else (textures, light, the other objects'
motion) is the source scene's.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.synthetic.generator import SyntheticConfig, SyntheticPair, render_pair
from data_pipeline.synthetic.scene import CameraPath, random_scene

# Never a training seed (training uses train.seed and train.seed + 10000; evaluation its own seeds).
SHOWCASE_SEED = 20261205
ARC_DEGREES = 30.0


def _horizontal(v: np.ndarray) -> np.ndarray:
    v = np.array([v[0], v[1], 0.0])
    return v / np.linalg.norm(v)


def showcase_pair(config: SyntheticConfig = SyntheticConfig(), seed: int = SHOWCASE_SEED) -> SyntheticPair:
    """The demo pair (module docstring) at `config`'s frames and size."""
    rng = np.random.default_rng([int(seed), 7])
    scene = random_scene(rng, num_rigid=2)
    az0 = float(rng.uniform(0, 2 * np.pi))
    camera = CameraPath(
        kind="static",
        target=np.array([0.0, 0.0, 0.5]),
        radius=4.2,
        azimuth=az0,
        height=1.8,
        sweep=0.0,
        fov_x=float(np.radians(55)),
    )
    arc = np.radians(ARC_DEGREES)
    target_camera = camera.replace(kind="orbit", sweep=arc, azimuth=az0 + arc / 2)  # az0 -> az0 + arc

    objects = list(scene.objects)
    front, mover = 0, 1
    c_mid = np.array([np.cos(az0 + arc / 2), np.sin(az0 + arc / 2), 0.0]) * camera.radius
    c_src = np.array([np.cos(az0), np.sin(az0), 0.0]) * camera.radius
    still = dict(velocity=np.zeros(3), wobble_amp=np.zeros(3), hop_height=0.0)
    objects[front] = objects[front].replace(center=np.array([0.0, 0.0, objects[front].center[2]]), **still)
    # source: the mover walks across in front of and beside the front object
    away = _horizontal(-c_src)
    side = np.cross(np.array([0.0, 0.0, 1.0]), away)
    src_xy = -0.9 * away + 1.4 * side
    objects[mover] = objects[mover].replace(
        center=np.array([src_xy[0], src_xy[1], objects[mover].center[2]]),
        velocity=-0.8 * side,
        wobble_amp=np.zeros(3),
        hop_height=0.0,
    )
    for k in range(2, len(objects)):  # the rest stay out of the way, behind
        xy = 2.6 * away + (k - 2.5) * 1.5 * side
        objects[k] = objects[k].replace(center=np.array([xy[0], xy[1], objects[k].center[2]]), **still)
    source = scene.replace(objects=tuple(objects), camera=camera)

    # target: the mover passes behind the front object, as the arcing camera sees it mid-clip
    away_t = _horizontal(-c_mid)
    side_t = np.cross(np.array([0.0, 0.0, 1.0]), away_t)
    tgt_xy = 1.6 * away_t
    moved = objects[mover].replace(
        center=np.array([tgt_xy[0], tgt_xy[1], objects[mover].center[2]]), velocity=3.4 * side_t
    )
    objects_t = list(objects)
    objects_t[mover] = moved
    target = source.replace(objects=tuple(objects_t), camera=target_camera)
    edit = {
        "family": "combination",
        "components": ["camera", "object_path"],
        "arc_degrees": ARC_DEGREES,
        "object": mover,
        "behind": front,
    }
    return render_pair(source, target, "combination", edit, rng, config)
