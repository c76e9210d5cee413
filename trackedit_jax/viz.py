"""Pictures of tracks and cameras: tracks drawn over videos coloured by depth, side-by-side panels,
and a 3D plot of camera paths. Host-side numpy + OpenCV + matplotlib; frames are (F, H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from trackedit_jax.geometry.projection import camera_centers, in_image, project
from trackedit_jax.geometry.types import Camera, Tracks

_SUBPIXEL_BITS = 4  # cv2 drawing with 1/16-pixel centres


def disparity_limits(
    depths: Sequence[np.ndarray], valids: Sequence[np.ndarray], percentiles=(2.0, 98.0)
) -> tuple[float, float]:
    """(lo, hi) percentiles of the disparity 1/depth over the valid entries of several arrays (numpy
    twin of `geometry.disparity_range`, so colours match what the model sees)."""
    d = np.concatenate([1.0 / np.asarray(z, np.float64)[np.asarray(v, bool)] for z, v in zip(depths, valids)])
    if d.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(d, percentiles)
    return float(lo), float(hi)


def depth_colors(depth, valid, *, limits: tuple[float, float] | None = None, cmap: str = "turbo") -> np.ndarray:
    """(F, N) camera depths -> (F, N, 3) uint8 RGB colours: near red ... far blue (turbo over [0.1, 0.9]
    of the normalised disparity). limits: shared (lo, hi) disparity range (default from these depths)."""
    import matplotlib

    depth = np.asarray(depth, np.float64)
    valid = np.asarray(valid, bool)
    lo, hi = disparity_limits([depth], [valid]) if limits is None else limits
    d = 1.0 / np.where(valid, depth, 1.0)
    z = np.clip((d - lo) / (hi - lo), 0.0, 1.0) if hi - lo > 1e-6 * abs(hi) else np.full_like(d, 0.5)
    rgb = matplotlib.colormaps[cmap](0.1 + 0.8 * z)[..., :3]  # skip turbo's near-black ends
    return np.round(rgb * 255).astype(np.uint8)


def _scaled_uv(uv: np.ndarray, image_size: tuple[int, int], frame_size: tuple[int, int]) -> np.ndarray:
    """Pixels on the camera's grid -> pixels on a frame grid of another size (pixel centres aligned)."""
    H, W = image_size
    h, w = frame_size
    if (H, W) == (h, w):
        return uv
    return (uv + 0.5) * np.array([w / W, h / H]) - 0.5


def draw_tracks(
    frames: np.ndarray | None,
    tracks: Tracks,
    camera: Camera,
    *,
    colors: np.ndarray | None = None,
    limits: tuple[float, float] | None = None,
    radius: float | None = None,
    trail: int = 0,
    near: float = 1e-3,
) -> np.ndarray:
    """Draw the projected tracks over video frames.

    Args:
      frames: (F, h, w, 3) uint8, or None for black frames of the camera's image size. Frames of another
        size than `camera.image_size` get the projections rescaled to their grid.
      tracks, camera: F frames each.
      colors: (F, N, 3) or (N, 3) uint8; default `depth_colors` (with the disparity `limits`).
      radius: dot radius in pixels (default ~ 0.6% of the frame diagonal, at least 2).
      trail: also draw each point's path over the previous `trail` frames.
    Returns:
      (F, h, w, 3) uint8: visible points as filled dots, occluded ones as rings; points behind the
      camera or outside the frame are not drawn.
    """
    xyz = np.asarray(tracks.xyz, np.float64)
    F, N = xyz.shape[:2]
    if camera.num_frames != F:
        raise ValueError(f"tracks have F={F} frames but the camera has F={camera.num_frames}")
    if frames is None:
        frames = np.zeros((F,) + tuple(camera.image_size) + (3,), np.uint8)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3); got {frames.shape}")
    if frames.shape[0] != F:
        raise ValueError(f"the video has F={frames.shape[0]} frames but the tracks have F={F}")
    import cv2

    cam = Camera(
        np.asarray(camera.intrinsics, np.float64), np.asarray(camera.extrinsics, np.float64), camera.image_size
    )
    uv, depth = project(xyz, cam)
    h, w = frames.shape[1:3]
    uv = _scaled_uv(uv, camera.image_size, (h, w))
    show = (depth > near) & in_image(uv, (h, w))
    if colors is None:
        colors = depth_colors(depth, depth > near, limits=limits)
    colors = np.broadcast_to(np.asarray(colors, np.uint8), (F, N, 3))
    vis = np.asarray(tracks.visibility, bool)
    r = max(2.0, 0.006 * float(np.hypot(h, w))) if radius is None else float(radius)
    s = 1 << _SUBPIXEL_BITS
    out = np.ascontiguousarray(frames.copy())
    fixed = np.round(np.where(np.isfinite(uv), uv, -1e6).clip(-1e6, 1e6) * s).astype(np.int64)
    for f in range(F):
        img = out[f]
        if trail > 0:
            for n in np.flatnonzero(show[f]):
                f0 = max(0, f - trail)
                seg = [k for k in range(f0, f + 1) if show[k, n]]
                if len(seg) > 1:
                    pts = fixed[seg, n].reshape(-1, 1, 2).astype(np.int32)
                    cv2.polylines(
                        img, [pts], False, tuple(int(c) for c in colors[f, n]), 1, cv2.LINE_AA, _SUBPIXEL_BITS
                    )
        for n in np.flatnonzero(show[f]):
            c = tuple(int(v) for v in colors[f, n])
            thick = -1 if vis[f, n] else max(1, int(round(r / 3)))
            cv2.circle(
                img,
                (int(fixed[f, n, 0]), int(fixed[f, n, 1])),
                int(round(r * s)),
                c,
                thick,
                cv2.LINE_AA,
                _SUBPIXEL_BITS,
            )
    return out


