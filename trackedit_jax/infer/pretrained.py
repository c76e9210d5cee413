"""The ONE inference directory: what `trackedit export` writes and `EditPipeline.from_pretrained` reads.

    DIR/
      config.json               {"format": "trackedit-pretrained", "version": 1, "model": {...}, "vae": {...},
                                 "text": {...}, "sampling": {...}, "grid": {...}, "source": {...}}
      transformer/              the Wan backbone, diffusers `WanTransformer3DModel` layout (config.json +
                                diffusion_pytorch_model*.safetensors), LoRA merged into the kernels:
                                loadable in PyTorch with `WanTransformer3DModel.from_pretrained(DIR/transformer)`
      conditioner.safetensors   every other parameter of `EditByTrack` (the track conditioner, the
                                "shared" RoPE mode's side embedding), NNX paths as keys (`save_module`)
      vae/                      the Wan VAE, diffusers `AutoencoderKLWan` layout (config.json +
                                diffusion_pytorch_model.safetensors): `AutoencoderKLWan.from_pretrained`;
                                absent for the parameter-free space-to-depth autoencoder, which
                                config.json["vae"] describes whole ({"kind": "space_to_depth", ...})
      text_encoder/             optional: UMT5 encoder in the transformers layout (+ config.json)
      tokenizer/                optional (with text_encoder/): tokenizer.json or a sentencepiece .model

`save_pretrained` writes everything into a temporary sibling directory and renames it into place, so a
failure never leaves a half-written directory. `load_pretrained` names the missing piece when the
directory is incomplete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FORMAT = "trackedit-pretrained"
VERSION = 1
CONFIG_NAME = "config.json"
TRANSFORMER_DIR = "transformer"
CONDITIONER_FILE = "conditioner.safetensors"
VAE_DIR = "vae"
TEXT_ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model")

# Parameters of `EditByTrack` outside the Wan backbone (stored in conditioner.safetensors).
OWN_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("dit")))


class PretrainedError(ValueError):
    """A pretrained directory is missing a piece or holds something else; the message names it."""


def _dtype_name(d) -> str:
    return jnp.dtype(d).name


DEFAULT_SAMPLE_STEPS = 50  # a model that records no step count (the paper samples Wan with 50)


@dataclasses.dataclass(frozen=True)
class PretrainedConfig:
    """What `config.json` of a pretrained directory holds.

    Attributes:
      wan: `WanConfig` of the backbone (lora_rank 0: adapters are merged on export).
      conditioner: `ConditionerConfig`.
      rope_mode: "sequential" or "shared".
      vae: `WanVAEConfig` or `SpaceToDepthConfig`.
      text_len: prompt length in tokens the model was trained with (text embeddings are (text_len, text_dim));
        the one value: `wan.text_len` is set from it.
      num_frames, height, width: the training clip grid; the pipeline resizes videos to (height, width)
        and uses at most num_frames frames by default.
      max_tracks: at most this many tracks are given to the model (the training maximum).
      sample_shift: default timestep shift of the sampler.
      sample_steps: default number of sampling steps (chosen on validation pairs after training).
      prediction: what the network outputs, "velocity" or "sample" (`diffusion.flow.PREDICTIONS`).
      one_step_only: the model was trained only at pure noise (`diffusion.pure_noise_fraction` = 1), so
        its one-step estimate is the only sampler it supports (sample_steps must be 1).
      source_skip: the model adds the source latents to its output (`EditByTrack(source_skip=)`).
      warp_prior: the model takes the classical warp as a prior (`EditByTrack(warp_prior=)`).
      warp_coverage: the prior includes the warp's coverage (`EditByTrack(warp_coverage=)`).
      source_gate: the model blends the source into the warp value by value (`EditByTrack(source_gate=)`).
      gate_coverage: the gate also reads the coverage clip (`EditByTrack(gate_coverage=)`).
      source: provenance (run directory, step, EMA, ...), free-form.
    """

    wan: Any
    conditioner: Any
    rope_mode: str
    vae: Any
    text_len: int
    num_frames: int
    height: int
    width: int
    max_tracks: int
    sample_shift: float = 5.0
    sample_steps: int = DEFAULT_SAMPLE_STEPS
    prediction: str = "velocity"
    one_step_only: bool = False
    source_skip: bool = False
    warp_prior: bool = False
    warp_coverage: bool = False
    source_gate: bool = False
    gate_coverage: bool = False
    source: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.one_step_only and int(self.sample_steps) != 1:
            raise ValueError(
                f"a model trained only at pure noise samples in one step; got sample_steps={self.sample_steps}"
            )
        # one prompt length: the backbone's copy (written into the diffusers config.json) follows text_len
        if int(self.wan.text_len) != int(self.text_len):
            object.__setattr__(self, "wan", self.wan.replace(text_len=int(self.text_len)))

    def check_steps(self, num_steps) -> int:
        """`num_steps` if this model can sample with that many steps; else ValueError in one line."""
        if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int; got {num_steps!r}")
        if self.one_step_only and num_steps != 1:
            raise ValueError(
                f"this model was trained only at pure noise and samples in one step; got {num_steps} steps"
            )
        return int(num_steps)

    # -------------------------------------------------------------------------------- conversions
    @classmethod
    def from_train_config(cls, config, *, source: dict | None = None) -> PretrainedConfig:
        """From a training `ConfigDict` (a run's config.json): LoRA dropped (it is merged on export)."""
        from trackedit_jax.train import build

        wan = build.wan_config(config).replace(lora_rank=0, lora_alpha=None, remat_policy="none")
        d = config.data
        # a model never trained below sigma = 1 has one valid sampler: one step from pure noise
        one_step_only = float(config.diffusion.get("pure_noise_fraction", 0.0)) >= 1.0
        steps = 1 if one_step_only else int(config.diffusion.get("sample_steps", DEFAULT_SAMPLE_STEPS))
        return cls(
            wan=wan,
            conditioner=build.conditioner_config(config),
            rope_mode=str(config.model.rope_mode),
            vae=build.vae_config(config),
            text_len=int(config.text.text_len),
            num_frames=int(d.num_frames),
            height=int(d.height),
            width=int(d.width),
            max_tracks=int(d.max_tracks),
            sample_shift=float(config.diffusion.get("sample_shift", config.diffusion.shift)),
            sample_steps=steps,
            prediction=str(config.diffusion.get("prediction", "velocity")),
            one_step_only=one_step_only,
            source_skip=bool(config.model.get("source_skip", False)),
            warp_prior=bool(config.model.get("warp_prior", False)),
            warp_coverage=bool(config.model.get("warp_coverage", False)),
            source_gate=bool(config.model.get("source_gate", False)),
            gate_coverage=bool(config.model.get("gate_coverage", False)),
            source=dict(source or {}),
        )

    def to_json(self) -> dict:
        wan = dataclasses.asdict(self.wan)
        wan.update(
            param_dtype=_dtype_name(self.wan.param_dtype),
            dtype=_dtype_name(self.wan.dtype),
            patch_size=list(self.wan.patch_size),
        )
        cond = dataclasses.asdict(self.conditioner)
        cond.update(dtype=_dtype_name(self.conditioner.dtype), param_dtype=_dtype_name(self.conditioner.param_dtype))
        vae = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.vae).items()}
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": {
                "wan": wan,
                "conditioner": cond,
                "rope_mode": self.rope_mode,
                "source_skip": self.source_skip,
                "warp_prior": self.warp_prior,
                "warp_coverage": self.warp_coverage,
                "source_gate": self.source_gate,
                "gate_coverage": self.gate_coverage,
            },
            "vae": vae,
            "text": {"text_len": self.text_len, "text_dim": self.wan.text_dim},
            "grid": {
                "num_frames": self.num_frames,
                "height": self.height,
                "width": self.width,
                "max_tracks": self.max_tracks,
            },
            "sampling": {
                "shift": self.sample_shift,
                "steps": self.sample_steps,
                "prediction": self.prediction,
                "one_step_only": self.one_step_only,
            },
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict, *, where: str = CONFIG_NAME) -> PretrainedConfig:
        from trackedit_jax.models.track_conditioner import ConditionerConfig
        from trackedit_jax.models.wan.config import WanConfig

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PretrainedError(f'{where}: not a trackedit pretrained config (no "format": "{FORMAT}")')
        if int(data.get("version", -1)) > VERSION:
            raise PretrainedError(f"{where}: format version {data.get('version')} is newer than this code ({VERSION})")
        try:
            m, g = data["model"], data["grid"]
            cond = dict(m["conditioner"])
            cond["dtype"], cond["param_dtype"] = jnp.dtype(cond["dtype"]), jnp.dtype(cond["param_dtype"])
            return cls(
                wan=WanConfig(**m["wan"]),
                conditioner=ConditionerConfig(**cond),
                rope_mode=m["rope_mode"],
                vae=_vae_config_from_json(data["vae"]),
                text_len=int(data["text"]["text_len"]),
                num_frames=int(g["num_frames"]),
                height=int(g["height"]),
                width=int(g["width"]),
                max_tracks=int(g["max_tracks"]),
                sample_shift=float(data.get("sampling", {}).get("shift", 5.0)),
                sample_steps=int(data.get("sampling", {}).get("steps", DEFAULT_SAMPLE_STEPS)),
                prediction=str(data.get("sampling", {}).get("prediction", "velocity")),
                one_step_only=bool(data.get("sampling", {}).get("one_step_only", False)),
                source_skip=bool(m.get("source_skip", False)),
                warp_prior=bool(m.get("warp_prior", False)),
                warp_coverage=bool(m.get("warp_coverage", False)),
                source_gate=bool(m.get("source_gate", False)),
                gate_coverage=bool(m.get("gate_coverage", False)),
                source=dict(data.get("source", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PretrainedError(f"{where}: malformed trackedit pretrained config ({type(e).__name__}: {e})") from e


def _vae_config_from_json(data: dict):
    from trackedit_jax.models.space_to_depth import KIND as S2D
    from trackedit_jax.models.space_to_depth import SpaceToDepthConfig
    from trackedit_jax.models.wan.vae import WanVAEConfig

    if data.get("kind") == S2D:
        return SpaceToDepthConfig(**data)
    return WanVAEConfig(**data)


@dataclasses.dataclass
class Pretrained:
    """What `load_pretrained` returns. text_encoder/tokenizer are None when the directory has none."""

    config: PretrainedConfig
    model: Any  # EditByTrack
    vae: Any  # WanVAE
    text_encoder: Any = None  # UMT5Encoder
    tokenizer: Any = None  # PromptTokenizer
    path: pathlib.Path | None = None


# ------------------------------------------------------------------------------------------------ save


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_permissions(path: pathlib.Path) -> None:
    """Give a tree written through temporary files (mode 0600/0700) the usual modes (0644/0755 minus
    the umask)."""
    mask = _umask()
    paths = [path] + (list(path.rglob("*")) if path.is_dir() else [])
    for p in paths:
        os.chmod(p, (0o755 if p.is_dir() else 0o644) & ~mask)


def _write_umt5(encoder, out_dir: pathlib.Path) -> None:
    """A `UMT5Encoder` -> transformers `UMT5EncoderModel` safetensors + config.json (what
    `load_umt5_encoder` and `UMT5EncoderModel.from_pretrained` read)."""
    from trackedit_jax.convert.checkpoint_files import write_safetensors
    from trackedit_jax.convert.umt5 import our_path_to_transformers

    tensors = {}
    for path, leaf in nnx.to_flat_state(nnx.state(encoder, nnx.Param)):
        ours = ".".join(str(p) for p in path)
        arr = np.asarray(jax.device_get(leaf[...]))
        tensors[our_path_to_transformers(ours)] = arr.T if ours.endswith(".kernel") else arr
    write_safetensors(tensors, out_dir, basename="model")
    c = encoder.config
    cfg = {
        "architectures": ["UMT5EncoderModel"],
        "model_type": "umt5",
        "vocab_size": c.vocab_size,
        "d_model": c.d_model,
        "d_kv": c.d_kv,
        "d_ff": c.d_ff,
        "num_layers": c.num_layers,
        "num_heads": c.num_heads,
        "relative_attention_num_buckets": c.relative_attention_num_buckets,
        "relative_attention_max_distance": c.relative_attention_max_distance,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "feed_forward_proj": c.feed_forward_proj,
        "is_encoder_decoder": True,
        "dropout_rate": 0.0,
    }
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))


def _copy_text_encoder(src: pathlib.Path, out_dir: pathlib.Path) -> None:
    """Copy a transformers-layout text encoder (a .safetensors file, or a folder of safetensors files /
    shards + index, with its config.json) into out_dir."""
    from trackedit_jax.convert.checkpoint_files import open_checkpoint

    with open_checkpoint(src, prefer="model"):  # exists, is safetensors (never pickle), is readable
        pass
    if src.is_file():
        if not src.name.endswith(".safetensors"):
            raise PretrainedError(f"text_encoder: give a .safetensors file or its folder; got {src}")
        files = [src]
    else:
        files = sorted(src.glob("*.safetensors")) + sorted(src.glob("*.safetensors.index.json"))
        if (src / "config.json").is_file():
            files.append(src / "config.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, out_dir / f.name)


def _tokenizer_file(path: pathlib.Path) -> pathlib.Path:
    if path.is_dir():
        for name in TOKENIZER_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"tokenizer: no {', '.join(TOKENIZER_FILES)} in {path}")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    return path


def save_pretrained(
    out_dir: str | os.PathLike,
    config,
    model,
    vae,
    text_encoder=None,
    tokenizer: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    source: dict | None = None,
) -> pathlib.Path:
    """Write the inference directory (module docstring) atomically.

    Args:
      out_dir: the directory to create (its parent is created if needed).
      config: a `PretrainedConfig` or a training `ConfigDict` (a run's config).
      model: the `EditByTrack` (with or without LoRA adapters; they are merged into the written kernels,
        the module itself is not changed).
      vae: the `WanVAE` the model was trained with.
      text_encoder: optional `UMT5Encoder`, or a path to a transformers-layout UMT5 encoder (folder or
        .safetensors) that is copied. Needs `tokenizer`.
      tokenizer: the tokenizer file (tokenizer.json or sentencepiece .model, or a folder with one).
      overwrite: replace an existing out_dir (only after the new one is complete).
      source: provenance stored under config.json["source"] (merged over the config's own).
    Returns:
      out_dir as a `pathlib.Path`.
    """
    from trackedit_jax.convert.nnx_safetensors import save_module
    from trackedit_jax.convert.wan_transformer import export_wan_transformer
    from trackedit_jax.convert.wan_vae import export_wan_vae
    from trackedit_jax.models.edit_model import EditByTrack
    from trackedit_jax.models.space_to_depth import SpaceToDepthVAE
    from trackedit_jax.models.wan.vae import WanVAE

    out_dir = pathlib.Path(out_dir)
    if not isinstance(model, EditByTrack):
        raise ValueError(f"model must be an EditByTrack; got {type(model).__name__}")
    if not isinstance(vae, (WanVAE, SpaceToDepthVAE)):
        raise ValueError(f"vae must be a WanVAE or a SpaceToDepthVAE; got {type(vae).__name__}")
    if (text_encoder is None) != (tokenizer is None):
        raise ValueError("text_encoder and tokenizer go together: give both or neither")
    if not isinstance(config, PretrainedConfig):
        config = PretrainedConfig.from_train_config(config)
    if source:
        config = dataclasses.replace(config, source={**config.source, **source})
    if config.wan.replace(lora_rank=0, lora_alpha=None, remat_policy="none") != model.wan_config.replace(
        lora_rank=0, lora_alpha=None, remat_policy="none"
    ):
        raise ValueError(f"config.wan {config.wan} does not describe the model's backbone {model.wan_config}")
    if vae.config != config.vae:
        raise ValueError(f"config.vae {config.vae} does not describe the VAE {vae.config}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        export_wan_transformer(model.dit, tmp / TRANSFORMER_DIR)  # merges LoRA into the written kernels
        save_module(model, tmp, CONDITIONER_FILE[: -len(".safetensors")], filter=OWN_PARAMS)
        if isinstance(vae, WanVAE):
            export_wan_vae(vae, tmp / VAE_DIR)
        if text_encoder is not None:
            if isinstance(text_encoder, (str, os.PathLike)):
                _copy_text_encoder(pathlib.Path(text_encoder), tmp / TEXT_ENCODER_DIR)
            else:
                _write_umt5(text_encoder, tmp / TEXT_ENCODER_DIR)
            tok = _tokenizer_file(pathlib.Path(tokenizer))
            (tmp / TOKENIZER_DIR).mkdir()
            shutil.copy2(tok, tmp / TOKENIZER_DIR / tok.name)
        (tmp / CONFIG_NAME).write_text(json.dumps(config.to_json(), indent=2))
        publish_permissions(tmp)
        if out_dir.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ------------------------------------------------------------------------------------------------ load


def read_pretrained_config(path: str | os.PathLike) -> PretrainedConfig:
    """The `PretrainedConfig` of a pretrained directory (cheap: reads config.json only)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise PretrainedError(f"{path} is a file; a pretrained checkpoint is a directory written by `trackedit export`")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise PretrainedError(
            f"{path} has no {CONFIG_NAME}: not a trackedit pretrained directory (write one with `trackedit export`)"
        )
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{cfg_path}: not valid JSON ({e})") from e
    return PretrainedConfig.from_json(data, where=str(cfg_path))


def _require(path: pathlib.Path, what: str) -> pathlib.Path:
    if not path.exists():
        raise PretrainedError(f"{path.parent}: missing {path.name} ({what}); the directory is incomplete")
    return path


def load_pretrained(path: str | os.PathLike, *, dtype=None, load_text_encoder: bool = True) -> Pretrained:
    """Read a directory written by `save_pretrained` / `trackedit export`.

    Args:
      path: the directory.
      dtype: parameter dtype override for the backbone (e.g. jnp.bfloat16); default float32.
      load_text_encoder: also load text_encoder/ + tokenizer/ when present.
    Returns:
      `Pretrained(config, model, vae, text_encoder, tokenizer, path)`.
    Raises:
      FileNotFoundError when `path` does not exist; `PretrainedError` (a ValueError) naming a missing or
      malformed piece; `StateMismatchError`/`ValueError` when weights do not fit the config.
    """
    from trackedit_jax.convert.nnx_safetensors import load_module_state
    from trackedit_jax.convert.wan_transformer import load_wan_transformer
    from trackedit_jax.convert.wan_vae import load_wan_vae
    from trackedit_jax.models.edit_model import EditByTrack

    path = pathlib.Path(path)
    config = read_pretrained_config(path)
    transformer = _require(path / TRANSFORMER_DIR, "the Wan backbone in the diffusers layout")
    conditioner = _require(path / CONDITIONER_FILE, "the track conditioner weights")
    from trackedit_jax.models.space_to_depth import SpaceToDepthConfig, SpaceToDepthVAE

    fixed_vae = isinstance(config.vae, SpaceToDepthConfig)
    vae_dir = None if fixed_vae else _require(path / VAE_DIR, "the VAE weights")

    model = nnx.eval_shape(
        lambda: EditByTrack(
            config.wan,
            config.conditioner,
            rope_mode=config.rope_mode,
            source_skip=config.source_skip,
            warp_prior=config.warp_prior,
            warp_coverage=config.warp_coverage,
            source_gate=config.source_gate,
            gate_coverage=config.gate_coverage,
            rngs=nnx.Rngs(0),
        )
    )
    model.dit = load_wan_transformer(transformer, config=config.wan, dtype=dtype or config.wan.param_dtype)
    load_module_state(model, conditioner, filter=OWN_PARAMS)

    vae = SpaceToDepthVAE(config.vae) if fixed_vae else load_wan_vae(vae_dir, config=config.vae)

    text_encoder = tokenizer = None
    if load_text_encoder and (path / TEXT_ENCODER_DIR).exists():
        from trackedit_jax.convert.umt5 import load_tokenizer, load_umt5_encoder

        tok_dir = _require(path / TOKENIZER_DIR, "the tokenizer of text_encoder/")
        text_encoder = load_umt5_encoder(path / TEXT_ENCODER_DIR)
        tokenizer = load_tokenizer(tok_dir, text_len=config.text_len)
        if text_encoder.config.d_model != config.wan.text_dim:
            raise PretrainedError(
                f"{path}: the text encoder's width {text_encoder.config.d_model} differs from the model's "
                f"text_dim {config.wan.text_dim}"
            )
    return Pretrained(config, model, vae, text_encoder, tokenizer, path)
