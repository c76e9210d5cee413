"""Load a Wan 2.1 VAE checkpoint (official or diffusers key layout, safetensors) into `WanVAE`.

* official: the keys of `Wan2.1_VAE.pth` (``encoder.conv1``, ``encoder.downsamples.k.residual.2``,
  ``decoder.upsamples.k``, top-level ``conv1``/``conv2``) after `trackedit convert --trust-pickle`.
* diffusers: `AutoencoderKLWan` (``encoder.conv_in``, ``encoder.down_blocks.k.conv1``,
  ``decoder.up_blocks.i.resnets.j``, ``quant_conv``), e.g. ``Wan2.1-T2V-1.3B-Diffusers/vae``.

The layout is detected from the keys, the architecture is inferred from the tensor shapes (and checked
against an explicit `config` when given). Tensors are streamed one at a time from the memory-mapped
safetensors files into an abstract (never randomly initialised) model, so peak host memory is about
one copy of the weights. Pickle files are refused (`open_checkpoint`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from trackedit_jax.convert.checkpoint_files import CheckpointReader, open_checkpoint
from trackedit_jax.models.wan.vae import WanVAE, WanVAEConfig

_RESIDUAL_RENAMES = (
    (".residual.0.gamma", ".norm1.gamma"),
    (".residual.2.", ".conv1."),
    (".residual.3.gamma", ".norm2.gamma"),
    (".residual.6.", ".conv2."),
    (".shortcut.", ".conv_shortcut."),
)


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model (missing, unexpected or wrongly shaped keys)."""


# ----------------------------------------------------------------------------------------------
# Generic streaming fill of an abstract NNX model (shared with the UMT5 loader)


def path_to_key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def fill_abstract_model(
    abstract_model: nnx.Module,
    source_key: Callable[[str], str],
    reader: CheckpointReader,
    convert: Callable[[np.ndarray, tuple[int, ...], str], np.ndarray],
    *,
    dtype,
    what: str,
    ignore_unused: Iterable[str] = (),
) -> nnx.Module:
    """Fill every parameter of `abstract_model` (from `nnx.eval_shape`) from `reader`.

    source_key(our_path) names the checkpoint tensor of each parameter; convert(array, target_shape,
    our_path) turns the stored tensor into ours. Raises `CheckpointMismatchError` naming missing,
    unexpected and mis-shaped tensors.
    """
    graphdef, state = nnx.split(abstract_model)
    flat = list(nnx.to_flat_state(state))
    wanted = {path_to_key(p): source_key(path_to_key(p)) for p, _ in flat}
    available = set(reader.keys())
    missing = sorted(k for k in wanted.values() if k not in available)
    unexpected = sorted(available - set(wanted.values()) - set(ignore_unused))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{reader.path}: not a {what} checkpoint matching the model: "
            f"{len(missing)} missing tensors {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
            f"{len(unexpected)} unexpected tensors {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
        )
    values = []
    for path, var in flat:
        ours = path_to_key(path)
        key = wanted[ours]
        target = tuple(var.get_value().shape)
        stored = reader.get(key)
        try:
            arr = convert(stored, target, ours)
        except ValueError as e:
            raise CheckpointMismatchError(f"{reader.path}: tensor {key!r} {stored.shape}: {e}") from None
        if tuple(arr.shape) != target:
            raise CheckpointMismatchError(
                f"{reader.path}: tensor {key!r} has shape {stored.shape}; the model expects {target} "
                f"(after conversion) for {ours}"
            )
        values.append((path, jnp.asarray(arr, dtype=dtype)))
        del stored, arr
    # Keep the variable types and metadata (logical sharding names) of the abstract state.
    lookup = dict(values)
    replaced = [(path, var.replace(lookup[path])) for path, var in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(replaced))


# ----------------------------------------------------------------------------------------------
# Key layouts


def our_path_to_diffusers(path: str) -> str:
    """Our parameter path (e.g. ``encoder.down_blocks.3.resample.kernel``) -> the diffusers key."""
    key = re.sub(r"\.kernel$", ".weight", path)
    return key.replace(".resample.", ".resample.1.")


