"""Procedural scenes: textured ground and backdrop dome, rigid and articulated objects, camera paths.

Everything is a function of the normalised clip time s in [0, 1] (frame f of F is at s = f / (F - 1)),
so one scene can be rendered at any frame count and resolution. World axes: z up, ground plane z = 0.
Cameras follow OpenCV (x right, y down, z forward), extrinsics world-to-camera.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.synthetic.raycast import (
    BOX,
    CYLINDER,
    SPHERE,
    Sim,
    bounding_radius,
    rotation_matrix,
)
from data_pipeline.synthetic.textures import Texture, random_texture

DOME_RADIUS = 16.0
NUM_BACKGROUND_PRIMS = 2  # primitive ids 0 (ground) and 1 (dome)


def frame_times(num_frames: int) -> np.ndarray:
    """(F,) normalised times in [0, 1]."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1; got {num_frames}")
    return np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)


# ----------------------------------------------------------------------------- time warps
@dataclasses.dataclass(frozen=True)
class TimeWarp:
    """Retiming s -> tau. kinds: identity, speed (a = factor about the middle), reverse,
    freeze (hold after s = a), ease (tau = s ** a), shift (tau = s + a)."""

    kind: str = "identity"
    a: float = 0.0

    def __call__(self, s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, np.float64)
        if self.kind == "identity":
            return s
        if self.kind == "speed":
            return 0.5 + self.a * (s - 0.5)
        if self.kind == "reverse":
            return 1.0 - s
        if self.kind == "freeze":
            return np.minimum(s, self.a)
        if self.kind == "ease":
            return s**self.a
        if self.kind == "shift":
            return s + self.a
        raise ValueError(f"unknown time warp {self.kind!r}")


# ----------------------------------------------------------------------------- objects
@dataclasses.dataclass(frozen=True)
class PartSpec:
    """One primitive of an object. Its pose is
    parent_pose @ T(joint_offset) @ R(joint_axis, angle(tau)) @ S(scale) @ T(center_offset),
    angle(tau) = angle0 + amp * sin(2 pi freq tau + phase). The root part has parent -1."""

    kind: int
    size: np.ndarray
    texture: Texture
    parent: int = -1
    joint_offset: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    joint_axis: np.ndarray = dataclasses.field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    angle0: float = 0.0
    amp: float = 0.0
    freq: float = 0.0
    phase: float = 0.0
    center_offset: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0
    name: str = ""

    def angle(self, tau: np.ndarray) -> np.ndarray:
        return self.angle0 + self.amp * np.sin(2 * np.pi * self.freq * tau + self.phase)


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """A rigid (one part) or articulated object moving over the ground.

    Root pose(s) = T(path(tau) + offset) @ R(extra_axis, extra_angle0 + extra_rate * s)
                   @ R(spin_axis, spin_rate * tau) @ base_rotation,   tau = time_warp(s)
    path(tau) = center + velocity (tau - 1/2) + wobble_amp sin(2 pi wobble_freq tau + wobble_phase)
                + z * hop_height |sin(pi hop_freq tau)|
    `removed` objects are placed outside the view frustum by `evaluate_clip` (needs the camera).
    """

    name: str
    parts: tuple
    center: np.ndarray
    velocity: np.ndarray
    wobble_amp: np.ndarray
    wobble_freq: float
    wobble_phase: float
    hop_height: float
    hop_freq: float
    base_rotation: np.ndarray
    spin_axis: np.ndarray
    spin_rate: float
    extra_axis: np.ndarray = dataclasses.field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    extra_angle0: float = 0.0
    extra_rate: float = 0.0
    time_warp: TimeWarp = TimeWarp()
    offset: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    removed: bool = False
    removal_side: float = 1.0  # +1: removed to the right of the view, -1: to the left
    duplicate_of: int = -1  # index of the object this one copies (duplication), -1 = original

    @property
    def articulated(self) -> bool:
        return len(self.parts) > 1

    def path(self, s: np.ndarray) -> np.ndarray:
        tau = self.time_warp(s)
        p = (
            self.center[None]
            + self.velocity[None] * (tau[:, None] - 0.5)
            + self.wobble_amp[None] * np.sin(2 * np.pi * self.wobble_freq * tau + self.wobble_phase)[:, None]
        )
        p[:, 2] += self.hop_height * np.abs(np.sin(np.pi * self.hop_freq * tau))
        return p + self.offset[None]

    def root_pose(self, s: np.ndarray) -> Sim:
        tau = self.time_warp(s)
        F = len(s)
        R = (
            rotation_matrix(self.extra_axis, self.extra_angle0 + self.extra_rate * s)
            @ rotation_matrix(self.spin_axis, self.spin_rate * tau)
            @ self.base_rotation[None]
        )
        return Sim(R, self.path(s), np.ones(F))

    def part_poses(self, s: np.ndarray, root: Sim | None = None) -> list:
        """Per-part world poses (list of Sim with F frames)."""
        tau = self.time_warp(s)
        root = self.root_pose(s) if root is None else root
        F = len(s)
        poses: list = []
        for part in self.parts:
            parent = root if part.parent < 0 else poses[part.parent]
            local = (
                Sim.translation(np.broadcast_to(part.joint_offset, (F, 3)))
                @ Sim.rotation(rotation_matrix(part.joint_axis, part.angle(tau)))
                @ Sim.scale(np.full(F, part.scale))
                @ Sim.translation(np.broadcast_to(part.center_offset, (F, 3)))
            )
            poses.append(parent @ local)
        return poses

    def bound_radius(self) -> float:
        """Radius around the root origin containing the object in any pose (joints rotate freely)."""
        reach = [0.0] * len(self.parts)
        for i, p in enumerate(self.parts):
            own = p.scale * (np.linalg.norm(p.center_offset) + bounding_radius(p.kind, p.size))
            base = 0.0 if p.parent < 0 else reach[p.parent] + np.linalg.norm(p.joint_offset)
            scale_chain = 1.0
            j = p.parent
            while j >= 0:
                scale_chain *= self.parts[j].scale
                j = self.parts[j].parent
            reach[i] = base + own * scale_chain
        return float(max(reach))

    def replace(self, **kw) -> ObjectSpec:
        return dataclasses.replace(self, **kw)


