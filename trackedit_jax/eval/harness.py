"""The evaluation harness: the edit model and two baselines on held-out pairs, scored against ground truth.

Methods: `model` (the edit model, fixed seed), `copy` (the source clip unchanged), `warp` (source
pixels moved with the tracks' 3D motion, `geometry.warp`). Metrics (`eval.metrics`): psnr, ssim,
masked_psnr (co-visible pixels), edit_psnr (PSNR over the edit region), epe (Lucas-Kanade re-tracking of
the target's visible points). Outputs in the report folder:

  metrics.json     {"num_pairs", "methods": {m: {metric: mean}}, "by_family": {family: {m: {...}}},
                    "occlusion": {m: {...}}, "num_occlusion_pairs", "lk_floor_epe", "settings"}
  pairs.jsonl      every pair's metrics
  report.md        the tables
  *.png            bar plots per metric (overall and per family)
  videos/          side-by-side clips (source | ground truth | warp | model), upscaled
"""

from __future__ import annotations

import itertools
import json
import math
import pathlib
import time
from collections.abc import Iterable

import numpy as np

from trackedit_jax.eval import metrics as M
from trackedit_jax.eval.pairs import EvalPair
from trackedit_jax.geometry.projection import project
from trackedit_jax.geometry.warp import warp_video

METHODS = ("model", "copy", "warp")
METRICS = ("psnr", "ssim", "masked_psnr", "edit_psnr", "epe")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "masked_psnr": True, "edit_psnr": True, "epe": False}


def target_projections(pair: EvalPair) -> tuple[np.ndarray, np.ndarray]:
    """(uv (F, N, 2) pixels, visible (F, N) bool) of the target tracks in the target camera."""
    uv, _ = project(np.asarray(pair.target_tracks.xyz, np.float64), pair.target_camera)
    return uv, np.asarray(pair.target_tracks.visibility, bool)


def score(videos: dict, pair: EvalPair) -> dict:
    """{method: {metric: value}} for videos {method: (F, H, W, 3) uint8} against `pair`'s ground truth
    (NaN where undefined). The edit region and the target projections are computed once per pair."""
    gt = pair.target_video
    region = M.edit_region(pair.source_video, gt)
    uv, visible = target_projections(pair)
    return {
        method: {
            "psnr": M.psnr(video, gt),
            "ssim": M.ssim(video, gt),
            "masked_psnr": float("nan") if pair.covisible is None else M.masked_psnr(video, gt, pair.covisible),
            "edit_psnr": M.masked_psnr(video, gt, region),
            "epe": M.track_epe(video, uv, visible),
        }
        for method, video in videos.items()
    }


def warp_baseline(pair: EvalPair) -> np.ndarray:
    return warp_video(
        pair.source_video,
        pair.source_tracks,
        pair.source_camera,
        pair.target_tracks,
        pair.target_camera,
        source_depth=pair.source_depth,
    )


def check_grid(pair: EvalPair, grid: tuple[int, int, int]) -> None:
    """Raise ValueError (one line) when the pair's (frames, H, W) is not the model's grid."""
    have = tuple(int(s) for s in pair.source_video.shape[:3])
    if have != tuple(grid):
        raise ValueError(
            f"pair {pair.key} has (frames, H, W) = {have} but the model's grid is {tuple(grid)}: evaluate "
            f"on pairs made at the model's grid (--make-pairs does)"
        )


def _mean(values: list) -> float:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    return float(v.mean()) if v.size else float("nan")


def aggregate(rows: list[dict]) -> dict:
    """{method: {metric: mean over rows}} from per-pair rows {"scores": {method: {metric: value}}}."""
    return {m: {k: _mean([r["scores"][m][k] for r in rows]) for k in METRICS} for m in METHODS}


def _json_safe(x):
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def upscale(video: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(np.asarray(video), factor, axis=1), factor, axis=2)


def comparison_video(pair: EvalPair, warp: np.ndarray, model: np.ndarray, *, factor: int = 4) -> np.ndarray:
    """(F, factor H, 4 factor W + gaps, 3) uint8: source | ground truth | warp | model."""
    from trackedit_jax.viz import side_by_side

    panels = [upscale(v, factor) for v in (pair.source_video, pair.target_video, warp, model)]
    return side_by_side(panels, labels=["source", "ground truth", "warp", "model"])


def _fmt(v, metric: str) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.3f}" if metric == "ssim" else f"{v:.2f}"