def official_to_diffusers(key: str, config: WanVAEConfig | None) -> str:
    """Rename one official `Wan2.1_VAE.pth` key to the diffusers `AutoencoderKLWan` key.

    The decoder's flat ``upsamples`` list holds, per level, num_res_blocks + 1 residual blocks and then
    (except at the last level) one upsampler; its index is mapped with the config (only those keys
    need it: `config` may be None for every other key).
    """
    if key.startswith("conv1."):
        return "quant_conv." + key[len("conv1.") :]
    if key.startswith("conv2."):
        return "post_quant_conv." + key[len("conv2.") :]
    m = re.match(r"^(encoder|decoder)\.(.*)$", key)
    if not m:
        return key
    part, rest = m.groups()
    if rest.startswith("conv1."):
        return f"{part}.conv_in.{rest[len('conv1.') :]}"
    if rest.startswith("head.0."):
        return f"{part}.norm_out.{rest[len('head.0.') :]}"
    if rest.startswith("head.2."):
        return f"{part}.conv_out.{rest[len('head.2.') :]}"
    m = re.match(r"^middle\.(\d+)\.(.*)$", rest)
    if m:
        idx, tail = int(m.group(1)), "." + m.group(2)
        if idx == 1:
            return f"{part}.mid_block.attentions.0{tail}"
        new = f"{part}.mid_block.resnets.{idx // 2}{tail}"
        return _rename_residual(new)
    m = re.match(r"^downsamples\.(\d+)\.(.*)$", rest)
    if m and part == "encoder":
        return _rename_residual(f"encoder.down_blocks.{m.group(1)}.{m.group(2)}")
    m = re.match(r"^upsamples\.(\d+)\.(.*)$", rest)
    if m and part == "decoder":
        idx, tail = int(m.group(1)), m.group(2)
        if config is None:
            raise ValueError(f"mapping {key!r} needs the VAE config (num_res_blocks)")
        per_level = config.num_res_blocks + 2  # resnets + upsampler (the last level has no upsampler)
        level, j = divmod(idx, per_level)
        if j <= config.num_res_blocks:
            return _rename_residual(f"decoder.up_blocks.{level}.resnets.{j}.{tail}")
        return f"decoder.up_blocks.{level}.upsamplers.0.{tail}"
    return key


def diffusers_to_official(key: str, config: WanVAEConfig) -> str:
    """The inverse of `official_to_diffusers` (e.g. to export a diffusers VAE in the official layout)."""
    top = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old) :]
    m = re.match(r"^(encoder|decoder)\.(.*)$", key)
    if not m:
        return key
    part, rest = m.groups()
    for old, new in (("conv_in.", "conv1."), ("norm_out.", "head.0."), ("conv_out.", "head.2.")):
        if rest.startswith(old):
            return f"{part}.{new}{rest[len(old) :]}"
    m = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", rest)
    if m:
        kind, i, tail = m.group(1), int(m.group(2)), m.group(3)
        idx = 1 if kind == "attentions" else 2 * i
        return _official_residual(f"{part}.middle.{idx}.{tail}") if kind == "resnets" else f"{part}.middle.1.{tail}"
    m = re.match(r"^down_blocks\.(\d+)\.(.*)$", rest)
    if m:
        return _official_residual(f"encoder.downsamples.{m.group(1)}.{m.group(2)}")
    m = re.match(r"^up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)$", rest)
    if m:
        level, kind, j, tail = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        per_level = config.num_res_blocks + 2
        idx = level * per_level + (j if kind == "resnets" else config.num_res_blocks + 1)
        return (
            _official_residual(f"decoder.upsamples.{idx}.{tail}")
            if kind == "resnets"
            else (f"decoder.upsamples.{idx}.{tail}")
        )
    return key


def _official_residual(key: str) -> str:
    for new, old in _RESIDUAL_RENAMES:
        if old in key:
            return key.replace(old, new)
    return key


def _rename_residual(key: str) -> str:
    for old, new in _RESIDUAL_RENAMES:
        if old in key:
            return key.replace(old, new)
    return key