def _yaw(angle: float) -> np.ndarray:
    return rotation_matrix(np.array([0.0, 0.0, 1.0]), np.array([angle]))[0]


def random_rigid_object(rng: np.random.Generator, center_xy: np.ndarray) -> ObjectSpec:
    kind = int(rng.choice([SPHERE, BOX, CYLINDER]))
    g = rng.uniform(0.35, 0.7)
    if kind == SPHERE:
        size, name = np.array([g, g, g]), "sphere"
    elif kind == BOX:
        size, name = g * rng.uniform(0.6, 1.2, 3), "box"
    else:
        size, name = np.array([g * rng.uniform(0.5, 0.9), 0.0, g * rng.uniform(0.7, 1.4)]), "cylinder"
    size = size.copy()
    if kind == CYLINDER:
        size[1] = size[0]
    r_b = bounding_radius(kind, size)
    part = PartSpec(
        kind=kind, size=size, texture=random_texture(rng, feature_size=g * rng.uniform(0.6, 1.4)), name=name
    )
    spin_axis = np.array([0.0, 0.0, 1.0]) if rng.uniform() < 0.6 else rng.normal(size=3)
    speed = rng.uniform(0.0, 1.8)
    heading = rng.uniform(0, 2 * np.pi)
    upright = kind != SPHERE and spin_axis[0] == 0 and spin_axis[1] == 0
    return ObjectSpec(
        name=name,
        parts=(part,),
        # upright boxes/cylinders stand on the ground; tumbling ones hover at their bounding radius
        center=np.array([center_xy[0], center_xy[1], size[2] if upright else r_b]),
        velocity=speed * np.array([np.cos(heading), np.sin(heading), 0.0]),
        wobble_amp=rng.uniform(0, 0.4) * np.array([*rng.normal(size=2), 0.0]) / np.sqrt(2),
        wobble_freq=float(rng.uniform(0.3, 1.5)),
        wobble_phase=float(rng.uniform(0, 2 * np.pi)),
        hop_height=float(rng.uniform(0, 0.5) if rng.uniform() < 0.3 else 0.0),
        hop_freq=float(rng.integers(1, 4)),
        base_rotation=rotation_matrix(rng.normal(size=3), np.array([rng.uniform(0, 2 * np.pi)]))[0]
        if kind == SPHERE
        else _yaw(rng.uniform(0, 2 * np.pi)),
        spin_axis=spin_axis / np.linalg.norm(spin_axis),
        spin_rate=float(rng.uniform(-2.5, 2.5)),
    )


