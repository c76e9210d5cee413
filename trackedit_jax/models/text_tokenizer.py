"""Prompt tokenisation for the UMT5 text encoder, as the Wan pipelines do it.

A prompt is cleaned (HTML entities unescaped, whitespace collapsed, like diffusers' `prompt_clean`),
tokenised without special tokens, truncated to `text_len - 1` tokens, given EOS (`</s>`) and padded
with `<pad>` to `text_len` (512 for Wan). The result equals transformers' T5/UMT5 tokenizer called with
``padding="max_length", max_length=text_len, truncation=True, add_special_tokens=True``.

Two backends, both already constructed by the caller (models never read files; see
`trackedit_jax.convert.umt5.load_tokenizer`): a HF `tokenizers.Tokenizer` (from `tokenizer.json`) or a
`sentencepiece.SentencePieceProcessor` (from a `.model` file, e.g. umt5's `spiece.model`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import numpy as np


def clean_prompt(text: str) -> str:
    """diffusers' `prompt_clean` without ftfy (used when installed): unescape HTML twice, strip,
    collapse runs of whitespace to one space."""
    try:  # optional, as in diffusers
        import ftfy  # type: ignore

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class PromptTokenizer:
    """Turn prompts into fixed-length (ids, mask) for `UMT5Encoder`.

    Args:
      backend: a `tokenizers.Tokenizer` or a `sentencepiece.SentencePieceProcessor`.
      text_len: padded length (Wan: 512).
      pad_id, eos_id: override the ids of `<pad>` / `</s>` (default: looked up in the vocabulary).
      clean: apply `clean_prompt` first (the Wan pipelines do).
    """

    def __init__(
        self, backend, *, text_len: int = 512, pad_id: int | None = None, eos_id: int | None = None, clean: bool = True
    ):
        if text_len < 2:
            raise ValueError(f"text_len must be >= 2 (room for a token and EOS); got {text_len}")
        self.text_len = int(text_len)
        self.clean = clean
        kind = type(backend).__module__.split(".")[0]
        if kind == "tokenizers":
            self.kind = "tokenizers"
            # Our own copy without its padding/truncation/post-processor: we add EOS and pad ourselves.
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(backend.to_str())
            self._tok.no_padding()
            self._tok.no_truncation()
            lookup = self._tok.token_to_id
            self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        elif kind == "sentencepiece":
            self.kind = "sentencepiece"
            self._sp = backend
            lookup = lambda piece: i if (i := backend.piece_to_id(piece)) != backend.unk_id() else None  # noqa: E731
            self.vocab_size = backend.get_piece_size()
        else:
            raise ValueError(
                f"tokenizer backend must be a tokenizers.Tokenizer or a sentencepiece.SentencePieceProcessor; "
                f"got {type(backend).__name__}"
            )
        self.pad_id = pad_id if pad_id is not None else lookup("<pad>")
        self.eos_id = eos_id if eos_id is not None else lookup("</s>")
        if self.pad_id is None or self.eos_id is None:
            raise ValueError(
                "the tokenizer has no '<pad>' or '</s>' token (T5/UMT5 vocabularies have both); "
                "pass pad_id= and eos_id="
            )

    def tokenize(self, text: str) -> list[int]:
        """Token ids of one prompt without special tokens or padding."""
        if self.clean:
            text = clean_prompt(text)
        if self.kind == "tokenizers":
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        return list(self._sp.encode(text))

    def __call__(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Returns ids (N, text_len) int32 and mask (N, text_len) bool (True = real token, incl. EOS)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be strings; got {[type(p).__name__ for p in prompts]}")
        ids = np.full((len(prompts), self.text_len), self.pad_id, np.int32)
        mask = np.zeros((len(prompts), self.text_len), bool)
        for i, p in enumerate(prompts):
            toks = self.tokenize(p)[: self.text_len - 1] + [self.eos_id]
            ids[i, : len(toks)] = toks
            mask[i, : len(toks)] = True
        return ids, mask
