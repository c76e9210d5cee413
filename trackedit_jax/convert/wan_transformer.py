"""Wan 2.1 transformer checkpoints (official / ComfyUI / diffusers safetensors) <-> `WanDiT`.

Loading is streamed: the module is built abstractly (`nnx.eval_shape`, no memory), then every
parameter is created with `jax.make_array_from_callback`, whose callback reads from the memory-mapped
safetensors only the tensors (for stacked block parameters: only the layers) of the shard it is asked
for, converts them to our layout and returns that slice. Host memory therefore holds the model once
plus one tensor in flight, and with a `mesh` every shard lands directly on its device.

Layouts (keys relative to the optional ComfyUI prefix `model.diffusion_model.`):

| WanDiT parameter                  | official                     | diffusers                                     |
|-----------------------------------|------------------------------|-----------------------------------------------|
| patch_embedding                   | patch_embedding              | patch_embedding                               |
| text_embedding.linear_{1,2}       | text_embedding.{0,2}         | condition_embedder.text_embedder.linear_{1,2} |
| time_embedding.linear_{1,2}       | time_embedding.{0,2}         | condition_embedder.time_embedder.linear_{1,2} |
| time_projection                   | time_projection.1            | condition_embedder.time_proj                  |
| blocks.modulation [i]             | blocks.i.modulation          | blocks.i.scale_shift_table                    |
| blocks.self_attn.{q,k,v,o} [i]    | blocks.i.self_attn.{q,k,v,o} | blocks.i.attn1.{to_q,to_k,to_v,to_out.0}      |
| blocks.*_attn.norm_{q,k} [i]      | blocks.i.*_attn.norm_{q,k}   | blocks.i.attn{1,2}.norm_{q,k}                 |
| blocks.cross_attn.* [i]           | blocks.i.cross_attn.*        | blocks.i.attn2.*                              |
| blocks.cross_norm [i]             | blocks.i.norm3               | blocks.i.norm2                                |
| blocks.ffn.{up,down} [i]          | blocks.i.ffn.{0,2}           | blocks.i.ffn.net.0.proj, blocks.i.ffn.net.2   |
| head.linear                       | head.head                    | proj_out                                      |
| head.modulation                   | head.modulation              | scale_shift_table                             |

Linear weights are transposed ((out, in) -> (in, out)), the Conv3d patch weight (D, C, pt, ph, pw)
becomes a (pt*ph*pw*C, D) matmul kernel, and the (1, n, D) modulation tables drop their leading 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import zlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trackedit_jax.convert.checkpoint_files import CheckpointReader, open_checkpoint, write_safetensors
from trackedit_jax.models.lora import lora_layers, merge_kernel
from trackedit_jax.models.wan.config import WanConfig
from trackedit_jax.models.wan.dit import WanDiT
from trackedit_jax.parallel.rules import logical_axes_of
from trackedit_jax.parallel.sharding import logical_sharding

COMFY_PREFIX = "model.diffusion_model."
LAYOUTS = ("official", "diffusers")

# Known released widths -> heads (head_dim 128 in both), used only when no config.json is found.
_KNOWN_HEADS = {1536: 12, 5120: 40}


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One checkpoint tensor <-> one WanDiT parameter (or one layer of a stacked parameter)."""

    path: tuple[str, ...]  # our parameter path
    official: str  # key template ("{i}" = block index)
    diffusers: str
    kind: str  # linear | vector | conv | modulation
    stacked: bool

    def key(self, layout: str, layer: int | None = None) -> str:
        template = self.official if layout == "official" else self.diffusers
        return template.format(i=layer) if self.stacked else template


def _linear(path, official, diffusers, stacked=False):
    return [
        _Entry(path + ("kernel",), official + ".weight", diffusers + ".weight", "linear", stacked),
        _Entry(path + ("bias",), official + ".bias", diffusers + ".bias", "vector", stacked),
    ]


