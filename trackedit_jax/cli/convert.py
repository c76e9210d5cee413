"""`trackedit convert --trust-pickle IN.pth OUT.safetensors`: PyTorch pickle checkpoint -> safetensors."""

from __future__ import annotations

import argparse

from trackedit_jax.cli import UserError

HELP = "convert a PyTorch .pth/.pt/.bin checkpoint (a pickle) to safetensors; needs --trust-pickle"
PATH_ARGS = ("input", "output")  # made absolute by cli.main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="the pickle checkpoint (.pth, .pt, .bin, .ckpt)")
    parser.add_argument("output", help="the safetensors file to write (NAME.safetensors)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="confirm you trust INPUT: unpickling can run arbitrary code hidden in the file",
    )
    parser.add_argument(
        "--max-shard-gb",
        type=float,
        default=0.0,
        help="split the output into shards of at most this many GB plus an index.json (default: one file)",
    )


def run(args: argparse.Namespace) -> int:
    from trackedit_jax.convert.pickle_to_safetensors import PICKLE_DANGER, convert_pickle_to_safetensors

    if not args.trust_pickle:
        raise UserError(
            f"not converting {args.input}: {PICKLE_DANGER}. If you trust where this file comes from, run again "
            "with --trust-pickle; trackedit itself never unpickles anything else."
        )
    if args.max_shard_gb < 0:
        raise UserError(f"--max-shard-gb must be >= 0; got {args.max_shard_gb}")
    report = convert_pickle_to_safetensors(
        args.input,
        args.output,
        trust_pickle=True,
        max_shard_bytes=int(args.max_shard_gb * 1024**3) or None,
    )
    loader = "torch weights_only loader" if report["restricted_loader"] else "FULL unpickling (weights_only failed)"
    print(f"wrote {report['tensors']} tensors ({report['bytes'] / 1e6:.1f} MB) via the {loader} to:")
    for f in report["files"]:
        print(f"  {f}")
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} non-tensor entries: {', '.join(report['skipped'][:8])}")
    return 0