def detect_layout(keys: Iterable[str]) -> str:
    """'official' or 'diffusers' from the key names; ValueError when neither fits."""
    keys = set(keys)
    if "encoder.conv_in.weight" in keys and "quant_conv.weight" in keys:
        return "diffusers"
    if "encoder.conv1.weight" in keys and "conv1.weight" in keys:
        return "official"
    sample = sorted(keys)[:5]
    raise ValueError(
        "not a Wan VAE checkpoint: expected diffusers keys (encoder.conv_in.weight, quant_conv.weight) or "
        f"official keys (encoder.conv1.weight, conv1.weight); found e.g. {sample}"
    )


def _latents_statistics(json_cfg: Mapping | None, z_dim: int, json_path: str) -> dict:
    """`WanVAEConfig` keyword arguments for the latents statistics: config.json's when it holds z_dim of
    each; else neutral ones (mean 0, std 1), or none at all (Wan 2.1's) when z_dim is Wan 2.1's 16."""
    neutral = {"latents_mean": (0.0,) * z_dim, "latents_std": (1.0,) * z_dim}
    if json_cfg and "latents_mean" in json_cfg and "latents_std" in json_cfg:
        mean, std = tuple(json_cfg["latents_mean"]), tuple(json_cfg["latents_std"])
        if len(mean) == z_dim and len(std) == z_dim:
            return {"latents_mean": mean, "latents_std": std}
        # diffusers saves its 16-entry defaults whatever z_dim is, and never checks them
        warnings.warn(
            f"{json_path}: latents_mean/latents_std have {len(mean)}/{len(std)} entries, not z_dim={z_dim}; "
            "ignoring them (using mean 0, std 1)",
            stacklevel=4,
        )
        return neutral
    return neutral if z_dim != 16 else {}


