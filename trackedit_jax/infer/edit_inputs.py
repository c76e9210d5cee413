"""The inputs of an edit on the model grid: how frames and cameras are fitted to it (resize + centre crop,
frames padded to 4k+1), and the records `EditPipeline` passes around (`EditInputs`, `EditOutput`).

See `infer.pipeline` (its module docstring, steps 2-4) for where each step happens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from trackedit_jax.geometry.types import Camera, Tracks

RESIZE_MODES = ("crop", "stretch")


# ------------------------------------------------------------------------------------------------ geometry


@dataclasses.dataclass(frozen=True)
class GridFit:
    """How frames of `in_size` map to the model grid `out_size`: resize to `resized`, then crop the
    window starting at `offset` (y, x). Scales are per axis (resized / in_size)."""

    in_size: tuple[int, int]
    out_size: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]

    @property
    def window_in_input(self) -> tuple[int, int]:
        """The size, in input pixels, of the region the model grid shows."""
        (H, W), (Hr, Wr), (h, w) = self.in_size, self.resized, self.out_size
        return max(1, int(round(h * H / Hr))), max(1, int(round(w * W / Wr)))


def fit_to_grid(in_size: tuple[int, int], out_size: tuple[int, int], mode: str = "crop") -> GridFit:
    """The resize (+ centre crop) taking frames of `in_size` (H, W) onto `out_size` (see module docstring)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}; got {mode!r}")
    H, W = (int(s) for s in in_size)
    h, w = (int(s) for s in out_size)
    if min(H, W, h, w) <= 0:
        raise ValueError(f"sizes must be positive; got in_size={in_size}, out_size={out_size}")
    if mode == "stretch":
        return GridFit((H, W), (h, w), (h, w), (0, 0))
    s = max(h / H, w / W)
    Hr, Wr = max(h, int(round(H * s))), max(w, int(round(W * s)))
    return GridFit((H, W), (h, w), (Hr, Wr), ((Hr - h) // 2, (Wr - w) // 2))


def fit_camera(camera: Camera, fit: GridFit) -> Camera:
    """Map a camera's intrinsics through `fit` (its own image_size is scaled onto fit.resized, then
    cropped). Extrinsics are unchanged; the result's image_size is fit.out_size."""
    Hc, Wc = camera.image_size
    (H, W), (Hr, Wr) = fit.in_size, fit.resized
    if abs(Hc / Wc - H / W) > 0.01 * (H / W):
        raise ValueError(
            f"the camera's image_size {camera.image_size} has another aspect ratio than the video {fit.in_size}: "
            "the intrinsics cannot be mapped onto the video's frames"
        )
    sx, sy = Wr / Wc, Hr / Hc
    oy, ox = fit.offset
    K = np.asarray(camera.intrinsics, np.float64).copy()
    row0 = K[:, 0, :].copy()
    K[:, 0, 0], K[:, 0, 1] = row0[:, 0] * sx, row0[:, 1] * sx
    K[:, 0, 2] = (row0[:, 2] + 0.5) * sx - 0.5 - ox
    K[:, 1, 1] = K[:, 1, 1] * sy
    K[:, 1, 2] = (K[:, 1, 2] + 0.5) * sy - 0.5 - oy
    return Camera(K.astype(np.float32), np.asarray(camera.extrinsics, np.float32), fit.out_size)


def fit_video(frames: np.ndarray, fit: GridFit) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, h, w, 3) through `fit` (OpenCV area / bicubic resize, then crop)."""
    from trackedit_jax.media import resize_video

    out = resize_video(frames, fit.resized)
    (oy, ox), (h, w) = fit.offset, fit.out_size
    return np.ascontiguousarray(out[:, oy : oy + h, ox : ox + w])


def fit_depth(depth: np.ndarray, fit: GridFit) -> np.ndarray:
    """(F, H, W) depth -> (F, h, w) through `fit` (nearest neighbour: depths are not blended)."""
    import cv2

    (Hr, Wr), (oy, ox), (h, w) = fit.resized, fit.offset, fit.out_size
    out = np.stack([cv2.resize(np.asarray(d, np.float32), (Wr, Hr), interpolation=cv2.INTER_NEAREST) for d in depth])
    return np.ascontiguousarray(out[:, oy : oy + h, ox : ox + w])


def padded_frame_count(num_frames: int) -> int:
    """The smallest 4k+1 >= num_frames."""
    return 4 * math.ceil((int(num_frames) - 1) / 4) + 1


def pad_frames(x: np.ndarray, n: int) -> np.ndarray:
    """Repeat the last entry of axis 0 until it has n entries."""
    if x.shape[0] >= n:
        return x[:n]
    return np.concatenate([x, np.repeat(x[-1:], n - x.shape[0], axis=0)], axis=0)


def prior_warp(
    frames: np.ndarray,
    source_tracks: Tracks,
    target_tracks: Tracks,
    source_camera: Camera,
    target_camera: Camera,
    fit: GridFit,
    source_depth=None,
) -> tuple[np.ndarray, np.ndarray]:
    """The warp prior of `warp_prior` models: `geometry.warp` of fitted frames (n, h, w, 3) uint8 with every
    track (the first n frames of `source_tracks`, `target_tracks` and its ids), cameras already fitted (n
    frames), and the source depth (F >= n, H, W) of the input frames when given. Returns (n, h, w, 3) uint8
    frames and their (n, h, w, 3) uint8 coverage clip (`geometry.warp.coverage_video`)."""
    from trackedit_jax.geometry.warp import coverage_video, warp_video

    n = frames.shape[0]
    depth = None
    if source_depth is not None:
        depth = np.asarray(source_depth, np.float32)
        if depth.ndim != 3 or depth.shape[0] < n:
            raise ValueError(f"source_depth must be (F, H, W) with F >= {n} frames; got {depth.shape}")
        if depth.shape[1:] != tuple(fit.in_size):
            raise ValueError(f"source_depth must have the video's frame size {fit.in_size}; got {depth.shape[1:]}")
        depth = fit_depth(depth[:n], fit)

    def cut(t: Tracks) -> Tracks:
        return Tracks(np.asarray(t.xyz)[:n], np.asarray(t.visibility)[:n], t.ids)

    warp, coverage, displacement = warp_video(
        frames,
        cut(source_tracks),
        source_camera,
        cut(target_tracks),
        target_camera,
        source_depth=depth,
        return_coverage=True,
        return_displacement=True,
    )
    return warp, coverage_video(coverage, displacement)


# ------------------------------------------------------------------------------------------------ inputs


@dataclasses.dataclass
class EditInputs:
    """Inputs on the model grid.

    video: (F_pad, h, w, 3) uint8, F_pad = 4k+1 (the last frame repeated past `num_frames`).
    source_tracks / target_tracks: paired `Tracks` with F_pad frames and the same N points.
    source_camera / target_camera: cameras mapped onto the model grid (image_size (h, w)).
    num_frames: frames used from the input (the output's frame count).
    fit: the resize / crop applied; point_indices: target points kept (None = all).
    warp: (F_pad, h, w, 3) uint8, the source moved into the target view by `geometry.warp` with all the
      given tracks (the prior of `warp_prior` models), else None.
    warp_coverage: (F_pad, h, w, 3) uint8 coverage clip of `warp` (`geometry.warp.coverage_video`), else None.
    """

    video: np.ndarray
    source_tracks: Tracks
    source_camera: Camera
    target_tracks: Tracks
    target_camera: Camera
    num_frames: int
    fit: GridFit
    point_indices: np.ndarray | None = None
    warp: np.ndarray | None = None
    warp_coverage: np.ndarray | None = None

    def prior_clips(self, coverage: bool) -> list[np.ndarray]:
        """The clips a `warp_prior` model's prior stacks: [warp] or, with `coverage`, [warp, warp_coverage]."""
        if self.warp is None:
            raise ValueError("this model takes the warp prior: prepare the inputs with `prepare`")
        if coverage and self.warp_coverage is None:
            raise ValueError("this model reads the warp's coverage: prepare the inputs with `prepare`")
        return [self.warp, self.warp_coverage] if coverage else [self.warp]

    def trimmed(self) -> EditInputs:
        """The same inputs without the padding frames (num_frames frames)."""
        n = self.num_frames
        cut_t = lambda t: Tracks(np.asarray(t.xyz)[:n], np.asarray(t.visibility)[:n], t.ids)  # noqa: E731
        cut_c = lambda c: Camera(np.asarray(c.intrinsics)[:n], np.asarray(c.extrinsics)[:n], c.image_size)  # noqa: E731
        return dataclasses.replace(
            self,
            video=self.video[:n],
            warp=None if self.warp is None else self.warp[:n],
            warp_coverage=None if self.warp_coverage is None else self.warp_coverage[:n],
            source_tracks=cut_t(self.source_tracks),
            source_camera=cut_c(self.source_camera),
            target_tracks=cut_t(self.target_tracks),
            target_camera=cut_c(self.target_camera),
        )


@dataclasses.dataclass
class EditOutput:
    """video: (num_frames, h, w, 3) uint8 on the model grid; latents: (1, f, h/8, w/8, C) the sampled
    normalised latents; inputs: what the model saw (padded); settings: every sampling setting; timings:
    seconds per stage."""

    video: np.ndarray
    latents: Any
    inputs: EditInputs
    settings: dict
    timings: dict

    def side_by_side(self) -> np.ndarray:
        """(num_frames, h, 4w + gaps, 3) uint8: source | source tracks over the source | target tracks over
        the result | result, track colours by depth on one disparity scale shared by both sides (panel
        labels from 96 px high: smaller grids would be covered by them)."""
        from trackedit_jax.geometry.projection import project
        from trackedit_jax.viz import disparity_limits, draw_tracks, side_by_side

        inp = self.inputs.trimmed()
        depths, valids = [], []
        for tr, cam in ((inp.source_tracks, inp.source_camera), (inp.target_tracks, inp.target_camera)):
            cam64 = Camera(
                np.asarray(cam.intrinsics, np.float64), np.asarray(cam.extrinsics, np.float64), cam.image_size
            )
            _, z = project(np.asarray(tr.xyz, np.float64), cam64)
            depths.append(z)
            valids.append(z > 1e-3)
        limits = disparity_limits(depths, valids)
        src = draw_tracks(inp.video, inp.source_tracks, inp.source_camera, limits=limits)
        tgt = draw_tracks(self.video, inp.target_tracks, inp.target_camera, limits=limits)
        labels = ["source", "source tracks", "target tracks", "result"] if inp.video.shape[1] >= 96 else None
        return side_by_side([inp.video, src, tgt, self.video], labels=labels)


def as_uint8_video(video) -> np.ndarray:
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 1:
        raise ValueError(f"video must be (F, H, W, 3) frames; got shape {v.shape}")
    if v.dtype == np.uint8:
        return v
    if np.issubdtype(v.dtype, np.floating):
        if not np.isfinite(v).all() or v.min() < 0.0 or v.max() > 1.0:
            raise ValueError("a float video must hold finite values in [0, 1]; pass uint8 frames otherwise")
        return np.clip(np.round(v * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"video must be uint8 (or float in [0, 1]); got dtype {v.dtype}")


def as_tracks(t, name: str) -> Tracks:
    if isinstance(t, Tracks):
        return t
    xyz = np.asarray(t, np.float32)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name} must be Tracks or an (F, N, 3) array; got shape {xyz.shape}")
    return Tracks(xyz, np.ones(xyz.shape[:2], bool))
