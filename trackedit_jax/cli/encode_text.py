"""`trackedit encode-text`: prompts -> UMT5 embeddings in a safetensors file (for training data)."""

from __future__ import annotations

import argparse
import json
import pathlib

from trackedit_jax.cli import UserError

HELP = "encode prompts with the UMT5 text encoder and write the embeddings (+ lengths) to a .safetensors file"
PATH_ARGS = ("encoder", "tokenizer", "prompt_file", "out")  # made absolute by cli.main

DTYPES = ("float32", "bfloat16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--encoder",
        required=True,
        help="UMT5 encoder weights, transformers layout (a text_encoder/ folder or .safetensors)",
    )
    parser.add_argument(
        "--tokenizer",
        required=True,
        help="tokenizer.json (HF tokenizers), a sentencepiece .model, or a folder with one of them",
    )
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    parser.add_argument("--prompt-file", help="a text file with one prompt per line (blank lines ignored)")
    parser.add_argument("--out", required=True, help="output FILE.safetensors")
    parser.add_argument("--text-len", type=int, default=512, help="padded token length (Wan: 512)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="encoder and output dtype (use bfloat16 for umt5-xxl: ~11.4 GB instead of ~23 GB)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts encoded per step")


def run(args: argparse.Namespace) -> int:
    import jax.numpy as jnp
    import numpy as np

    from trackedit_jax.convert.checkpoint_files import write_safetensors
    from trackedit_jax.convert.umt5 import load_tokenizer, load_umt5_encoder
    from trackedit_jax.models.wan.umt5 import encode_prompts

    prompts = list(args.prompt)
    if args.prompt_file:
        path = pathlib.Path(args.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompt-file not found: {path}")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError("no prompts: pass --prompt TEXT (repeatable) or --prompt-file FILE")
    out = pathlib.Path(args.out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out must end in .safetensors; got {out}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1; got {args.batch_size}")
    tokenizer = load_tokenizer(args.tokenizer, text_len=args.text_len)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    encoder = load_umt5_encoder(args.encoder, dtype=dtype)
    if tokenizer.vocab_size > encoder.config.vocab_size:
        raise UserError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the encoder only {encoder.config.vocab_size} "
            "embeddings: they do not belong together"
        )
    embeddings, lengths = encode_prompts(encoder, tokenizer, prompts, batch_size=args.batch_size)
    meta = {
        "prompts": json.dumps(prompts, ensure_ascii=False),
        "text_len": str(args.text_len),
        "encoder": str(args.encoder),
        "layout": "embeddings (N, text_len, d_model), zero past lengths (N,)",
    }
    total = embeddings.nbytes + lengths.nbytes
    write_safetensors(
        {"embeddings": np.asarray(embeddings), "lengths": lengths.astype(np.int32)},
        out.parent,
        basename=out.name[: -len(".safetensors")],
        max_shard_bytes=total + 1,
        metadata=meta,
    )
    print(f"wrote {out}: embeddings {embeddings.shape} {embeddings.dtype}, token lengths {lengths.tolist()}")
    return 0
