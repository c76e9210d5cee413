"""From a configuration to objects: model configs, the edit model, the VAE, and config validation.

`validate_config` runs before anything is compiled and names the offending field in its error.
"""

from __future__ import annotations

import os
import pathlib

import jax
from flax import nnx
from ml_collections import ConfigDict

from trackedit_jax.diffusion.flow import PREDICTIONS, WEIGHTINGS
from trackedit_jax.models.edit_model import EditByTrack
from trackedit_jax.models.lora import trainable_filter
from trackedit_jax.models.space_to_depth import SpaceToDepthConfig, SpaceToDepthVAE
from trackedit_jax.models.track_conditioner import ConditionerConfig
from trackedit_jax.models.wan.config import WanConfig
from trackedit_jax.models.wan.vae import WanVAE, WanVAEConfig
from trackedit_jax.parallel.mesh import resolve_mesh_shape


class ConfigError(ValueError):
    """A configuration field has a bad value; the message starts with the field name."""


def wan_config(config: ConfigDict) -> WanConfig:
    """The backbone's `WanConfig`; LoRA adapters are built when `lora.mode == "lora"`.

    Its `text_len` is `text.text_len`, the one prompt length of a config; a `model.wan.text_len` that
    configs saved by older versions carry (always equal to it in the presets) is not read.
    """
    kw = dict(config.model.wan)
    kw["patch_size"] = tuple(kw["patch_size"])
    kw["text_len"] = int(config.text.text_len)
    if config.lora.mode == "lora":
        kw.update(lora_rank=int(config.lora.rank), lora_alpha=float(config.lora.alpha))
    return WanConfig(**kw)


def conditioner_config(config: ConfigDict) -> ConditionerConfig:
    kw = dict(config.model.conditioner)
    kw.setdefault("attention_impl", config.model.wan.attention_impl)
    kw["dtype"] = config.model.wan.dtype
    return ConditionerConfig(**kw)


VAE_PRESETS = ("wan21", "tiny", "space_to_depth")


def vae_config(config: ConfigDict) -> WanVAEConfig | SpaceToDepthConfig:
    v = config.vae
    if v.preset == "wan21":
        return WanVAEConfig.wan21()
    if v.preset == "tiny":
        return WanVAEConfig.tiny(base_dim=int(v.base_dim), z_dim=int(v.z_dim))
    if v.preset == "space_to_depth":
        return SpaceToDepthConfig(
            spatial_factor=int(v.get("spatial_factor", 4)),
            temporal_factor=int(v.get("temporal_factor", 4)),
            scale=float(v.get("scale", 0.5)),
        )
    raise ConfigError(f"vae.preset must be one of {VAE_PRESETS}; got {v.preset!r}")


def latent_grid(config: ConfigDict) -> tuple[int, int, int]:
    """(f, h, w) latent grid of one clip of the configured data: the VAE's temporal and spatial strides."""
    vae = vae_config(config)
    d = config.data
    s = vae.spatial_factor
    return vae.latent_frames(int(d.num_frames)), int(d.height) // s, int(d.width) // s