def random_quadruped(rng: np.random.Generator, center_xy: np.ndarray) -> ObjectSpec:
    """Torso box, head sphere on a neck joint, four two-segment legs swinging about hip and knee."""
    g = rng.uniform(0.8, 1.2)
    tex_body = random_texture(rng, feature_size=0.3 * g)
    tex_limb = random_texture(rng, feature_size=0.2 * g)
    tex_head = random_texture(rng, feature_size=0.15 * g)
    half = np.array([0.38, 0.2, 0.15]) * g
    up_len, lo_len, leg_r = 0.3 * g, 0.26 * g, 0.06 * g
    freq = float(rng.uniform(1.0, 3.0))
    amp = float(rng.uniform(0.3, 0.7))
    Y = np.array([0.0, 1.0, 0.0])
    parts = [PartSpec(kind=BOX, size=half, texture=tex_body, name="torso")]
    parts.append(
        PartSpec(
            kind=SPHERE,
            size=np.full(3, 0.14 * g),
            texture=tex_head,
            parent=0,
            joint_offset=np.array([half[0], 0.0, half[2]]),
            joint_axis=np.array([0.0, 0.0, 1.0]),
            amp=float(rng.uniform(0.1, 0.6)),
            freq=float(rng.uniform(0.5, 2.0)),
            phase=float(rng.uniform(0, 6.3)),
            center_offset=np.array([0.1 * g, 0.0, 0.08 * g]),
            name="head",
        )
    )
    for k, (sx, sy) in enumerate([(1, 1), (1, -1), (-1, 1), (-1, -1)]):
        phase = 0.0 if (sx * sy) > 0 else np.pi  # diagonal gait
        parts.append(
            PartSpec(
                kind=CYLINDER,
                size=np.array([leg_r, leg_r, up_len / 2]),
                texture=tex_limb,
                parent=0,
                joint_offset=np.array([sx * (half[0] - leg_r), sy * (half[1] - leg_r), -half[2]]),
                joint_axis=Y,
                amp=amp,
                freq=freq,
                phase=phase,
                center_offset=np.array([0.0, 0.0, -up_len / 2]),
                name=f"upper_leg{k}",
            )
        )
        parts.append(
            PartSpec(
                kind=CYLINDER,
                size=np.array([leg_r * 0.85, leg_r * 0.85, lo_len / 2]),
                texture=tex_limb,
                parent=len(parts) - 1,
                joint_offset=np.array([0.0, 0.0, -up_len / 2]),
                joint_axis=Y,
                angle0=0.2,
                amp=amp * 0.6,
                freq=freq,
                phase=phase + 0.8,
                center_offset=np.array([0.0, 0.0, -lo_len / 2]),
                name=f"lower_leg{k}",
            )
        )
    heading = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0.3, 1.5)
    return ObjectSpec(
        name="quadruped",
        parts=tuple(parts),
        center=np.array([center_xy[0], center_xy[1], half[2] + up_len + lo_len * 0.95]),
        velocity=speed * np.array([np.cos(heading), np.sin(heading), 0.0]),
        wobble_amp=np.zeros(3),
        wobble_freq=0.0,
        wobble_phase=0.0,
        hop_height=0.0,
        hop_freq=1.0,
        base_rotation=_yaw(heading),
        spin_axis=np.array([0.0, 0.0, 1.0]),
        spin_rate=float(rng.uniform(-0.6, 0.6)),
    )


def random_lamp(rng: np.random.Generator, center_xy: np.ndarray) -> ObjectSpec:
    """A jointed arm: a base cylinder, three links bending about horizontal axes, a sphere at the tip."""
    g = rng.uniform(0.8, 1.2)
    base_h, base_r = 0.1 * g, 0.3 * g
    tex_base = random_texture(rng, feature_size=0.3 * g)
    tex_link = random_texture(rng, feature_size=0.2 * g)
    parts = [PartSpec(kind=CYLINDER, size=np.array([base_r, base_r, base_h]), texture=tex_base, name="base")]
    parent, off = 0, np.array([0.0, 0.0, base_h])
    for k in range(3):
        L = rng.uniform(0.35, 0.55) * g
        kind = BOX if rng.uniform() < 0.5 else CYLINDER
        size = np.array([0.07 * g, 0.07 * g, L / 2]) if kind == BOX else np.array([0.06 * g, 0.06 * g, L / 2])
        axis = np.array([1.0, 0.0, 0.0]) if k % 2 == 0 else np.array([0.0, 1.0, 0.0])
        parts.append(
            PartSpec(
                kind=kind,
                size=size,
                texture=tex_link,
                parent=parent,
                joint_offset=off,
                joint_axis=axis,
                angle0=float(rng.uniform(-0.4, 0.4)),
                amp=float(rng.uniform(0.2, 0.8)),
                freq=float(rng.uniform(0.5, 2.0)),
                phase=float(rng.uniform(0, 6.3)),
                center_offset=np.array([0.0, 0.0, L / 2]),
                name=f"link{k}",
            )
        )
        parent, off = len(parts) - 1, np.array([0.0, 0.0, L / 2])
    parts.append(
        PartSpec(
            kind=SPHERE,
            size=np.full(3, 0.12 * g),
            texture=random_texture(rng, feature_size=0.12 * g),
            parent=parent,
            joint_offset=off,
            joint_axis=np.array([0.0, 0.0, 1.0]),
            amp=float(rng.uniform(0.5, 2.0)),
            freq=1.0,
            center_offset=np.array([0.0, 0.0, 0.1 * g]),
            name="tip",
        )
    )
    return ObjectSpec(
        name="lamp",
        parts=tuple(parts),
        center=np.array([center_xy[0], center_xy[1], base_h]),
        velocity=rng.uniform(0, 0.6) * np.array([*rng.normal(size=2), 0.0]) / np.sqrt(2),
        wobble_amp=np.zeros(3),
        wobble_freq=0.0,
        wobble_phase=0.0,
        hop_height=0.0,
        hop_freq=1.0,
        base_rotation=_yaw(rng.uniform(0, 2 * np.pi)),
        spin_axis=np.array([0.0, 0.0, 1.0]),
        spin_rate=float(rng.uniform(-1.5, 1.5)),
    )


# ----------------------------------------------------------------------------- cameras
CAMERA_KINDS = ("static", "pan", "orbit", "dolly")


