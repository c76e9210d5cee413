"""`trackedit ingest`: convert real tracker outputs / data sets into stage-2 pair shards."""

from __future__ import annotations

import argparse

HELP = "convert TAPIP3D/SpaTrackerV2, TAPVid-3D, Kubric or DyCheck inputs into training-pair shards"
PATH_ARGS = ("out", "inputs", "tracks_file")  # made absolute by cli.main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from data_pipeline.real import FORMATS

    parser.add_argument("--format", required=True, choices=FORMATS, help="input format")
    parser.add_argument("--out", required=True, help="new output directory")
    parser.add_argument("inputs", nargs="+", help="input files (.npz) or DyCheck scene folders")
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frame rate of the inputs (default: tapip3d/tapvid3d 10, kubric 12, dycheck extra.json)",
    )
    parser.add_argument("--frames", type=int, default=17, help="frames per window (4k+1)")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--gap-seconds", type=float, nargs=2, default=(1.0, 5.0), metavar=("MIN", "MAX"))
    parser.add_argument("--pairs-per-clip", type=int, default=4)
    parser.add_argument("--min-tracks", type=int, default=500)
    parser.add_argument("--max-tracks", type=int, default=1000)
    parser.add_argument("--min-shared-tracks", type=int, default=16)
    parser.add_argument("--stabilize", action="store_true", help="make static background tracks exactly static")
    parser.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="abort on the first bad input (default) or skip bad inputs and count them",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codec", choices=("jpeg", "png", "raw"), default="jpeg")
    parser.add_argument("--records-per-shard", type=int, default=64)
    parser.add_argument("--tracks-file", default=None, help="dycheck: the canonical track file for the scene")
    parser.add_argument("--num-kubric-tracks", type=int, default=2048, help="kubric: tracks lifted from depth")


def run(args) -> int:
    from data_pipeline.real import PairOptions, ingest

    opts = PairOptions(
        num_frames=args.frames,
        stride=args.stride,
        gap_seconds=tuple(args.gap_seconds),
        pairs_per_clip=args.pairs_per_clip,
        min_tracks=args.min_tracks,
        max_tracks=args.max_tracks,
        min_shared_tracks=args.min_shared_tracks,
        stabilize=args.stabilize,
        codec=args.codec,
        seed=args.seed,
    )
    kw = {}
    if args.format == "dycheck" and args.tracks_file:
        kw["tracks_path"] = args.tracks_file
    if args.format == "kubric":
        kw.update(num_tracks=args.num_kubric_tracks, seed=args.seed)
    m = ingest(
        args.format,
        args.inputs,
        args.out,
        options=opts,
        fps=args.fps,
        on_error=args.on_error,
        records_per_shard=args.records_per_shard,
        reader_kwargs=kw,
    )
    print(
        f"wrote {m['num_records']} pairs in {m['num_shards']} shards to {args.out}"
        + (f"; skipped {len(m['skipped_inputs'])} bad input(s)" if m["skipped_inputs"] else "")
    )
    return 0
