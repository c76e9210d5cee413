"""Tiny models, scenes and text assets for the inference tests (tests/infer)."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
from flax import nnx

from trackedit_jax.geometry.types import Camera, Tracks
from trackedit_jax.infer.pretrained import PretrainedConfig
from trackedit_jax.models.edit_model import EditByTrack
from trackedit_jax.models.track_conditioner import ConditionerConfig
from trackedit_jax.models.wan.config import WanConfig
from trackedit_jax.models.wan.vae import WanVAE, WanVAEConfig

TEXT_DIM = 32
GRID = (9, 32, 32)  # frames, height, width the tiny model "was trained" on


def tiny_config(**overrides) -> PretrainedConfig:
    kw = dict(
        wan=WanConfig(
            dim=32,
            num_heads=2,
            num_layers=2,
            ffn_dim=64,
            freq_dim=32,
            in_dim=16,
            out_dim=16,
            text_dim=TEXT_DIM,
            text_len=16,
        ),
        conditioner=ConditionerConfig(dim=16, heads=2, temporal_layers=1, num_freqs=4),
        rope_mode="sequential",
        vae=WanVAEConfig.tiny(base_dim=8, z_dim=16),
        text_len=16,
        num_frames=GRID[0],
        height=GRID[1],
        width=GRID[2],
        max_tracks=48,
        sample_shift=3.0,
        source={"test": "tiny random model"},
    )
    kw.update(overrides)
    return PretrainedConfig(**kw)


def randomize_zero_inits(model: nnx.Module, seed: int = 0, scale: float = 0.05) -> nnx.Module:
    """Fill the zero-initialised parameters (the conditioner's output layer, LoRA B) with noise, so the
    track condition and the adapters change what the model computes."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    flat = []
    for path, var in nnx.to_flat_state(state):
        value = var[...]
        if not np.any(np.asarray(value)):
            value = jax.numpy.asarray(scale * rng.standard_normal(value.shape), value.dtype)
        flat.append((path, var.replace(value)))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def build_model(config: PretrainedConfig, *, seed: int = 0, lora_rank: int = 0) -> EditByTrack:
    wan = config.wan.replace(lora_rank=lora_rank, lora_alpha=2.0 * lora_rank if lora_rank else None)
    # initialised in one compiled program (eagerly, every initialiser call compiles on its own)
    model = nnx.jit(lambda: EditByTrack(wan, config.conditioner, rope_mode=config.rope_mode, rngs=nnx.Rngs(seed)))()
    return randomize_zero_inits(model, seed)


def build_vae(config: PretrainedConfig, seed: int = 1234) -> WanVAE:
    return WanVAE(config.vae, rngs=nnx.Rngs(seed))


def scene(
    num_frames: int, image_size: tuple[int, int], *, num_points: int = 64, seed: int = 0, focal: float | None = None
) -> tuple[Tracks, Camera]:
    """Points 3-6 units in front of a static pinhole camera, covering the image; the right half of them
    drifts right over time (an object moving)."""
    H, W = image_size
    rng = np.random.default_rng(seed)
    f = float(focal or 0.8 * W)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    uv = rng.uniform([0.05 * W, 0.05 * H], [0.95 * W, 0.95 * H], (num_points, 2))
    z = rng.uniform(3.0, 6.0, num_points)
    xyz0 = np.stack([(uv[:, 0] - cx) / f * z, (uv[:, 1] - cy) / f * z, z], -1)
    drift = np.where(uv[:, :1] > cx, 1.0, 0.0) * np.array([[0.3, 0.0, 0.0]])
    t = np.linspace(0.0, 1.0, num_frames)[:, None, None]
    xyz = (xyz0[None] + t * drift[None]).astype(np.float32)
    K = np.repeat(np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]], np.float32)[None], num_frames, 0)
    E = np.repeat(np.eye(4, dtype=np.float32)[None], num_frames, 0)
    return Tracks(xyz, np.ones(xyz.shape[:2], bool)), Camera(K, E, (H, W))


def text_assets(root: pathlib.Path):
    """(UMT5Encoder with d_model = TEXT_DIM, path of a sentencepiece tokenizer) trained on a toy corpus."""
    import sentencepiece as spm

    from trackedit_jax.models.wan.umt5 import UMT5Config, UMT5Encoder

    corpus = ["a sheep walks across the field", "the camera pans to the left", "a windmill turns slowly"] * 30
    (root / "corpus.txt").write_text("\n".join(corpus))
    spm.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"),
        model_prefix=str(root / "spiece"),
        vocab_size=28,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    encoder = UMT5Encoder(UMT5Config.tiny(vocab_size=40, d_model=TEXT_DIM), rngs=nnx.Rngs(3))
    return encoder, root / "spiece.model"


def one_step_copy(model_dir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """A copy of the pretrained directory `model_dir` at `out`, its config.json marked as a model trained
    only at pure noise (`sampling.one_step_only`, one step)."""
    shutil.copytree(model_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["sampling"].update(steps=1, one_step_only=True)
    (out / "config.json").write_text(json.dumps(cfg))
    return out
