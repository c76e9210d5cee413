"""`trackedit edit`: edit a video's motion with its tracks and target tracks (or an edit spec).

Writes OUT (the edited video), OUT_side_by_side.<ext> (source | source tracks | target tracks over the
result | result) and OUT.json (every setting, versions, timings). All three are written to a temporary
folder beside OUT and moved into place at the end: an error leaves no output file behind.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

HELP = "edit a video: source tracks + target tracks (or an edit spec) + a model -> edited video, side-by-side, JSON"
# made absolute by cli.main
PATH_ARGS = ("video", "tracks", "target_tracks", "edit", "checkpoint", "out", "prompt_embedding")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", required=True, help="source video (mp4, mov, ...)")
    parser.add_argument("--tracks", required=True, help="source track file (.npz, TAPIP3D / SpatialTrackerV2 layout)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-tracks", help="target track file (.npz), e.g. from `trackedit edit-tracks`")
    target.add_argument("--edit", help="edit spec (.yaml/.json) applied to the source tracks")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="inference directory written by `trackedit export` (default: the built-in model)",
    )
    parser.add_argument("--out", required=True, help="output video (.mp4/.mov/.mkv/.webm/.gif)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=5.0, help="text CFG scale (used with a prompt; default 5)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--prompt", default="", help="text prompt (needs a text encoder in the checkpoint)")
    parser.add_argument(
        "--prompt-embedding",
        default=None,
        help="precomputed prompt embedding: a .safetensors of `trackedit encode-text` (or .npy (L, D))",
    )
    parser.add_argument("--prompt-index", type=int, default=0, help="which row of --prompt-embedding (default 0)")
    parser.add_argument("--solver", choices=("unipc", "euler"), default="unipc")
    parser.add_argument("--shift", type=float, default=None, help="timestep shift (default: the checkpoint's)")
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help="use the first N frames (default: the model's training clip length)",
    )
    parser.add_argument(
        "--resize",
        choices=("crop", "stretch"),
        default="crop",
        help="onto the model grid: keep aspect + centre crop (default) or stretch",
    )
    parser.add_argument("--max-tracks", type=int, default=None, help="at most N tracks (default: the model's)")
    parser.add_argument(
        "--output-size",
        choices=("model", "input"),
        default="model",
        help="the edited video on the model grid (default) or resized back to the input's scale",
    )
    parser.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's)")
    parser.add_argument(
        "--mesh",
        default=None,
        help="shard the model over devices, e.g. fsdp=8 (parameters split) or fsdp=4,context=2 (also the "
        "paired sequence); axes data, fsdp, context, tensor; default: one device",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _versions() -> dict:
    import platform

    import flax
    import jax
    import numpy as np

    from trackedit_jax import __version__

    return {
        "trackedit_jax": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()][:8],
    }


def _load_prompt_embedding(path: str, index: int):
    import numpy as np

    from trackedit_jax.geometry.io import read_npy

    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--prompt-embedding not found: {p}")
    if p.suffix == ".npy":
        emb = read_npy(p)  # no pickle, no allocation beyond what the file holds
        return emb[index] if emb.ndim == 3 else emb
    from trackedit_jax.convert.checkpoint_files import open_checkpoint

    with open_checkpoint(p) as reader:
        if "embeddings" not in reader.keys():
            raise ValueError(f"{p}: no 'embeddings' tensor (write it with `trackedit encode-text`)")
        emb = np.asarray(reader.get("embeddings"), np.float32)
    if emb.ndim == 2:
        return emb
    if not 0 <= index < emb.shape[0]:
        raise ValueError(f"--prompt-index {index} out of range: {p} holds {emb.shape[0]} embeddings")
    return emb[index]


def _mesh(spec: str | None):
    """The `--mesh` over the first devices it needs (None: no mesh, one device)."""
    if spec is None:
        return None
    import math

    import jax

    from trackedit_jax.parallel.mesh import make_mesh, parse_mesh_spec

    sizes = parse_mesh_spec(spec)
    available = jax.device_count()
    need = available if -1 in sizes.values() else math.prod(sizes.values())
    if need > available:
        raise ValueError(f"--mesh {spec} needs {need} devices; {available} are available")
    return make_mesh(sizes, devices=jax.devices()[:need])


def _edit(args) -> int:

    from trackedit_jax.geometry.io import load_track_file
    from trackedit_jax.geometry.validation import check_frame_counts, validate_inputs
    from trackedit_jax.infer.pretrained import publish_permissions, read_pretrained_config
    from trackedit_jax.media import VIDEO_SUFFIXES, read_video, resize_video, write_video

    t_start = time.perf_counter()
    timings = {}
    out = pathlib.Path(args.out)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--out must be a video file ({', '.join(VIDEO_SUFFIXES)}); got {out}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1; got {args.steps}")
    if args.prompt and args.prompt_embedding:
        raise ValueError("give --prompt or --prompt-embedding, not both")
    for p, name in ((args.video, "--video"), (args.tracks, "--tracks"), (args.target_tracks, "--target-tracks")):
        if p is not None and pathlib.Path(p).resolve() == out.resolve():
            raise ValueError(f"--out would overwrite {name}")

    mesh = _mesh(args.mesh)
    # cheap checks first: the checkpoint, then every input file, before the model is loaded
    from trackedit_jax.infer.builtin import resolve_checkpoint

    args.checkpoint = str(resolve_checkpoint(args.checkpoint))
    pre_config = read_pretrained_config(args.checkpoint)
    if args.prompt and not (pathlib.Path(args.checkpoint) / "text_encoder").is_dir():
        raise ValueError(
            f"--prompt needs a text encoder, and {args.checkpoint} has none: pass --prompt-embedding "
            "(from `trackedit encode-text`) or export with --text-encoder and --tokenizer"
        )
    video, fps = read_video(args.video)
    src = load_track_file(args.tracks)
    validate_inputs(src.tracks, src.camera, name=f"{args.tracks}")
    check_frame_counts(video=video.shape[0], tracks=src.tracks.num_frames)
    if args.target_tracks:
        tgt = load_track_file(args.target_tracks)
        validate_inputs(tgt.tracks, tgt.camera, name=f"{args.target_tracks}")
        check_frame_counts(video=video.shape[0], target_tracks=tgt.tracks.num_frames)
        tgt_tracks, tgt_camera, edit_log = tgt.tracks, tgt.camera, []
    else:
        from trackedit_jax.geometry.edit_spec import apply_edit_spec, load_edit_spec

        result = apply_edit_spec(load_edit_spec(args.edit), src.tracks, src.camera)
        tgt_tracks, tgt_camera, edit_log = result.tracks, result.camera, list(result.log)
    prompt_embedding = None
    if args.prompt_embedding:
        prompt_embedding = _load_prompt_embedding(args.prompt_embedding, args.prompt_index)
    timings["read_inputs"] = time.perf_counter() - t_start

    from trackedit_jax.infer.pipeline import EditPipeline

    t0 = time.perf_counter()
    pipe = EditPipeline.from_pretrained(args.checkpoint, mesh=mesh)
    timings["load_model"] = time.perf_counter() - t0
    result = pipe.edit(
        video,
        src.tracks,
        src.camera,
        tgt_tracks,
        tgt_camera,
        args.prompt,
        prompt_embedding=prompt_embedding,
        num_steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        solver=args.solver,
        shift=args.shift,
        max_frames=args.max_frames,
        resize=args.resize,
        max_tracks=args.max_tracks,
        # the track file's depth maps (used by warp-prior models) when they match the video's frames;
        # trackers often store them at their own working resolution, and the tracks then give the depth
        source_depth=src.depths if src.depths is not None and src.depths.shape[1:] == video.shape[1:3] else None,
        progress=not args.quiet,
    )
    timings.update(result.timings)

    t0 = time.perf_counter()
    edited = result.video
    if args.output_size == "input":
        edited = resize_video(edited, result.inputs.fit.window_in_input)
    panels = result.side_by_side()
    out_fps = float(args.fps) if args.fps else (fps if fps > 0 else 16.0)
    sbs_path = out.with_name(f"{out.stem}_side_by_side{out.suffix}")
    json_path = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.stem}.tmp-", dir=out.parent))
    try:
        write_video(tmp / out.name, edited, out_fps)
        write_video(tmp / sbs_path.name, panels, out_fps)
        timings["write_videos"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        sidecar = {
            "command": "trackedit edit",
            "argv": sys.argv[1:],
            "inputs": {
                "video": str(pathlib.Path(args.video).absolute()),
                "video_shape": list(video.shape),
                "fps": fps,
                "tracks": str(pathlib.Path(args.tracks).absolute()),
                "target_tracks": str(pathlib.Path(args.target_tracks).absolute()) if args.target_tracks else None,
                "edit": str(pathlib.Path(args.edit).absolute()) if args.edit else None,
                "edit_log": edit_log,
                "num_source_tracks": src.tracks.num_points,
                "num_target_tracks": tgt_tracks.num_points,
                "prompt_embedding": (
                    str(pathlib.Path(args.prompt_embedding).absolute()) if args.prompt_embedding else None
                ),
            },
            "checkpoint": {
                "path": str(pathlib.Path(args.checkpoint).absolute()),
                "source": pre_config.source,
                "grid": [pre_config.num_frames, pre_config.height, pre_config.width],
            },
            "settings": {
                **result.settings,
                "output_size": args.output_size,
                "fps": out_fps,
                "mesh": None if mesh is None else dict(mesh.shape),
            },
            "outputs": {
                "video": str(out.absolute()),
                "video_shape": list(edited.shape),
                "side_by_side": str(sbs_path.absolute()),
                "side_by_side_shape": list(panels.shape),
            },
            "versions": _versions(),
            "timings_seconds": {k: round(float(v), 4) for k, v in timings.items()},
        }
        (tmp / json_path.name).write_text(json.dumps(sidecar, indent=2))
        publish_permissions(tmp)
        for name, final in ((out.name, out), (sbs_path.name, sbs_path), (json_path.name, json_path)):
            (tmp / name).replace(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"wrote {out} ({edited.shape[0]} frames, {edited.shape[2]}x{edited.shape[1]}), {sbs_path.name}, "
        f"{json_path.name} in {timings['total']:.1f} s (sampling {timings['sampling']:.1f} s)"
    )
    return 0


def run(args) -> int:
    from trackedit_jax.cli import UserError

    try:
        return _edit(args)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if args.debug:
            raise
        raise UserError(_one_line(e)) from e