def _entries(config: WanConfig) -> list[_Entry]:
    """Every checkpoint tensor of a Wan T2V model with this config."""
    out = [
        _Entry(("patch_embedding", "kernel"), "patch_embedding.weight", "patch_embedding.weight", "conv", False),
        _Entry(("patch_embedding", "bias"), "patch_embedding.bias", "patch_embedding.bias", "vector", False),
        *_linear(("text_embedding", "linear_1"), "text_embedding.0", "condition_embedder.text_embedder.linear_1"),
        *_linear(("text_embedding", "linear_2"), "text_embedding.2", "condition_embedder.text_embedder.linear_2"),
        *_linear(("time_embedding", "linear_1"), "time_embedding.0", "condition_embedder.time_embedder.linear_1"),
        *_linear(("time_embedding", "linear_2"), "time_embedding.2", "condition_embedder.time_embedder.linear_2"),
        *_linear(("time_projection",), "time_projection.1", "condition_embedder.time_proj"),
        *_linear(("head", "linear"), "head.head", "proj_out"),
        _Entry(("head", "modulation"), "head.modulation", "scale_shift_table", "modulation", False),
    ]
    blk = lambda p: ("blocks",) + p  # noqa: E731
    out.append(
        _Entry(blk(("modulation",)), "blocks.{i}.modulation", "blocks.{i}.scale_shift_table", "modulation", True)
    )
    for ours, official, diffusers in (("self_attn", "self_attn", "attn1"), ("cross_attn", "cross_attn", "attn2")):
        for proj, off_proj, dif_proj in (
            ("q", "q", "to_q"),
            ("k", "k", "to_k"),
            ("v", "v", "to_v"),
            ("o", "o", "to_out.0"),
        ):
            out += _linear(
                blk((ours, proj)), f"blocks.{{i}}.{official}.{off_proj}", f"blocks.{{i}}.{diffusers}.{dif_proj}", True
            )
        if config.qk_norm:
            for n in ("norm_q", "norm_k"):
                out.append(
                    _Entry(
                        blk((ours, n, "scale")),
                        f"blocks.{{i}}.{official}.{n}.weight",
                        f"blocks.{{i}}.{diffusers}.{n}.weight",
                        "vector",
                        True,
                    )
                )
    if config.cross_attn_norm:
        for ours, theirs in (("scale", "weight"), ("bias", "bias")):
            out.append(
                _Entry(
                    blk(("cross_norm", ours)),
                    f"blocks.{{i}}.norm3.{theirs}",
                    f"blocks.{{i}}.norm2.{theirs}",
                    "vector",
                    True,
                )
            )
    out += _linear(blk(("ffn", "up")), "blocks.{i}.ffn.0", "blocks.{i}.ffn.net.0.proj", True)
    out += _linear(blk(("ffn", "down")), "blocks.{i}.ffn.2", "blocks.{i}.ffn.net.2", True)
    return out


# --------------------------------------------------------------------------------------------------
# layout conversion of single tensors
# --------------------------------------------------------------------------------------------------


def _torch_shape(kind: str, ours: tuple[int, ...], config: WanConfig) -> tuple[int, ...]:
    """Shape of the checkpoint tensor for our (per-layer) parameter shape."""
    if kind == "linear":
        return ours[::-1]
    if kind == "conv":
        return (config.dim, config.in_dim) + config.patch_size
    if kind == "modulation":
        return (1,) + ours
    return ours


def _to_ours(kind: str, w: np.ndarray, config: WanConfig) -> np.ndarray:
    if kind == "linear":
        return w.T
    if kind == "conv":  # (D, C, pt, ph, pw) -> (pt, ph, pw, C, D) -> (pt*ph*pw*C, D)
        return w.transpose(2, 3, 4, 1, 0).reshape(-1, w.shape[0])
    if kind == "modulation":
        return w[0]
    return w


def _to_torch(kind: str, w: np.ndarray, config: WanConfig) -> np.ndarray:
    if kind == "linear":
        return w.T
    if kind == "conv":
        pt, ph, pw = config.patch_size
        return w.reshape(pt, ph, pw, config.in_dim, config.dim).transpose(4, 3, 0, 1, 2)
    if kind == "modulation":
        return w[None]
    return w


# --------------------------------------------------------------------------------------------------
# reading a checkpoint
# --------------------------------------------------------------------------------------------------


