"""The studio's library side: the scene being edited, and spec text in -> target projections + report out.

Everything the page shows comes from the functions `trackedit edit-tracks` uses: `parse_edit_spec`
(validation, the same one-line errors), `apply_edit_spec`, `edit_report` and `project`. The studio adds
one guard a file on the command line does not need, because the page sends text over HTTP: every file a
spec names (`path.file`, `mask`, `transfer.file`) must lie inside the folders the studio may read. The
spec reader's own bounds (size, expanded values, depth) hold for text as for files.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from trackedit_jax.geometry.edit_spec import EditSpec, EditSpecError, apply_edit_spec, parse_edit_spec
from trackedit_jax.geometry.io import load_track_file, save_tracks
from trackedit_jax.geometry.projection import project
from trackedit_jax.geometry.report import edit_report
from trackedit_jax.geometry.selection import rigid_groups
from trackedit_jax.geometry.spec_source import SpecSource, spec_data_from_text
from trackedit_jax.geometry.types import Camera, Tracks

SPEC_NAME = "edit.yaml"  # the name errors give the page's spec: the file the page downloads
PATH_KEYS = ("file", "mask")  # spec keys whose string values are file paths
NEAR = 1e-3  # in front of the camera (selections and the report use the same bound)
SAMPLE_SIZE = (128, 128)
SAMPLE_FRAMES = 17
SAMPLE_TRACKS = 512


class StudioError(ValueError):
    """A request the studio refuses; the message is one line."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (what the page shows and the command line prints)."""
    return " ".join(str(e).split()) or type(e).__name__


@dataclasses.dataclass
class Scene:
    """The source clip being edited.

    video: (F, H, W, 3) uint8; tracks: (F, N, 3) float32 world points; camera: F pinhole cameras whose
    image_size is the pixel grid the page draws on; folder: where relative spec paths resolve (the
    track file's folder); tracks_file: the file `trackedit edit-tracks --tracks` reads for this scene.
    """

    name: str
    video: np.ndarray
    tracks: Tracks
    camera: Camera
    fps: float
    tracks_file: pathlib.Path
    folder: pathlib.Path


def load_scene(video_path: str | os.PathLike | None, tracks_path: str | os.PathLike) -> Scene:
    """A user's clip: a track file (TAPIP3D / SpatialTrackerV2 layout) plus the video (or the file's own)."""
    from trackedit_jax.geometry.validation import check_frame_counts, validate_inputs

    tracks_path = pathlib.Path(tracks_path).absolute()
    src = load_track_file(tracks_path)
    validate_inputs(src.tracks, src.camera, name=str(tracks_path))
    fps = 16.0
    if video_path is not None:
        from trackedit_jax.media import read_video

        video, fps = read_video(video_path)
        fps = fps if fps > 0 else 16.0
    elif src.video is not None:
        video = src.video
    else:
        raise ValueError(f"{tracks_path} holds no video; pass --video")
    check_frame_counts(video=video.shape[0], tracks=src.tracks.num_frames)
    return Scene(tracks_path.stem, video, src.tracks, src.camera, float(fps), tracks_path, tracks_path.parent)


def sample_scene(folder: str | os.PathLike) -> Scene:
    """The bundled sample: the demo scene's source clip (two objects, a static camera; 17 frames of
    128 x 128, 512 tracks), written to `folder`/source.npz (video included) and read back from it, so
    the scene is exactly what `trackedit edit-tracks --tracks folder/source.npz` reads."""
    from data_pipeline.synthetic.generator import SyntheticConfig
    from data_pipeline.synthetic.showcase import showcase_pair

    folder = pathlib.Path(folder).absolute()
    config = SyntheticConfig(num_frames=SAMPLE_FRAMES, image_size=SAMPLE_SIZE, num_tracks=SAMPLE_TRACKS)
    pair = showcase_pair(config)
    tracks = Tracks(pair.source_xyz.astype(np.float32), np.asarray(pair.source_visibility, bool))
    camera = Camera(pair.source.intrinsics.astype(np.float32), pair.source.extrinsics().astype(np.float32), SAMPLE_SIZE)
    path = folder / "source.npz"
    save_tracks(path, tracks, camera, video=pair.source_render["rgb"])
    scene = load_scene(None, path)
    scene.name = "sample scene (the demo's source clip)"
    scene.fps = config.fps
    return scene