def tokens_per_clip(config: ConfigDict) -> int:
    """DiT tokens of one clip (one side of the paired sequence)."""
    f, h, w = latent_grid(config)
    pt, ph, pw = tuple(config.model.wan.patch_size)
    return (f // pt) * (h // ph) * (w // pw)


def build_edit_model(config: ConfigDict, *, seed: int = 0) -> EditByTrack:
    """A freshly initialised `EditByTrack` (the Wan base is loaded separately, see `train.loop`)."""
    return EditByTrack(
        wan_config(config),
        conditioner_config(config),
        rope_mode=config.model.rope_mode,
        source_skip=bool(config.model.get("source_skip", False)),
        warp_prior=warp_prior(config),
        warp_coverage=warp_coverage(config),
        source_gate=source_gate(config),
        gate_coverage=gate_coverage(config),
        rngs=nnx.Rngs(seed),
    )


def warp_prior(config: ConfigDict) -> bool:
    """Whether the model takes the classical warp as a prior (`model.warp_prior`): batches then carry it."""
    return bool(config.model.get("warp_prior", False))


def warp_coverage(config: ConfigDict) -> bool:
    """Whether a warp-prior model also reads where the warp guessed (`model.warp_coverage`): batches then
    carry `warp_coverage`."""
    return warp_prior(config) and bool(config.model.get("warp_coverage", False))


def source_gate(config: ConfigDict) -> bool:
    """Whether the model chooses, value by value, between the warp and the source (`model.source_gate`)."""
    return bool(config.model.get("source_gate", False))


def gate_coverage(config: ConfigDict) -> bool:
    """Whether the source gate also reads the warp's coverage clip directly (`model.gate_coverage`)."""
    return bool(config.model.get("gate_coverage", False))


def trainable(config: ConfigDict):
    """The nnx filter of the parameters the optimiser updates."""
    return trainable_filter(config.lora.mode, extra=EditByTrack.EXTRA_TRAINABLE)


def build_vae(config: ConfigDict, *, seed: int = 1234) -> WanVAE | SpaceToDepthVAE:
    """The frozen VAE: loaded from `init.vae_path`, the fixed space-to-depth one, or random-initialised
    for the tiny preset."""
    if config.vae.preset == "space_to_depth":
        return SpaceToDepthVAE(vae_config(config))
    if config.init.vae_path:
        from trackedit_jax.convert.wan_vae import load_wan_vae

        return load_wan_vae(config.init.vae_path, config=vae_config(config))
    if config.vae.preset != "tiny":
        raise ConfigError("init.vae_path: the Wan 2.1 VAE weights are needed (vae.preset='wan21')")
    return WanVAE(vae_config(config), rngs=nnx.Rngs(seed))


def abstract_vae(config: ConfigDict) -> WanVAE | SpaceToDepthVAE:
    """The configured VAE with abstract (shape-only) parameters: for planning, nothing is read or allocated."""
    if config.vae.preset == "space_to_depth":
        return SpaceToDepthVAE(vae_config(config))
    return nnx.eval_shape(lambda: WanVAE(vae_config(config), rngs=nnx.Rngs(0)))


def validate_config(config: ConfigDict, num_devices: int | None = None, *, planning: bool = False) -> None:
    """Check a training config before anything is built or compiled; raises ConfigError naming the field.

    planning=True skips what only a real run needs (weights, data and stage-1 paths).
    """
    num_devices = jax.device_count() if num_devices is None else num_devices
    try:
        shape = resolve_mesh_shape(dict(config.mesh), num_devices)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    dp = shape[0] * shape[1]
    t = config.train
    if t.num_steps <= 0:
        raise ConfigError(f"train.num_steps must be positive; got {t.num_steps}")
    if t.grad_accum < 1:
        raise ConfigError(f"train.grad_accum must be >= 1; got {t.grad_accum}")
    if t.batch_size % (dp * t.grad_accum):
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be divisible by data*fsdp={dp} times train.grad_accum={t.grad_accum}"
        )
    if config.diffusion.get("prediction", "velocity") not in PREDICTIONS:
        raise ConfigError(f"diffusion.prediction must be one of {PREDICTIONS}; got {config.diffusion.prediction!r}")
    if config.lora.mode not in ("lora", "full"):
        raise ConfigError(f"lora.mode must be 'lora' or 'full'; got {config.lora.mode!r}")
    if planning:
        pass
    elif not config.init.wan_path and not config.init.allow_random_base and not config.init_from:
        raise ConfigError(
            "init.wan_path: this config fine-tunes a pretrained Wan model; give the checkpoint with "
            "--config.init.wan_path=PATH (a diffusers or official Wan 2.1 safetensors file or directory)"
        )
    for field in ("wan_path", "vae_path"):
        p = config.init[field]
        if p and not pathlib.Path(p).exists():
            raise ConfigError(f"init.{field}: {p} does not exist")
    if config.init.require_init_from and not config.init_from and not planning:
        raise ConfigError("init_from: stage 2 starts from a stage-1 run; give --config.init_from=STAGE1_WORKDIR")
    if config.init_from and not pathlib.Path(config.init_from).exists():
        raise ConfigError(f"init_from: {config.init_from} does not exist")
    d = config.data
    vae = vae_config(config)
    tf, sf = vae.temporal_factor, vae.spatial_factor
    if d.num_frames < 1 or (d.num_frames - 1) % tf:
        raise ConfigError(f"data.num_frames must be {tf}k+1 (the VAE's frame grouping); got {d.num_frames}")
    for field, patch in (("height", config.model.wan.patch_size[1]), ("width", config.model.wan.patch_size[2])):
        if d[field] % (sf * patch):
            raise ConfigError(
                f"data.{field} must be a multiple of {sf * patch} (VAE x{sf}, patch x{patch}); got {d[field]}"
            )
    if vae.z_dim != config.model.wan.in_dim:
        raise ConfigError(
            f"model.wan.in_dim must equal the VAE's latent channels {vae.z_dim} (vae.preset={config.vae.preset!r}); "
            f"got {config.model.wan.in_dim}"
        )
    if config.model.get("source_skip", False) and config.diffusion.get("prediction", "velocity") != "sample":
        raise ConfigError("model.source_skip: the source is a clean sample, so it needs diffusion.prediction='sample'")
    if source_gate(config) and not (config.model.get("source_skip", False) and warp_prior(config)):
        raise ConfigError(
            "model.source_gate chooses between the source and the warp: it needs model.source_skip and model.warp_prior"
        )
    if gate_coverage(config) and not (source_gate(config) and warp_coverage(config)):
        raise ConfigError(
            "model.gate_coverage feeds the coverage clip to the source gate: it needs model.source_gate and "
            "model.warp_coverage (with model.warp_prior)"
        )
    if config.diffusion.get("gate_weight", 0.0) and not source_gate(config):
        raise ConfigError("diffusion.gate_weight trains the source gate: it needs model.source_gate")
    if config.diffusion.get("weighting", "none") not in WEIGHTINGS:
        raise ConfigError(f"diffusion.weighting must be one of {WEIGHTINGS}; got {config.diffusion.weighting!r}")
    if not 1 <= d.min_tracks <= d.max_tracks:
        raise ConfigError(f"data.min_tracks ({d.min_tracks}) must be in [1, data.max_tracks={d.max_tracks}]")
    if d.train_path and not os.path.exists(d.train_path):
        raise ConfigError(f"data.train_path: {d.train_path} does not exist")
    if not d.train_path and d.synthetic_pairs <= 0 and not planning:
        raise ConfigError("data.train_path: no training data given (and this preset does not generate any)")
    try:
        wan_config(config)
        conditioner_config(config)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