class _View:
    """A checkpoint seen without its ComfyUI prefix, with its layout detected."""

    def __init__(self, reader: CheckpointReader):
        self.reader = reader
        keys = reader.keys()
        prefixed = [k for k in keys if k.startswith(COMFY_PREFIX)]
        self.prefix = COMFY_PREFIX if prefixed and len(prefixed) == len(keys) else ""
        if prefixed and len(prefixed) != len(keys):
            others = [k for k in keys if not k.startswith(COMFY_PREFIX)][:5]
            raise ValueError(
                f"{reader.path}: some keys carry the prefix {COMFY_PREFIX!r} and some do not (e.g. {others})"
            )
        self.keys = {k[len(self.prefix) :] for k in keys}
        if "condition_embedder.time_proj.weight" in self.keys:
            self.layout = "diffusers"
        elif "time_projection.1.weight" in self.keys:
            self.layout = "official"
        else:
            raise ValueError(
                f"{reader.path}: not a Wan 2.1 transformer checkpoint (neither 'time_projection.1.weight' nor "
                f"'condition_embedder.time_proj.weight' found; first keys: {sorted(self.keys)[:8]})"
            )

    def shape(self, key: str) -> tuple[int, ...]:
        return self.reader.shape(self.prefix + key)

    def get(self, key: str) -> np.ndarray:
        return self.reader.get(self.prefix + key)

    def num_layers(self) -> int:
        idx = {int(m.group(1)) for k in self.keys if (m := re.match(r"blocks\.(\d+)\.", k))}
        if not idx:
            raise ValueError(f"{self.reader.path}: no 'blocks.<i>.' tensors found")
        if idx != set(range(max(idx) + 1)):
            raise ValueError(f"{self.reader.path}: block indices are not contiguous: {sorted(idx)}")
        return max(idx) + 1


def infer_config(view: _View, **overrides) -> WanConfig:
    """A WanConfig from tensor shapes alone (used when no config.json lies beside the weights).

    dim, in_dim and patch_size come from the patch embedding, text_dim and freq_dim from the first
    text / time layers, ffn_dim from block 0, out_dim from the head, num_layers from the block
    indices, qk_norm / cross_attn_norm from the presence of their weights. The head count is not
    stored anywhere: the released widths are known (1536 -> 12, 5120 -> 40), otherwise head_dim 128
    is assumed; pass `config=` when that is wrong.
    """
    off = view.layout == "official"
    patch = view.shape("patch_embedding.weight")
    dim, in_dim, ps = patch[0], patch[1], tuple(patch[2:])
    text = view.shape("text_embedding.0.weight" if off else "condition_embedder.text_embedder.linear_1.weight")
    time = view.shape("time_embedding.0.weight" if off else "condition_embedder.time_embedder.linear_1.weight")
    ffn = view.shape("blocks.0.ffn.0.weight" if off else "blocks.0.ffn.net.0.proj.weight")
    head = view.shape("head.head.weight" if off else "proj_out.weight")
    if dim in _KNOWN_HEADS:
        heads = _KNOWN_HEADS[dim]
    elif dim % 128 == 0:
        heads = dim // 128
    else:
        raise ValueError(
            f"{view.reader.path}: no config.json and the head count of a width-{dim} model cannot be inferred; "
            "pass config="
        )
    kw = dict(
        dim=dim,
        num_heads=heads,
        num_layers=view.num_layers(),
        ffn_dim=ffn[0],
        freq_dim=time[1],
        in_dim=in_dim,
        out_dim=head[0] // int(np.prod(ps)),
        text_dim=text[1],
        patch_size=ps,
        qk_norm=("blocks.0.self_attn.norm_q.weight" if off else "blocks.0.attn1.norm_q.weight") in view.keys,
        cross_attn_norm=("blocks.0.norm3.weight" if off else "blocks.0.norm2.weight") in view.keys,
    )
    kw.update(overrides)
    return WanConfig(**kw)


