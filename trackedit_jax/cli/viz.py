"""`trackedit viz`: tracks over the video coloured by depth (source | target side by side) or a PNG of
both camera paths in 3D."""

from __future__ import annotations

import argparse
import pathlib

HELP = "draw tracks over the video coloured by depth (source | target), or plot camera paths to a .png"
PATH_ARGS = ("tracks", "target", "video", "out")  # made absolute by cli.main

VIDEO_OUT = (".mp4", ".gif", ".webm", ".mov", ".mkv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracks", required=True, help="source track file (.npz)")
    parser.add_argument("--target", help="target track file (.npz) from `trackedit edit-tracks`")
    parser.add_argument("--video", help="source video (default: the track file's 'video', else black)")
    parser.add_argument("--out", required=True, help="OUT.mp4 (tracks over video) or OUT.png (camera paths in 3D)")
    parser.add_argument("--fps", type=float, default=None, help="output frame rate (default: the video's, else 10)")
    parser.add_argument("--radius", type=float, default=None, help="dot radius in pixels")
    parser.add_argument("--trail", type=int, default=0, help="draw each point's path over this many frames")
    parser.add_argument("--max-points", type=int, default=2000, help="draw at most this many points (random subset)")


def run(args) -> int:
    import numpy as np

    from trackedit_jax import viz
    from trackedit_jax.cli import UserError
    from trackedit_jax.geometry.io import load_track_file
    from trackedit_jax.geometry.validation import check_frame_counts, validate_inputs

    out = pathlib.Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in VIDEO_OUT + (".png",):
        raise UserError(f"--out must end in .png or one of {', '.join(VIDEO_OUT)}; got {out.name}")
    src = load_track_file(args.tracks)
    validate_inputs(src.tracks, src.camera, name=args.tracks)
    tgt = None
    if args.target:
        tgt = load_track_file(args.target)
        validate_inputs(tgt.tracks, tgt.camera, name=args.target)
        check_frame_counts(source_tracks=src.tracks.num_frames, target_tracks=tgt.tracks.num_frames)

    if suffix == ".png":
        cams = {"source": src.camera}
        if tgt is not None:
            cams["target"] = tgt.camera
        img = viz.plot_camera_paths(cams, points=np.asarray(src.tracks.xyz)[0])
        viz.save_image(out, img)
        print(f"wrote {out} (camera paths: {', '.join(cams)})")
        return 0

    from trackedit_jax.media import read_video, write_video

    fps = args.fps
    if args.video:
        video, vfps = read_video(args.video)
        fps = fps or vfps
    else:
        video = src.video
    fps = fps or 10.0
    check_frame_counts(tracks=src.tracks.num_frames, video=None if video is None else video.shape[0])

    rng = np.random.default_rng(0)

    def subset(tr):
        n = tr.num_points
        keep = np.sort(rng.choice(n, args.max_points, replace=False)) if n > args.max_points else np.arange(n)
        return tr.replace(
            xyz=np.asarray(tr.xyz)[:, keep],
            visibility=np.asarray(tr.visibility)[:, keep],
            ids=None if tr.ids is None else np.asarray(tr.ids)[keep],
        )

    s_tr = subset(src.tracks)
    from trackedit_jax.geometry.projection import project

    def depth_valid(tr, cam):
        _, d = project(
            np.asarray(tr.xyz, np.float64),
            cam.replace(
                intrinsics=np.asarray(cam.intrinsics, np.float64), extrinsics=np.asarray(cam.extrinsics, np.float64)
            ),
        )
        return d, d > 1e-3

    dv = [depth_valid(s_tr, src.camera)]
    t_tr = None
    if tgt is not None:
        t_tr = subset(tgt.tracks)
        dv.append(depth_valid(t_tr, tgt.camera))
    limits = viz.disparity_limits([d for d, _ in dv], [v for _, v in dv])  # one colour scale for both
    left = viz.draw_tracks(video, s_tr, src.camera, limits=limits, radius=args.radius, trail=args.trail)
    if t_tr is None:
        frames = left
    else:
        base = None if video is None else (np.asarray(video, np.float32) * 0.35).astype(np.uint8)
        right = viz.draw_tracks(base, t_tr, tgt.camera, limits=limits, radius=args.radius, trail=args.trail)
        frames = viz.side_by_side([left, right], labels=["source", "target"])
    write_video(out, frames, fps=fps)
    print(f"wrote {out} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]})")
    return 0
