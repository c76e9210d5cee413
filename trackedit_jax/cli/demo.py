"""`trackedit demo`: the built-in model on a held-out scene: camera arc + an object moved behind another."""

from __future__ import annotations

import argparse

HELP = "edit a held-out synthetic scene with the built-in model; write videos and print scores vs baselines"
PATH_ARGS = ("out", "checkpoint")  # made absolute by cli.main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="inference directory written by `trackedit export` (default: the built-in model)",
    )
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")


def run(args) -> int:
    import pathlib

    from trackedit_jax.cli import UserError

    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1; got {args.steps}")
    from trackedit_jax.eval.demo import DEMO_FILES, run_demo
    from trackedit_jax.infer.builtin import resolve_checkpoint
    from trackedit_jax.infer.pipeline import EditPipeline

    checkpoint = resolve_checkpoint(args.checkpoint)
    out = pathlib.Path(args.out).absolute()
    pipe = EditPipeline.from_pretrained(checkpoint)
    scores = run_demo(pipe, out, steps=args.steps, seed=args.seed)
    print(f"{'':8s} {'PSNR':>8s} {'edit-region PSNR':>17s} {'EPE (px)':>9s}")
    for method in ("model", "warp", "copy"):
        s = scores[method]
        print(f"{method:8s} {s['psnr']:8.2f} {s['edit_psnr']:17.2f} {s['epe']:9.2f}")
    print(f"wrote {', '.join(DEMO_FILES)} to {out}")
    return 0