def _check_keys(view: _View, entries: list[_Entry], config: WanConfig, abstract: dict) -> None:
    """ValueError naming every missing, unexpected or mis-shaped tensor (first few of each)."""
    expected: dict[str, tuple[int, ...]] = {}
    for e in entries:
        shape = abstract[e.path].shape
        per_layer = shape[1:] if e.stacked else shape
        torch_shape = _torch_shape(e.kind, tuple(per_layer), config)
        for layer in range(config.num_layers) if e.stacked else [None]:
            expected[e.key(view.layout, layer)] = torch_shape
    problems = []
    missing = sorted(set(expected) - view.keys)
    if missing:
        problems.append(
            "missing keys: "
            + ", ".join(f"{k} (expected shape {expected[k]})" for k in missing[:10])
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )
    unexpected = sorted(view.keys - set(expected))
    if unexpected:
        problems.append(
            "unexpected keys: "
            + ", ".join(f"{k} {view.shape(k)}" for k in unexpected[:10])
            + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else "")
        )
    wrong = [(k, s, view.shape(k)) for k, s in sorted(expected.items()) if k in view.keys and view.shape(k) != s]
    if wrong:
        problems.append(
            "mis-shaped keys: "
            + ", ".join(f"{k} expected {s} got {g}" for k, s, g in wrong[:10])
            + (f" and {len(wrong) - 10} more" if len(wrong) > 10 else "")
        )
    if problems:
        raise ValueError(
            f"{view.reader.path} ({view.layout} layout{', ComfyUI prefix' if view.prefix else ''}) does not match "
            f"the Wan config (dim {config.dim}, {config.num_layers} layers, ffn {config.ffn_dim}, in {config.in_dim}, "
            f"out {config.out_dim}, text {config.text_dim}): " + "; ".join(problems)
        )


def _param_sharding(mesh: jax.sharding.Mesh | None, logical_axes, shape) -> jax.sharding.Sharding:
    """NamedSharding from logical axis names via the rules table (`parallel.sharding.logical_sharding`,
    the fitting rule parameters and activations share); one device when there is no mesh."""
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return logical_sharding(logical_axes, shape, mesh)


