"""`run_demo`: the showcase edit on a held-out synthetic scene, with the model, both baselines and the
ground truth written as videos and scored."""

from __future__ import annotations

import pathlib

import numpy as np

from trackedit_jax.eval import harness

DEMO_FILES = ("source.mp4", "edited.mp4", "ground_truth.mp4", "warp.mp4", "side_by_side.mp4", "tracks.png", "strip.png")
UPSCALE = 4


def tracks_figure(pair) -> np.ndarray:
    """(2 H', 5 W', 3) uint8: source tracks over the source clip (top) and target tracks over the ground
    truth (bottom) at five frames, coloured by depth, upscaled."""
    from trackedit_jax.viz import draw_tracks

    frames = np.linspace(0, pair.source_video.shape[0] - 1, 5).round().astype(int)
    big = lambda v: harness.upscale(v, UPSCALE)  # noqa: E731
    top = draw_tracks(big(pair.source_video), pair.source_tracks, pair.source_camera, radius=2.5)
    bottom = draw_tracks(big(pair.target_video), pair.target_tracks, pair.target_camera, radius=2.5)
    row = lambda v: np.concatenate(list(v[frames]), axis=1)  # noqa: E731
    return np.concatenate([row(top), row(bottom)], axis=0)


def frame_strip(rows: dict, *, num_frames: int = 5) -> np.ndarray:
    """(len(rows) h', num_frames w', 3) uint8: `num_frames` evenly spaced frames of each video (one row
    each, labelled), upscaled."""
    from trackedit_jax.viz import side_by_side

    first = next(iter(rows.values()))
    frames = np.linspace(0, first.shape[0] - 1, num_frames).round().astype(int)
    out = []
    for label, video in rows.items():
        big = harness.upscale(video[frames], UPSCALE)
        out.append(side_by_side([f[None] for f in big], labels=[label] + [""] * (num_frames - 1), gap=2)[0])
    return np.concatenate(out, axis=0)


def run_demo(pipe, out_dir, *, steps: int | None = None, seed: int = 0) -> dict:
    """Build the showcase pair at the model's grid, edit it (`steps` sampling steps, default the model's),
    write `DEMO_FILES` into out_dir and return {method: {metric: value}} for model, copy and warp against
    the ground truth."""
    from data_pipeline.synthetic.generator import SyntheticConfig
    from data_pipeline.synthetic.showcase import showcase_pair
    from trackedit_jax.eval.pairs import from_synthetic
    from trackedit_jax.media import write_video
    from trackedit_jax.viz import save_image, side_by_side

    cfg = pipe.config
    config = SyntheticConfig(num_frames=cfg.num_frames, image_size=(cfg.height, cfg.width), with_depth=True)
    pair = from_synthetic(showcase_pair(config), config, key="showcase")
    out = pipe.edit(
        pair.source_video,
        pair.source_tracks,
        pair.source_camera,
        pair.target_tracks,
        pair.target_camera,
        num_steps=steps,
        seed=seed,
        progress=True,
        source_depth=pair.source_depth,
    )
    videos = {"model": out.video, "copy": pair.source_video, "warp": harness.warp_baseline(pair)}
    scores = harness.score(videos, pair)

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fps = 8.0
    for name, video in (
        ("source", pair.source_video),
        ("edited", out.video),
        ("ground_truth", pair.target_video),
        ("warp", videos["warp"]),
    ):
        write_video(out_dir / f"{name}.mp4", harness.upscale(video, UPSCALE), fps=fps)
    panels = [harness.upscale(v, UPSCALE) for v in (pair.source_video, pair.target_video, videos["warp"], out.video)]
    write_video(
        out_dir / "side_by_side.mp4", side_by_side(panels, labels=["source", "ground truth", "warp", "model"]), fps=fps
    )
    save_image(out_dir / "tracks.png", tracks_figure(pair))
    save_image(
        out_dir / "strip.png",
        frame_strip(
            {"source": pair.source_video, "ground truth": pair.target_video, "warp": videos["warp"], "model": out.video}
        ),
    )
    return scores