def _infer_config(
    shape: Callable[[str], tuple], keys: set[str], json_cfg: Mapping | None, json_path: str = "config.json"
) -> WanVAEConfig:
    """Architecture from diffusers-named tensor shapes (+ latents statistics from config.json at `json_path`)."""
    base_dim = shape("encoder.conv_in.weight")[0]
    z_dim = shape("post_quant_conv.weight")[0]
    blocks = sorted({int(m.group(1)) for k in keys if (m := re.match(r"^encoder\.down_blocks\.(\d+)\.", k))})
    levels: list[list[int]] = [[]]
    temporal = []
    for b in blocks:
        if f"encoder.down_blocks.{b}.resample.1.weight" in keys:
            temporal.append(f"encoder.down_blocks.{b}.time_conv.weight" in keys)
            levels.append([])
        else:
            levels[-1].append(b)
    if not levels[-1] or any(len(lv) != len(levels[0]) for lv in levels):
        raise ValueError(f"cannot infer the VAE layout from encoder.down_blocks indices {blocks}")
    dim_mult = tuple(shape(f"encoder.down_blocks.{lv[0]}.conv1.weight")[0] // base_dim for lv in levels)
    kw = dict(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=len(levels[0]),
        temperal_downsample=tuple(temporal),
    )
    return WanVAEConfig(**kw, **_latents_statistics(json_cfg, z_dim, json_path))


def _torch_to_ours(arr: np.ndarray, target: tuple[int, ...], path: str) -> np.ndarray:
    """PyTorch layouts -> ours: Conv3d (O,I,t,h,w)->(t,h,w,I,O), Conv2d (O,I,h,w)->(h,w,I,O),
    1x1 Conv2d (O,I,1,1) -> Linear (I,O), RMS gamma (C,1,1[,1]) -> (C,)."""
    if path.endswith("gamma") or path.endswith("bias"):
        return arr.reshape(-1)
    if arr.ndim == 5 and len(target) == 5:
        return arr.transpose(2, 3, 4, 1, 0)
    if arr.ndim == 4 and len(target) == 4:
        return arr.transpose(2, 3, 1, 0)
    if arr.ndim == 4 and len(target) == 2 and arr.shape[2:] == (1, 1):
        return arr[:, :, 0, 0].T
    raise ValueError(f"cannot convert a tensor of rank {arr.ndim} to shape {target}")


def load_wan_vae(
    path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    config: WanVAEConfig | None = None,
) -> WanVAE:
    """Load a Wan 2.1 VAE from safetensors (file, sharded index or directory; official or diffusers keys).

    Args:
      path: `.safetensors`, `*.safetensors.index.json`, or a directory (a diffusers `vae/` folder).
      dtype: parameter and compute dtype (e.g. jnp.float32, jnp.bfloat16).
      config: the architecture; inferred from the tensor shapes when None (latents statistics from a
        diffusers `config.json` beside the weights; without one, Wan 2.1's for z_dim 16, else mean 0 and
        std 1; config.json statistics without z_dim entries are ignored with a warning, for neutral ones).
    Returns:
      a `WanVAE` holding the checkpoint's weights.
    Raises:
      FileNotFoundError, PickleCheckpointError (a .pth: convert it first), ValueError /
      CheckpointMismatchError naming the offending tensors.
    """
    reader = open_checkpoint(path, prefer="diffusion_pytorch_model")
    with reader:
        keys = set(reader.keys())
        layout = detect_layout(keys)
        if layout == "official":
            # Only the decoder's flat `upsamples` indices depend on the architecture; infer it from
            # the other keys first.
            rename = {official_to_diffusers(k, None): k for k in keys if not k.startswith("decoder.upsamples.")}
        else:
            rename = {k: k for k in keys}
        if config is None:
            try:
                config = _infer_config(
                    lambda k: reader.shape(rename[k]), set(rename), reader.config(), str(reader.config_path)
                )
            except KeyError as e:
                raise CheckpointMismatchError(
                    f"{reader.path}: cannot infer the VAE architecture, tensor {e} ({layout} naming) is missing"
                ) from None
        abstract = nnx.eval_shape(lambda: WanVAE(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype))
        return fill_abstract_model(
            abstract,
            lambda ours: (
                our_path_to_diffusers(ours)
                if layout == "diffusers"
                else diffusers_to_official(our_path_to_diffusers(ours), config)
            ),
            reader,
            _torch_to_ours,
            dtype=dtype,
            what=(
                f"Wan 2.1 VAE ({layout} layout; base_dim={config.base_dim}, dim_mult={config.dim_mult}, "
                f"num_res_blocks={config.num_res_blocks})"
            ),
        )


# ----------------------------------------------------------------------------------------------
# Export (ours -> diffusers `AutoencoderKLWan`)


def _ours_to_torch(arr: np.ndarray, key: str) -> np.ndarray:
    """Inverse of `_torch_to_ours` for the diffusers key `key`."""
    if key.endswith(".gamma"):  # RMS norms: (C,1,1) in the 2D attention blocks, (C,1,1,1) elsewhere
        return arr.reshape(-1, 1, 1) if ".attentions." in key else arr.reshape(-1, 1, 1, 1)
    if arr.ndim == 5:
        return arr.transpose(4, 3, 0, 1, 2)
    if arr.ndim == 4:
        return arr.transpose(3, 2, 0, 1)
    if arr.ndim == 2:  # the attention blocks' 1x1 Conv2d
        return arr.T[:, :, None, None]
    return arr


def export_wan_vae(vae: WanVAE, out_dir: str | os.PathLike) -> os.PathLike:
    """Write `vae` as a diffusers `AutoencoderKLWan` directory (config.json +
    diffusion_pytorch_model.safetensors), loadable with `AutoencoderKLWan.from_pretrained(out_dir)` and
    with `load_wan_vae(out_dir)`. Returns out_dir."""
    import json
    import pathlib

    import jax

    from trackedit_jax.convert.checkpoint_files import write_safetensors

    out_dir = pathlib.Path(out_dir)
    tensors = {}
    for path, var in nnx.to_flat_state(nnx.state(vae, nnx.Param)):
        key = our_path_to_diffusers(path_to_key(path))
        tensors[key] = np.ascontiguousarray(_ours_to_torch(np.asarray(jax.device_get(var[...])), key))
    write_safetensors(tensors, out_dir, basename="diffusion_pytorch_model")
    c = vae.config
    config = {
        "_class_name": "AutoencoderKLWan",
        "base_dim": c.base_dim,
        "z_dim": c.z_dim,
        "dim_mult": list(c.dim_mult),
        "num_res_blocks": c.num_res_blocks,
        "attn_scales": list(c.attn_scales),
        "temperal_downsample": list(c.temperal_downsample),
        "dropout": 0.0,
        "latents_mean": list(c.latents_mean),
        "latents_std": list(c.latents_std),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir
