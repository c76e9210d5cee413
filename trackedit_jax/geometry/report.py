"""A warning report for target tracks that will likely fail: behind the camera, off screen, jumps, NaN.

`edit_report(target_tracks, target_camera)` measures, on the target projection:
  * NaN/inf coordinates;
  * the fraction of (frame, point) pairs behind the camera (depth <= near) and, of those in front, off
    screen (removal edits put points there on purpose; the model sees them pinned outside the grid);
  * per-frame jumps: the largest 2D displacement between consecutive frames of points on screen in both
    (pixels) and the largest 3D displacement relative to the scene's spread (teleporting points).
`EditReport.warnings` lists the thresholds that were crossed; `format()` gives the printed text.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from trackedit_jax.geometry.projection import in_image, project
from trackedit_jax.geometry.types import Camera, Tracks


@dataclasses.dataclass
class EditReport:
    num_frames: int
    num_points: int
    nan_count: int
    behind_fraction: float
    offscreen_fraction: float
    worst_behind_frame: tuple  # (frame, fraction of points behind at that frame)
    worst_offscreen_frame: tuple
    max_jump_px: float
    jump_px_threshold: float
    jump_pairs: int  # (frame pair, point) pairs above the 2D threshold
    max_jump_world: float  # relative to the scene spread
    warnings: list

    @property
    def ok(self) -> bool:
        return not self.warnings

    def format(self) -> str:
        lines = [
            f"target: {self.num_frames} frames x {self.num_points} points",
            f"  behind the camera: {100 * self.behind_fraction:.1f}% "
            f"(worst frame {self.worst_behind_frame[0]}: {100 * self.worst_behind_frame[1]:.1f}%)",
            f"  off screen (in front): {100 * self.offscreen_fraction:.1f}% "
            f"(worst frame {self.worst_offscreen_frame[0]}: {100 * self.worst_offscreen_frame[1]:.1f}%)",
            f"  largest per-frame jump on screen: {self.max_jump_px:.1f} px "
            f"({self.jump_pairs} above {self.jump_px_threshold:.0f} px); "
            f"in 3D: {self.max_jump_world:.2f} x scene spread",
            f"  NaN/inf coordinates: {self.nan_count}",
        ]
        lines += [f"WARNING: {w}" for w in self.warnings] or ["no warnings"]
        return "\n".join(lines)


def edit_report(
    tracks: Tracks | np.ndarray,
    camera: Camera,
    *,
    near: float = 1e-3,
    behind_warn: float = 0.2,
    offscreen_warn: float = 0.5,
    jump_fraction_of_diagonal: float = 0.1,
    jump_world_warn: float = 0.5,
) -> EditReport:
    """Measure the target tracks (Tracks or (F, N, 3) array) against the target camera (module docstring)."""
    xyz = np.asarray(tracks.xyz if isinstance(tracks, Tracks) else tracks, np.float64)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"tracks must be (F, N, 3); got {xyz.shape}")
    F, N = xyz.shape[:2]
    if camera.num_frames != F:
        raise ValueError(f"tracks have F={F} frames but the camera has F={camera.num_frames}")
    finite = np.isfinite(xyz).all(axis=-1)
    nan_count = int((~finite).sum())
    safe = np.where(finite[..., None], xyz, 0.0)
    cam = Camera(
        np.asarray(camera.intrinsics, np.float64), np.asarray(camera.extrinsics, np.float64), camera.image_size
    )
    uv, depth = project(safe, cam)
    front = (depth > near) & finite
    on = front & in_image(uv, camera.image_size)
    behind = ~front & finite
    off = front & ~on
    H, W = camera.image_size
    thr = jump_fraction_of_diagonal * float(np.hypot(H, W))
    both = on[1:] & on[:-1]
    jump = np.linalg.norm(np.diff(uv, axis=0), axis=-1)
    jump = np.where(both, jump, 0.0)
    max_jump = float(jump.max(initial=0.0))
    n_jump = int((jump > thr).sum())
    spread = float(np.median(np.linalg.norm(safe - np.median(safe.reshape(-1, 3), axis=0), axis=-1)))
    step3 = np.linalg.norm(np.diff(safe, axis=0), axis=-1)
    step3 = np.where(finite[1:] & finite[:-1], step3, 0.0)
    max_world = float(step3.max(initial=0.0)) / max(spread, 1e-12)
    per_behind = behind.mean(axis=1)
    per_off = off.sum(axis=1) / np.maximum(front.sum(axis=1), 1)
    rep = EditReport(
        num_frames=F,
        num_points=N,
        nan_count=nan_count,
        behind_fraction=float(behind.mean()),
        offscreen_fraction=float(off.sum() / max(front.sum(), 1)),
        worst_behind_frame=(int(per_behind.argmax()), float(per_behind.max())),
        worst_offscreen_frame=(int(per_off.argmax()), float(per_off.max())),
        max_jump_px=max_jump,
        jump_px_threshold=thr,
        jump_pairs=n_jump,
        max_jump_world=max_world,
        warnings=[],
    )
    w = rep.warnings
    if nan_count:
        w.append(f"{nan_count} target coordinates are NaN or inf")
    if rep.behind_fraction > behind_warn:
        w.append(
            f"{100 * rep.behind_fraction:.0f}% of target points are behind the camera (> {100 * behind_warn:.0f}%)"
        )
    if rep.offscreen_fraction > offscreen_warn:
        w.append(
            f"{100 * rep.offscreen_fraction:.0f}% of target points in front of the camera are off screen "
            f"(> {100 * offscreen_warn:.0f}%)"
        )
    if n_jump:
        w.append(f"{n_jump} on-screen per-frame jumps exceed {thr:.0f} px (max {max_jump:.0f} px)")
    if max_world > jump_world_warn:
        w.append(f"a point moves {max_world:.2f} x the scene spread in one frame (> {jump_world_warn})")
    return rep
