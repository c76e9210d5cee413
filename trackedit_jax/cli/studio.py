"""`trackedit studio`: a local browser page to write edit specs with a live preview and run edits."""

from __future__ import annotations

import argparse

HELP = "serve a local page (127.0.0.1) to edit motion by looking: selections, paths, camera moves, live preview"
PATH_ARGS = ("video", "tracks", "checkpoint", "out", "allow")  # made absolute by cli.main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", help="source video (default: the video in --tracks, or the sample scene)")
    parser.add_argument("--tracks", help="source track file (.npz); without it the bundled sample scene opens")
    parser.add_argument(
        "--checkpoint", default=None, help="inference directory for the Run button (default: the built-in model)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (127.0.0.1 or ::1 only)")
    parser.add_argument("--out", default="studio_out", help="folder for edit results (default: studio_out)")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        help="a folder whose files (masks, camera paths) specs may name (repeatable; the scene folder is allowed)",
    )


def run(args) -> int:
    import pathlib
    import signal
    import sys

    from trackedit_jax.cli import UserError

    if args.video and not args.tracks:
        raise UserError("--video needs --tracks (the source track file of that video)")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535]; got {args.port}")
    from trackedit_jax.studio.server import check_loopback, make_server

    check_loopback(args.host)  # before any work
    from trackedit_jax.studio.api import load_scene, sample_scene

    out = pathlib.Path(args.out)
    if args.tracks:
        scene = load_scene(args.video, args.tracks)
    else:
        scene = sample_scene(out / "sample_scene")
    for folder in args.allow:
        if not pathlib.Path(folder).is_dir():
            raise UserError(f"--allow {folder}: not a folder")
    try:
        server = make_server(
            scene, host=args.host, port=args.port, out_dir=out, allowed=args.allow, checkpoint=args.checkpoint
        )
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from e

    def stop(signum, frame):
        raise KeyboardInterrupt

    # Both stop it cleanly. SIGINT is set too: a process started with SIGINT ignored (from a script, or a
    # test runner's worker) would otherwise inherit that and never see Ctrl-C.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"trackedit studio: {scene.name} ({scene.tracks.num_frames} frames, {scene.tracks.num_points} tracks)")
    print(f"open {server.url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("stopping: cancelling edits in progress", file=sys.stderr, flush=True)
    finally:
        server.close()
    print("stopped", flush=True)
    return 0
