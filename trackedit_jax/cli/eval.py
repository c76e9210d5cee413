"""`trackedit eval`: the edit model against the copy and warp baselines on held-out pairs."""

from __future__ import annotations

import argparse

HELP = "score the edit model and the copy/warp baselines on held-out pairs (metrics.json, report.md, plots, videos)"
PATH_ARGS = ("checkpoint", "data", "out")  # made absolute by cli.main

# Training uses train.seed (0) and train.seed + 10000 (validation); the published evaluation uses DEFAULT_EVAL_SEED.
DEFAULT_EVAL_SEED = 777


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="inference directory written by `trackedit export` (default: the built-in model)",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", default=None, help="pairs from ArrayRecord shards (a data directory or shard files)")
    src.add_argument(
        "--make-pairs",
        type=int,
        default=None,
        metavar="N",
        help="generate N held-out synthetic pairs at the model's grid (every edit family in turn)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_EVAL_SEED,
        help=f"data-set seed of --make-pairs (default {DEFAULT_EVAL_SEED}; never a training seed)",
    )
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--sample-seed", type=int, default=0, help="noise seed of the model's sampler")
    parser.add_argument("--solver", choices=("unipc", "euler"), default="unipc")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many pairs of --data")
    parser.add_argument("--videos", type=int, default=4, help="side-by-side videos to write")


def run(args) -> int:
    import itertools
    import pathlib

    from trackedit_jax.cli import UserError

    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1; got {args.steps}")
    if args.make_pairs is not None and args.make_pairs < 1:
        raise UserError(f"--make-pairs must be >= 1; got {args.make_pairs}")
    from trackedit_jax.eval.harness import evaluate
    from trackedit_jax.eval.pairs import record_pairs, synthetic_pairs
    from trackedit_jax.infer.builtin import resolve_checkpoint
    from trackedit_jax.infer.pipeline import EditPipeline
    from trackedit_jax.infer.pretrained import read_pretrained_config

    checkpoint = resolve_checkpoint(args.checkpoint)
    cfg = read_pretrained_config(checkpoint)
    if args.data:
        data = pathlib.Path(args.data).absolute()
        if not data.exists():
            raise FileNotFoundError(f"--data: {data} does not exist")
        pairs = record_pairs(data)
        total = None
        if args.limit:
            pairs, total = itertools.islice(pairs, args.limit), args.limit
        desc = str(data)
    else:
        pairs = synthetic_pairs(args.make_pairs, args.seed, num_frames=cfg.num_frames, size=(cfg.height, cfg.width))
        total, desc = args.make_pairs, f"{args.make_pairs} synthetic pairs, seed {args.seed}"
    pipe = EditPipeline.from_pretrained(checkpoint)
    result = evaluate(
        pipe,
        pairs,
        pathlib.Path(args.out).absolute(),
        num_pairs=total,
        steps=args.steps,
        seed=args.sample_seed,
        solver=args.solver,
        num_videos=args.videos,
        checkpoint=str(checkpoint),
        pairs_desc=desc,
    )
    from trackedit_jax.eval.harness import markdown_table

    print(markdown_table(result["methods"], f"{result['num_pairs']} pairs"))
    print(f"report: {pathlib.Path(args.out).absolute() / 'report.md'}")
    return 0