def _round(a: np.ndarray, digits: int) -> list:
    return np.round(np.asarray(a, np.float64), digits).tolist()


def _projection(tracks: Tracks, camera: Camera, limits) -> dict:
    """Pixels (F, N, 2), camera depth (F, N), in front (F, N) and depth colours (F, N) '#rrggbb'."""
    from trackedit_jax.viz import depth_colors

    cam = Camera(
        np.asarray(camera.intrinsics, np.float64), np.asarray(camera.extrinsics, np.float64), camera.image_size
    )
    uv, depth = project(np.asarray(tracks.xyz, np.float64), cam)
    front = depth > NEAR
    rgb = depth_colors(depth, front, limits=limits).astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return {
        "uv": _round(uv, 3),
        "depth": _round(depth, 5),
        "front": front.astype(np.int8).tolist(),
        "visible": np.asarray(tracks.visibility, bool).astype(np.int8).tolist(),
        "color": packed.tolist(),
    }


def depth_limits(scene: Scene) -> tuple[float, float]:
    """The disparity range of the source tracks: source and target colours share it."""
    from trackedit_jax.viz import disparity_limits

    _, depth = project(np.asarray(scene.tracks.xyz, np.float64), scene.camera)
    return disparity_limits([depth], [depth > NEAR])


def scene_json(scene: Scene) -> dict:
    """What the page needs to draw and edit the source: frames, size, cameras (intrinsics (F, 3, 3) and
    world-to-camera extrinsics (F, 4, 4)), the source projections and the automatic rigid groups (N,)
    (the labels `select: {group: k}` uses: `rigid_groups` with its defaults)."""
    F, N = scene.tracks.num_frames, scene.tracks.num_points
    H, W = scene.camera.image_size
    return {
        "name": scene.name,
        "frames": F,
        "height": H,
        "width": W,
        "fps": scene.fps,
        "num_points": N,
        "tracks_file": str(scene.tracks_file),
        "folder": str(scene.folder),
        "intrinsics": _round(scene.camera.intrinsics, 6),
        "extrinsics": _round(scene.camera.extrinsics, 8),
        "groups": rigid_groups(scene.tracks).tolist(),
        "source": _projection(scene.tracks, scene.camera, depth_limits(scene)),
    }


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise StudioError(f"{SPEC_NAME}: the spec must be YAML/JSON text; got {type(text).__name__}")
    return text


