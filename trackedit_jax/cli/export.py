"""`trackedit export`: a training run's checkpoint -> the inference directory `trackedit edit` reads."""

from __future__ import annotations

import argparse
import math

HELP = "write a training run's trained model (LoRA merged, frozen base rebuilt) as an inference directory"
PATH_ARGS = ("workdir", "out", "text_encoder", "tokenizer", "wan_path", "vae_path")  # made absolute by cli.main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the run directory of `trackedit train`")
    parser.add_argument("--out", required=True, help="inference directory to create (written atomically)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--ema", action="store_true", help="export the EMA parameters (runs with train.ema_decay > 0)")
    parser.add_argument(
        "--text-encoder",
        default=None,
        help="bundle a UMT5 text encoder (transformers safetensors folder/file) for text prompts",
    )
    parser.add_argument("--tokenizer", default=None, help="its tokenizer (tokenizer.json, spiece.model or a folder)")
    parser.add_argument("--wan-path", default=None, help="override the run's init.wan_path (its frozen Wan base)")
    parser.add_argument("--vae-path", default=None, help="override the run's init.vae_path")
    parser.add_argument(
        "--sample-shift",
        type=float,
        default=None,
        help="the sampler's default timestep shift to record (default: the run's diffusion.sample_shift)",
    )
    parser.add_argument(
        "--sample-steps",
        type=int,
        default=None,
        help="the default number of sampling steps to record (default: the run's diffusion.sample_steps, else 50)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")


def run(args) -> int:
    from trackedit_jax.cli import UserError
    from trackedit_jax.infer.export import export_run

    if args.sample_shift is not None and not (math.isfinite(args.sample_shift) and args.sample_shift > 0):
        raise UserError(f"--sample-shift must be a positive number; got {args.sample_shift}")
    if args.sample_steps is not None and args.sample_steps < 1:
        raise UserError(f"--sample-steps must be >= 1; got {args.sample_steps}")
    if (args.text_encoder is None) != (args.tokenizer is None):
        raise UserError("--text-encoder and --tokenizer go together")
    try:
        out, trained = export_run(
            args.workdir,
            args.out,
            step=args.step,
            ema=args.ema,
            text_encoder=args.text_encoder,
            tokenizer=args.tokenizer,
            wan_path=args.wan_path,
            vae_path=args.vae_path,
            sample_shift=args.sample_shift,
            sample_steps=args.sample_steps,
            overwrite=args.overwrite,
        )
    except FileExistsError as e:
        raise UserError(str(e)) from e
    c = trained.config
    print(
        f"exported step {trained.step}{' (EMA)' if trained.ema else ''} of {args.workdir} to {out}: "
        f"Wan dim {c.model.wan.dim} x {c.model.wan.num_layers} layers ({c.lora.mode}"
        f"{', LoRA merged' if c.lora.mode == 'lora' else ''}), grid {c.data.num_frames} x {c.data.height} x "
        f"{c.data.width}{', with text encoder' if args.text_encoder else ''}"
    )
    return 0