@dataclasses.dataclass(frozen=True)
class CameraPath:
    """A camera looking at `target` from (radius, azimuth, height), moving by `kind`:
    static; pan (fixed centre, view yaws by `sweep` rad); orbit (azimuth sweeps by `sweep` rad);
    dolly (radius scales by 1 + sweep (s - 1/2)). Optional handheld jitter: small smooth rotation
    (rad) and translation noise. fov_x is the horizontal field of view (rad)."""

    kind: str
    target: np.ndarray
    radius: float
    azimuth: float
    height: float
    sweep: float
    fov_x: float
    jitter_rot: float = 0.0
    jitter_trans: float = 0.0
    jitter_freqs: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((6, 2)))
    jitter_phases: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((6, 2)))

    def intrinsics(self, image_size: tuple[int, int]) -> np.ndarray:
        """(3, 3) pixels; principal point at the image centre ((W-1)/2, (H-1)/2) in pixel-centre units."""
        H, W = image_size
        f = W / (2.0 * np.tan(self.fov_x / 2.0))
        return np.array([[f, 0.0, (W - 1) / 2.0], [0.0, f, (H - 1) / 2.0], [0.0, 0.0, 1.0]])

    def _jitter(self, s: np.ndarray) -> np.ndarray:
        """(F, 6): 3 rotation angles and 3 translations, each a sum of two sinusoids."""
        arg = 2 * np.pi * self.jitter_freqs[None] * s[:, None, None] + self.jitter_phases[None]
        return np.sin(arg).sum(-1) / 2.0

    def centers_and_rotations(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Camera centres (F, 3) and world-to-camera rotations (F, 3, 3)."""
        s = np.asarray(s, np.float64)
        F = len(s)
        az = np.full(F, self.azimuth)
        rad = np.full(F, self.radius)
        if self.kind == "orbit":
            az = self.azimuth + self.sweep * (s - 0.5)
        elif self.kind == "dolly":
            rad = self.radius * (1.0 + self.sweep * (s - 0.5))
        elif self.kind not in ("static", "pan"):
            raise ValueError(f"unknown camera path kind {self.kind!r}")
        c = self.target[None] + np.stack([rad * np.cos(az), rad * np.sin(az), np.zeros(F)], -1)
        c[:, 2] = self.height
        look = np.broadcast_to(self.target, (F, 3)) - c
        if self.kind == "pan":
            look = np.einsum("fij,fj->fi", rotation_matrix(np.array([0.0, 0.0, 1.0]), self.sweep * (s - 0.5)), look)
        jit = self._jitter(s)
        c = c + self.jitter_trans * jit[:, 3:]
        fwd = look / np.linalg.norm(look, axis=-1, keepdims=True)
        right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
        right /= np.linalg.norm(right, axis=-1, keepdims=True)
        down = np.cross(fwd, right)
        R = np.stack([right, down, fwd], axis=1)  # rows: camera axes in world
        if self.jitter_rot > 0:
            a = self.jitter_rot * jit[:, :3]
            Rj = (
                rotation_matrix(np.array([1.0, 0, 0]), a[:, 0])
                @ rotation_matrix(np.array([0, 1.0, 0]), a[:, 1])
                @ rotation_matrix(np.array([0, 0, 1.0]), a[:, 2])
            )
            R = Rj @ R
        return c, R

    def replace(self, **kw) -> CameraPath:
        return dataclasses.replace(self, **kw)


def random_camera_path(rng: np.random.Generator, kind: str | None = None, fov_x: float | None = None) -> CameraPath:
    kind = kind or str(rng.choice(CAMERA_KINDS))
    sweep = {
        "static": 0.0,
        "pan": rng.choice([-1, 1]) * rng.uniform(np.radians(10), np.radians(30)),
        "orbit": rng.choice([-1, 1]) * rng.uniform(np.radians(20), np.radians(75)),
        "dolly": rng.choice([-1, 1]) * rng.uniform(0.2, 0.5),
    }[kind]
    handheld = rng.uniform() < 0.3
    return CameraPath(
        kind=kind,
        target=np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.3, 0.6)]),
        radius=float(rng.uniform(4.5, 7.0)),
        azimuth=float(rng.uniform(0, 2 * np.pi)),
        height=float(rng.uniform(1.2, 3.0)),
        sweep=float(sweep),
        fov_x=float(fov_x if fov_x is not None else np.radians(rng.uniform(45, 65))),
        jitter_rot=float(rng.uniform(0.004, 0.015)) if handheld else 0.0,
        jitter_trans=float(rng.uniform(0.01, 0.05)) if handheld else 0.0,
        jitter_freqs=rng.uniform(1.0, 4.0, size=(6, 2)),
        jitter_phases=rng.uniform(0, 2 * np.pi, size=(6, 2)),
    )


# ----------------------------------------------------------------------------- scenes
@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple
    ground_texture: Texture
    dome_texture: Texture
    camera: CameraPath
    light_dir: np.ndarray
    ambient: float
    dome_radius: float = DOME_RADIUS

    def replace(self, **kw) -> Scene:
        return dataclasses.replace(self, **kw)


def random_scene(rng: np.random.Generator, *, num_rigid: int | None = None) -> Scene:
    """Ground + dome, 1-3 rigid objects and one articulated object (quadruped or lamp), a camera path."""
    n_rigid = int(rng.integers(1, 4)) if num_rigid is None else num_rigid
    centers: list = []
    while len(centers) < n_rigid + 1:
        c = rng.uniform(-2.0, 2.0, size=2)
        if np.linalg.norm(c) <= 2.2 and all(np.linalg.norm(c - o) > 1.2 for o in centers):
            centers.append(c)
    objects = [random_quadruped(rng, centers[0]) if rng.uniform() < 0.6 else random_lamp(rng, centers[0])]
    objects += [random_rigid_object(rng, c) for c in centers[1:]]
    order = rng.permutation(len(objects))
    objects = [objects[i] for i in order]
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(35), np.radians(70))
    light = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    scene = Scene(
        objects=tuple(objects),
        ground_texture=random_texture(rng, feature_size=rng.uniform(0.8, 2.0)),
        dome_texture=random_texture(rng, feature_size=rng.uniform(4.0, 9.0), muted=True),
        camera=random_camera_path(rng),
        light_dir=light,
        ambient=float(rng.uniform(0.3, 0.5)),
    )
    return ensure_camera_clear(scene, rng)


def camera_clearance(scene: Scene, camera: CameraPath, samples: int = 33) -> float:
    """Minimum over time of (distance camera centre -> object root) - object bound radius."""
    s = frame_times(samples)
    c, _ = camera.centers_and_rotations(s)
    gaps = [np.min(np.linalg.norm(c - o.path(s), axis=-1)) - o.bound_radius() for o in scene.objects if not o.removed]
    return float(min(gaps)) if gaps else float("inf")


def ensure_camera_clear(scene: Scene, rng: np.random.Generator, min_gap: float = 0.5) -> Scene:
    """Resample the camera path until no object comes within `min_gap` of the camera centre."""
    cam = scene.camera
    for _ in range(20):
        if camera_clearance(scene, cam) >= min_gap:
            return scene.replace(camera=cam)
        new = random_camera_path(rng, kind=cam.kind, fov_x=cam.fov_x)
        cam = new.replace(radius=max(new.radius, cam.radius) + 0.5)
    return scene.replace(camera=cam)