def _spec_paths(data, path=()):
    """(key path, value) of every file path in raw spec data."""
    if isinstance(data, dict):
        for k, v in data.items():
            if k in PATH_KEYS and isinstance(v, str):
                yield path + (k,), v
            else:
                yield from _spec_paths(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _spec_paths(v, path + (i,))


def check_spec_paths(data, where: SpecSource, base_dir: pathlib.Path, allowed: list[pathlib.Path]) -> None:
    """Every file path in the spec must name an existing file or folder inside an allowed folder (relative
    paths resolve from base_dir, as `apply_edit_spec` resolves them first); raises `EditSpecError`."""
    roots = [pathlib.Path(a).resolve() for a in allowed]
    for key_path, value in _spec_paths(data):
        p = pathlib.Path(value).expanduser()
        full = (p if p.is_absolute() else base_dir / p).resolve()
        if not any(full == r or r in full.parents for r in roots):
            raise where.error(
                key_path, f"{value} is outside the folders the studio may read ({', '.join(map(str, roots))})"
            )
        if not full.exists():
            raise where.error(key_path, f"file not found: {value} (looked in {full.parent})")


def parse_spec(scene: Scene, text, allowed: list[pathlib.Path]) -> tuple[EditSpec, object]:
    """Validate spec text as `trackedit edit-tracks` validates the file `edit.yaml` in the scene's folder;
    returns the `EditSpec` and the plain data. Raises `EditSpecError` / `StudioError` (one line)."""
    data, lines = spec_data_from_text(_check_text(text), SPEC_NAME)  # bounded: size, values, depth
    spec = parse_edit_spec(data, source=SPEC_NAME, lines=lines, base_dir=scene.folder)
    check_spec_paths(data, spec.where, scene.folder, allowed)
    return spec, data


def apply_spec(scene: Scene, spec: EditSpec):
    """`apply_edit_spec` on the scene; errors of the geometry (a bad frame, an empty selection) are raised as
    one-line `EditSpecError`s."""
    try:
        return apply_edit_spec(spec, scene.tracks, scene.camera)
    except EditSpecError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise EditSpecError(one_line(e)) from e


def preview(scene: Scene, text, allowed: list[pathlib.Path], limits=None) -> dict:
    """Spec text -> the target tracks as the page draws them: number of points, `ids` (N',) source point
    of each target point, the target projections (as `scene_json`'s source), the target cameras, the
    edit report (text and warnings), the apply log and the validated spec data."""
    spec, data = parse_spec(scene, text, allowed)
    result = apply_spec(scene, spec)
    report = edit_report(result.tracks, result.camera)
    n = result.tracks.num_points
    ids = np.arange(n) if result.tracks.ids is None else np.asarray(result.tracks.ids)
    return {
        "num_points": n,
        "ids": ids.astype(np.int64).tolist(),
        "target": _projection(result.tracks, result.camera, limits or depth_limits(scene)),
        "intrinsics": _round(result.camera.intrinsics, 6),
        "extrinsics": _round(result.camera.extrinsics, 8),
        "report": {"text": report.format(), "warnings": list(report.warnings)},
        "log": list(result.log),
        "spec": data,
    }


class ModelCache:
    """The edit model of `checkpoint`, loaded on first use and kept (jobs run one at a time)."""

    def __init__(self, checkpoint: str | os.PathLike | None):
        from trackedit_jax.infer.builtin import resolve_checkpoint

        self.checkpoint = resolve_checkpoint(None if checkpoint is None else str(checkpoint))
        self._pipe = None
        self._config = None

    @property
    def config(self):
        """The model's `PretrainedConfig` (config.json only: no weights are loaded)."""
        if self._config is None:
            from trackedit_jax.infer.pretrained import read_pretrained_config

            self._config = read_pretrained_config(self.checkpoint)
        return self._config

    def get(self):
        if self._pipe is None:
            from trackedit_jax.infer.pipeline import EditPipeline

            self._pipe = EditPipeline.from_pretrained(self.checkpoint)
        return self._pipe


def edit_work(scene: Scene, text, allowed: list[pathlib.Path], models: ModelCache, *, steps: int | None, seed: int):
    """Validate the job's spec now (a bad spec is refused before any job starts) and return the job's work:
    `work(job, tmp_dir)` writes edited.mp4 (the model grid), side_by_side.mp4 (source | source tracks |
    target tracks over the result | result), target.npz, edit.yaml and report.txt into tmp_dir and keeps
    the edited frames (F, h, w, 3) uint8 in job.result["video"]. steps None: the model's default."""
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 1000):
        raise StudioError(f"steps must be an integer in [1, 1000]; got {steps!r}")
    if steps is not None:
        try:  # what the model allows (a model trained only at pure noise samples in one step)
            models.config.check_steps(steps)
        except ValueError as e:
            raise StudioError(str(e)) from None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise StudioError(f"seed must be an integer; got {seed!r}")
    spec, _ = parse_spec(scene, text, allowed)

    def work(job, tmp: pathlib.Path) -> None:
        from trackedit_jax.infer.pretrained import publish_permissions
        from trackedit_jax.media import write_video

        job.progress("applying the spec")
        result = apply_spec(scene, spec)
        report = edit_report(result.tracks, result.camera)
        job.progress("loading the model")
        pipe = models.get()
        job.progress("encoding the source")
        out = pipe.edit(
            scene.video,
            scene.tracks,
            scene.camera,
            result.tracks,
            result.camera,
            num_steps=steps,
            seed=seed,
            progress=lambda done, total: job.progress("sampling", done, total),
        )
        job.progress("writing")
        write_video(tmp / "edited.mp4", out.video, scene.fps)
        write_video(tmp / "side_by_side.mp4", out.side_by_side(), scene.fps)
        save_tracks(tmp / "target.npz", result.tracks, result.camera)
        (tmp / "edit.yaml").write_text(text)
        (tmp / "report.txt").write_text(report.format() + "\n")
        publish_permissions(tmp)
        job.result["video"] = out.video
        job.check()

    return work