def markdown_table(table: dict, title: str) -> str:
    lines = [f"| {title} | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for m in METHODS:
        if m in table:
            lines.append(f"| {m} | " + " | ".join(_fmt(table[m][k], k) for k in METRICS) + " |")
    return "\n".join(lines)


def write_report(result: dict, out_dir: pathlib.Path) -> None:
    """report.md and the bar plots from a metrics.json dict."""
    parts = [
        f"# Evaluation on {result['num_pairs']} pairs\n",
        "Higher is better except EPE (pixels). edit_psnr: PSNR over the pixels where the ground-truth target "
        "differs from the source; masked_psnr: over the surface both clips show.\n",
        markdown_table(result["methods"], "all pairs"),
        "",
    ]
    parts.append(
        f"Lucas-Kanade floor (EPE of re-tracking the ground-truth clip itself): "
        f"{_fmt(result['lk_floor_epe'], 'epe')} px\n"
    )
    parts.append("## By edit family\n")
    for fam, table in result["by_family"].items():
        parts += [markdown_table(table, f"{fam} ({result['family_counts'][fam]})"), ""]
    parts.append(f"## Occlusion-order changes ({result['num_occlusion_pairs']} pairs)\n")
    if result["num_occlusion_pairs"]:
        parts += [markdown_table(result["occlusion"], "occlusion"), ""]
    s = result["settings"]
    parts.append(
        f"Settings: {s['sampling_steps']} sampling steps ({s['solver']}), seed {s['seed']}, "
        f"checkpoint `{s['checkpoint']}`, pairs: {s['pairs']}. Time: {result['seconds']:.0f} s.\n"
    )
    (out_dir / "report.md").write_text("\n".join(parts))
    _plot(result, out_dir)


def _plot(result: dict, out_dir: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["all"] + list(result["by_family"])
    tables = [result["methods"]] + [result["by_family"][g] for g in groups[1:]]
    colors = {"model": "tab:red", "copy": "tab:gray", "warp": "tab:blue"}
    for metric in ("edit_psnr", "psnr", "epe"):
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups)), 3.2), dpi=120)
        x = np.arange(len(groups))
        for i, m in enumerate(METHODS):
            vals = [t[m][metric] for t in tables]
            ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=m, color=colors[m])
        ax.set_xticks(x, groups, rotation=20, fontsize=8)
        ax.set_ylabel(metric + (" (px, lower is better)" if metric == "epe" else " (dB)"))
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / f"{metric}.png")
        plt.close(fig)


def evaluate(
    pipe,
    pairs: Iterable[EvalPair],
    out_dir,
    *,
    num_pairs: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    solver: str = "unipc",
    num_videos: int = 4,
    checkpoint: str = "",
    pairs_desc: str = "",
    progress: bool = True,
) -> dict:
    """Run the model and the baselines on `pairs`, write the report folder, return the metrics.json dict.

    pipe: an `EditPipeline`; every pair must be on its grid (frames, height, width).
    steps: sampling steps (default: the model's `sample_steps`).
    """
    from tqdm.auto import tqdm

    from trackedit_jax.media import write_video

    out_dir = pathlib.Path(out_dir)
    cfg = pipe.config
    steps = cfg.check_steps(cfg.sample_steps if steps is None else int(steps))  # before anything is written
    grid = (cfg.num_frames, cfg.height, cfg.width)
    rows, lk_floor = [], []
    t_start = time.perf_counter()
    pairs = iter(pairs)
    first = next(pairs, None)
    if first is None:
        raise ValueError("no pairs to evaluate")
    check_grid(first, grid)  # before anything is written
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "pairs.jsonl.tmp"
    with open(log_path, "w") as log:
        for i, pair in enumerate(
            tqdm(itertools.chain([first], pairs), total=num_pairs, desc="eval pairs", disable=not progress)
        ):
            check_grid(pair, grid)
            out = pipe.edit(
                pair.source_video,
                pair.source_tracks,
                pair.source_camera,
                pair.target_tracks,
                pair.target_camera,
                num_steps=steps,
                seed=seed,
                solver=solver,
                source_depth=pair.source_depth,
            )
            videos = {"model": out.video, "copy": pair.source_video, "warp": warp_baseline(pair)}
            row = {
                "key": pair.key,
                "family": pair.family,
                "occlusion_change": pair.occlusion_change,
                "scores": score(videos, pair),
            }
            lk_floor.append(M.track_epe(pair.target_video, *target_projections(pair)))
            rows.append(row)
            log.write(json.dumps(_json_safe(row)) + "\n")
            if i < num_videos:
                write_video(
                    out_dir / "videos" / f"{i:03d}_{pair.family}.mp4",
                    comparison_video(pair, videos["warp"], videos["model"]),
                )
    log_path.replace(out_dir / "pairs.jsonl")
    families = sorted({r["family"] for r in rows})
    occl = [r for r in rows if r["occlusion_change"]]
    result = {
        "num_pairs": len(rows),
        "methods": aggregate(rows),
        "by_family": {f: aggregate([r for r in rows if r["family"] == f]) for f in families},
        "family_counts": {f: sum(r["family"] == f for r in rows) for f in families},
        "occlusion": aggregate(occl) if occl else {},
        "num_occlusion_pairs": len(occl),
        "lk_floor_epe": _mean(lk_floor),
        "seconds": time.perf_counter() - t_start,
        "settings": {
            "sampling_steps": int(steps),
            "solver": solver,
            "seed": int(seed),
            "checkpoint": checkpoint,
            "pairs": pairs_desc,
            "grid": list(grid),
        },
    }
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(_json_safe(result), indent=2))
    tmp.replace(out_dir / "metrics.json")
    write_report(result, out_dir)
    return result
