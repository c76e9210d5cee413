"""`trackedit make-data synthetic|verify`: generate synthetic training pairs into ArrayRecord shards."""

from __future__ import annotations

import argparse
import json

HELP = "generate synthetic training pairs (ArrayRecord shards) or verify a data set"
PATH_ARGS = ("out", "data_dir")  # made absolute by cli.main


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like HxW (e.g. 64x64); got {text!r}") from None
    if h < 2 or w < 2:
        raise argparse.ArgumentTypeError(f"--size must be at least 2x2; got {text!r}")
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    s = sub.add_parser("synthetic", help="procedural scenes rendered twice (source and edited target)")
    s.add_argument("--out", required=True, help="output directory (resumable: re-run the same command)")
    s.add_argument("--num-pairs", type=int, required=True)
    s.add_argument("--frames", type=int, default=17, help="frames per clip")
    s.add_argument("--size", type=_size, default=(64, 64), help="HxW, e.g. 64x64 or 384x672")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1, help="generator processes")
    s.add_argument("--records-per-shard", type=int, default=64)
    s.add_argument("--tracks", type=int, default=1024, help="tracks per pair (before duplication twins)")
    s.add_argument("--families", default="", help="comma-separated edit families (default: all)")
    s.add_argument("--codec", choices=("jpeg", "png", "raw"), default="jpeg")
    s.add_argument("--quality", type=int, default=95, help="JPEG quality")
    s.add_argument("--with-depth", action="store_true", help="store float16 depth maps")
    s.add_argument(
        "--with-warp", action="store_true", help="store the classical warp of each source clip (model.warp_prior)"
    )
    s.add_argument("--task-index", type=int, default=0, help="this task's index when several machines share --out")
    s.add_argument("--num-tasks", type=int, default=1)
    v = sub.add_parser("verify", help="check every shard's checksum and decode every record")
    v.add_argument("data_dir")


def run(args) -> int:
    if args.kind == "verify":
        from data_pipeline.shards import verify_dataset

        report = verify_dataset(args.data_dir)
        print(json.dumps({k: v for k, v in report.items()}, indent=1))
        return 0 if not (report["bad_shards"] or report["bad_records"]) else 1
    from data_pipeline.synthetic import ALL_FAMILIES, make_dataset

    families = tuple(f.strip() for f in args.families.split(",") if f.strip()) or ALL_FAMILIES
    if args.num_pairs < 1:
        raise ValueError(f"--num-pairs must be >= 1; got {args.num_pairs}")
    m = make_dataset(
        args.out,
        args.num_pairs,
        args.frames,
        args.size,
        args.seed,
        workers=args.workers,
        records_per_shard=args.records_per_shard,
        num_tracks=args.tracks,
        families=families,
        codec=args.codec,
        jpeg_quality=args.quality,
        with_depth=args.with_depth,
        with_warp=args.with_warp,
        task_index=args.task_index,
        num_tasks=args.num_tasks,
    )
    if m is None:
        print(f"task {args.task_index}/{args.num_tasks} done; other tasks still have shards to write in {args.out}")
    else:
        print(
            f"wrote {m['num_records']} pairs in {m['num_shards']} shards to {args.out} "
            f"(families: {m['edit_family_counts']})"
        )
    return 0
