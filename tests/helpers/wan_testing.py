"""Helpers shared by the Wan DiT tests: tiny diffusers reference models with random weights, and the
same weights written in every layout we read (diffusers, official, ComfyUI-prefixed, sharded).

The official key names are produced here by our own rename table written from the layout description
in docs (independent of the converter under test).
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import torch
from safetensors.numpy import save_file

# diffusers -> official, applied in order to each key
_RENAMES = [
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^blocks\.(\d+)\.attn1\.", r"blocks.\1.self_attn."),
    (r"^blocks\.(\d+)\.attn2\.", r"blocks.\1.cross_attn."),
    (r"_attn\.to_q\.", "_attn.q."),
    (r"_attn\.to_k\.", "_attn.k."),
    (r"_attn\.to_v\.", "_attn.v."),
    (r"_attn\.to_out\.0\.", "_attn.o."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
]


def official_key(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def make_reference(seed: int = 0, **config):
    """A diffusers WanTransformer3DModel with every parameter randomised (norm weights near 1)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("weight") and p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn_like(p) / fan_in**0.5)
            elif "scale_shift_table" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def official_config(model) -> dict:
    c = model.config
    return {
        "model_type": "t2v",
        "dim": c.num_attention_heads * c.attention_head_dim,
        "num_heads": c.num_attention_heads,
        "num_layers": c.num_layers,
        "ffn_dim": c.ffn_dim,
        "freq_dim": c.freq_dim,
        "in_dim": c.in_channels,
        "out_dim": c.out_channels,
        "text_dim": c.text_dim,
        "text_len": 512,
        "patch_size": list(c.patch_size),
        "eps": c.eps,
        "cross_attn_norm": c.cross_attn_norm,
    }


def write_layouts(model, root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Save `model` as: a diffusers directory, an official single file (config.json beside it), a
    ComfyUI-prefixed single file, and an official sharded index. Returns {layout: path to load}."""
    root = pathlib.Path(root)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    official = {official_key(k): v for k, v in sd.items()}
    assert len(official) == len(sd)
    cfg = official_config(model)

    paths = {}
    dif = root / "diffusers"
    model.save_pretrained(dif)
    paths["diffusers"] = dif

    off = root / "official"
    off.mkdir()
    save_file(official, off / "diffusion_pytorch_model.safetensors")
    (off / "config.json").write_text(json.dumps(cfg))
    paths["official"] = off / "diffusion_pytorch_model.safetensors"

    comfy = root / "comfy"
    comfy.mkdir()
    save_file({"model.diffusion_model." + k: v for k, v in official.items()}, comfy / "wan_t2v_comfy.safetensors")
    (comfy / "config.json").write_text(json.dumps(cfg))
    paths["comfy"] = comfy / "wan_t2v_comfy.safetensors"

    sharded = root / "official_sharded"
    sharded.mkdir()
    keys = sorted(official)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: official[k] for k in part}, sharded / name)
        weight_map.update({k: name for k in part})
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (sharded / "config.json").write_text(json.dumps(cfg))
    paths["official_sharded"] = sharded / "diffusion_pytorch_model.safetensors.index.json"
    return paths


def reference_forward(model, x_cl: np.ndarray, t: np.ndarray, context: np.ndarray) -> np.ndarray:
    """diffusers forward on channels-last latents, returned channels-last."""
    with torch.no_grad():
        out = model(
            torch.from_numpy(np.ascontiguousarray(x_cl.transpose(0, 4, 1, 2, 3))),
            torch.from_numpy(t),
            torch.from_numpy(context),
            return_dict=False,
        )[0]
    return out.numpy().transpose(0, 2, 3, 4, 1)


def rel_l2(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def random_inputs(
    seed: int, batch: int, frames: int, height: int, width: int, channels: int, text_len: int, text_dim: int
):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, frames, height, width, channels), dtype=np.float32)
    t = rng.uniform(0, 1000, size=(batch,)).astype(np.float32)
    t[0] = 999.0
    ctx = rng.standard_normal((batch, text_len, text_dim), dtype=np.float32)
    return x, t, ctx