def _abstract_model(config: WanConfig):
    abstract = nnx.eval_shape(lambda: WanDiT(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return graphdef, state


def load_wan_transformer(
    path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
    config: WanConfig | None = None,
    lora_seed: int = 0,
) -> WanDiT:
    """Load a Wan 2.1 T2V transformer into a `WanDiT`.

    Args:
      path: a `.safetensors` file, a `*.safetensors.index.json` or a directory, in the official
        layout (optionally with the ComfyUI prefix `model.diffusion_model.`) or the diffusers layout.
        Pickle checkpoints (.bin/.pt/.pth) are refused with a message to convert them to safetensors.
      dtype: parameter dtype (float32 or bfloat16); the compute dtype is `config.dtype`.
      mesh: if given, every parameter is placed directly on the NamedSharding its logical axes map to
        through the rules table (`trackedit_jax.parallel.rules`); else on the default device.
      config: overrides the `config.json` beside the weights (official or diffusers format). With
        neither, the config is inferred from tensor shapes (see `infer_config`). A config with
        `lora_rank > 0` gets fresh adapters (A He-uniform from `lora_seed`, B zero).
    Returns:
      the model; `model(x, t, context)` equals the reference forward pass.
    Raises:
      ValueError naming any missing, unexpected or mis-shaped key with the shapes.
    """
    reader = open_checkpoint(path, prefer="diffusion_pytorch_model")
    view = _View(reader)
    if config is None:
        cfg_json = reader.config()
        config = WanConfig.from_json(cfg_json) if cfg_json is not None else infer_config(view)
    config = config.replace(param_dtype=dtype)
    entries = _entries(config)
    graphdef, abstract_state = _abstract_model(config)
    abstract = dict(nnx.to_flat_state(abstract_state))
    _check_keys(view, entries, config, abstract)
    by_path = {e.path: e for e in entries}
    np_dtype = jnp.dtype(dtype)

    def build(path: tuple, var: nnx.Variable) -> nnx.Variable:
        shape, logical = var.shape, logical_axes_of(var)
        sharding = _param_sharding(mesh, logical, shape)
        entry = by_path.get(path)
        if entry is None:
            if not isinstance(var, nnx.LoRAParam):
                raise ValueError(f"no checkpoint tensor maps to parameter {'.'.join(map(str, path))} {shape}")
            return var.replace(_init_lora(path, shape, np_dtype, sharding, lora_seed))

        def read(layer: int | None) -> np.ndarray:
            return _to_ours(entry.kind, view.get(entry.key(view.layout, layer)), config)

        def callback(index: tuple) -> np.ndarray:
            if entry.stacked:
                layers = range(shape[0])[index[0]]
                out = np.stack([read(i)[index[1:]] for i in layers])
            else:
                out = read(None)[index]
            return np.ascontiguousarray(out.astype(np_dtype))

        return var.replace(jax.make_array_from_callback(shape, sharding, callback, dtype=np_dtype))

    state = nnx.map_state(build, abstract_state)
    reader.close()
    return nnx.merge(graphdef, state)


def _init_lora(path: tuple, shape, dtype, sharding, seed: int) -> jax.Array:
    """Fresh adapter values: B = 0, A He-uniform over its input axis (numpy, seeded by path)."""
    if path[-1] == "lora_b":
        value = np.zeros(shape, dtype)
    else:
        rng = np.random.default_rng([seed, zlib.crc32(".".join(map(str, path)).encode())])
        limit = np.sqrt(6.0 / shape[-2])
        value = rng.uniform(-limit, limit, size=shape).astype(dtype)
    return jax.device_put(value, sharding)


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------


def _layer_tensor(flat: dict, path: tuple, adapters: dict, layer: int | None) -> np.ndarray:
    """One layer's slice (layer=None: the whole unstacked parameter) of parameter `path` as numpy,
    with its LoRA adapter folded in by `merge_kernel` when `adapters` holds one for this kernel."""
    value = flat[path][...]
    value = value if layer is None else value[layer]
    lora = adapters.get(path)
    if lora is not None:
        a, b = lora.lora_a[...], lora.lora_b[...]
        if layer is not None:
            a, b = a[layer], b[layer]
        value = merge_kernel(value, a, b, lora.scale)
    return np.asarray(jax.device_get(value))


def wan_state_dict(model: WanDiT, layout: str = "diffusers", dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """Stream (key, tensor) pairs of `model` in a reference layout, LoRA adapters merged into kernels.
    `dtype` (e.g. "bfloat16") casts every tensor; default: the parameter dtype."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    config = model.config
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    # kernel path -> its LoRALinear; merged one layer at a time so no merged copy of the model is held
    adapters = {tuple(path) + ("kernel",): layer for path, layer in lora_layers(model)}
    for e in _entries(config):
        for layer in range(config.num_layers) if e.stacked else [None]:
            w = _to_torch(e.kind, _layer_tensor(flat, e.path, adapters, layer), config)
            if dtype is not None:
                w = w.astype(jnp.dtype(dtype))
            yield e.key(layout, layer), np.ascontiguousarray(w)


def export_wan_transformer(
    model: WanDiT,
    out_dir: str | os.PathLike,
    *,
    dtype=None,
    max_shard_bytes: int = 5 * 1024**3,
) -> pathlib.Path:
    """Write `model` as a diffusers `WanTransformer3DModel` directory: `config.json` plus
    `diffusion_pytorch_model.safetensors` (sharded with an index above `max_shard_bytes`), loadable
    with `WanTransformer3DModel.from_pretrained(out_dir)` and with `load_wan_transformer(out_dir)`.
    LoRA adapters are merged into the kernels. Returns `out_dir`."""
    if not isinstance(model, WanDiT):
        raise ValueError(f"model must be a WanDiT; got {type(model).__name__}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_json = model.config.to_diffusers_json()
    tensors = dict(wan_state_dict(model, "diffusers", dtype))
    write_safetensors(tensors, out_dir, basename="diffusion_pytorch_model", max_shard_bytes=max_shard_bytes)
    tmp = out_dir / "config.json.tmp"
    with open(tmp, "w") as f:
        json.dump(config_json, f, indent=2)
    os.replace(tmp, out_dir / "config.json")
    return out_dir