def _put_label(img: np.ndarray, text: str) -> None:
    import cv2

    scale = max(0.4, img.shape[0] / 500)
    th = max(1, int(round(scale * 2)))
    org = (int(6 * scale) + 2, int(22 * scale) + 2)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), th, cv2.LINE_AA)


def side_by_side(
    panels: Sequence[np.ndarray],
    *,
    labels: Sequence[str] | None = None,
    gap: int = 4,
) -> np.ndarray:
    """Join videos (each (F, H_i, W_i, 3) uint8, same F) left to right, with a black `gap` and optional
    labels in the top-left corners. Panels are resized to the first panel's height (aspect kept)."""
    import cv2

    panels = [np.asarray(p) for p in panels]
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    F, H = panels[0].shape[0], panels[0].shape[1]
    out = []
    for i, p in enumerate(panels):
        if p.ndim != 4 or p.shape[-1] != 3:
            raise ValueError(f"panel {i} must be (F, H, W, 3); got {p.shape}")
        if p.shape[0] != F:
            raise ValueError(f"panel {i} has {p.shape[0]} frames; panel 0 has {F}")
        if p.dtype != np.uint8:
            p = np.clip(np.round(p.astype(np.float32) * 255), 0, 255).astype(np.uint8)
        if p.shape[1] != H:
            Wn = max(1, int(round(p.shape[2] * H / p.shape[1])))
            p = np.stack([cv2.resize(fr, (Wn, H), interpolation=cv2.INTER_AREA) for fr in p])
        p = np.ascontiguousarray(p.copy())
        if labels is not None and i < len(labels) and labels[i]:
            for fr in p:
                _put_label(fr, labels[i])
        if i and gap:
            out.append(np.zeros((F, H, gap, 3), np.uint8))
        out.append(p)
    return np.concatenate(out, axis=2)


_PATH_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange")


def plot_camera_paths(
    cameras: Mapping[str, Camera],
    *,
    points: np.ndarray | None = None,
    size: tuple[float, float] = (6.4, 5.6),
    dpi: int = 100,
    arrows: int = 8,
) -> np.ndarray:
    """Render camera paths in 3D (matplotlib) and return the picture as (H, W, 3) uint8.

    Each path is a line through the camera centres with its first frame marked and `arrows` viewing
    directions along it; `points` (M, 3) (e.g. tracks at frame 0) are drawn as a grey cloud. World
    OpenCV axes are shown as x, z (depth) and -y (up).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size, dpi=dpi)
    try:
        ax = fig.add_subplot(projection="3d")

        def disp(p):  # OpenCV world (x right, y down, z forward) -> plot (x, z, -y)
            p = np.asarray(p, np.float64).reshape(-1, 3)
            return p[:, 0], p[:, 2], -p[:, 1]

        allp = []
        if points is not None and len(points):
            pts = np.asarray(points, np.float64).reshape(-1, 3)
            pts = pts[np.isfinite(pts).all(axis=1)]
            if len(pts) > 3000:
                pts = pts[np.random.default_rng(0).choice(len(pts), 3000, replace=False)]
            ax.scatter(*disp(pts), s=1, c="0.6", alpha=0.5, depthshade=False)
            allp.append(pts)
        for i, (name, cam) in enumerate(cameras.items()):
            c64 = Camera(np.asarray(cam.intrinsics, np.float64), np.asarray(cam.extrinsics, np.float64), cam.image_size)
            cen = camera_centers(c64)
            col = _PATH_COLORS[i % len(_PATH_COLORS)]
            ax.plot(*disp(cen), color=col, lw=2, label=name)
            ax.scatter(*disp(cen[:1]), color=col, s=30, marker="o")
            fwd = np.asarray(cam.extrinsics, np.float64)[:, 2, :3]  # camera z axis in world = R row 2
            allp.append(cen)
            span = np.ptp(np.concatenate(allp), axis=0).max() if len(allp) else 1.0
            for f in np.unique(np.linspace(0, len(cen) - 1, max(arrows, 2)).round().astype(int)):
                x, y, z = disp(cen[f])
                u, v, w = disp(fwd[f])
                ax.quiver(x, y, z, u, v, w, length=0.08 * max(span, 1e-6), color=col, normalize=True)
        allc = np.concatenate(allp) if allp else np.zeros((1, 3))
        lo, hi = allc.min(0), allc.max(0)
        mid, half = (lo + hi) / 2, max((hi - lo).max() / 2, 1e-6)
        x, y, z = disp(mid)
        ax.set_xlim(x[0] - half, x[0] + half)
        ax.set_ylim(y[0] - half, y[0] + half)
        ax.set_zlim(z[0] - half, z[0] + half)
        ax.set_xlabel("x")
        ax.set_ylabel("z (forward)")
        ax.set_zlabel("-y (up)")
        ax.legend(loc="upper left")
        ax.set_title("camera paths (dot = first frame, arrows = viewing direction)")
        fig.canvas.draw()
        img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)
    return img


def save_image(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
    """Write an (H, W, 3) uint8 RGB image (png/jpg by suffix) atomically."""
    import cv2

    from trackedit_jax.media import readable_by_all

    path = pathlib.Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(np.asarray(image)[..., ::-1]))
    if not ok:
        raise ValueError(f"cannot encode an image as {path.suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        readable_by_all(tmp)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path
