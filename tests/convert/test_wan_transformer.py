"""Loading Wan transformers from every layout, against diffusers' WanTransformer3DModel (random weights),
and exporting back."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file
from torch_reference import HAVE_TORCH, needs_torch

from trackedit_jax.convert import PickleCheckpointError, export_wan_transformer, load_wan_transformer
from trackedit_jax.models.lora import merge_lora
from trackedit_jax.models.wan.config import WanConfig
from trackedit_jax.parallel.rules import MESH_AXES

if HAVE_TORCH:
    import torch
    from wan_testing import make_reference, random_inputs, reference_forward, rel_l2, write_layouts

pytestmark = needs_torch

# name -> (diffusers config, input (B, F, H, W), text length); text lengths differ from text_len (512)
CASES = {
    "odd_frames_batch2": (
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=32,
            ffn_dim=32,
            num_layers=2,
            rope_max_seq_len=32,
        ),
        (2, 3, 6, 8),
        7,
    ),
    "no_cross_norm_out_ne_in": (
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=3,
            attention_head_dim=16,
            in_channels=6,
            out_channels=5,
            text_dim=24,
            freq_dim=16,
            ffn_dim=40,
            num_layers=3,
            cross_attn_norm=False,
            rope_max_seq_len=32,
        ),
        (1, 5, 4, 10),
        3,
    ),
    "temporal_patch": (
        dict(
            patch_size=(2, 2, 2),
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            text_dim=8,
            freq_dim=8,
            ffn_dim=16,
            num_layers=2,
            rope_max_seq_len=32,
        ),
        (2, 4, 4, 6),
        12,
    ),
}
LAYOUTS = ("diffusers", "official", "comfy", "official_sharded")

_forward = nnx.jit(lambda model, x, t, c: model(x, t, c))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (torch reference, {layout: path}, (x, t, context), reference output), built once."""
    out = {}
    for seed, (name, (cfg, (b, f, h, w), text_len)) in enumerate(CASES.items()):
        ref = make_reference(seed, **cfg)
        paths = write_layouts(ref, tmp_path_factory.mktemp(name))
        inputs = random_inputs(seed, b, f, h, w, cfg["in_channels"], text_len, cfg["text_dim"])
        out[name] = (ref, paths, inputs, reference_forward(ref, *inputs))
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES))
def test_parity_fp32_every_layout(cases, case, layout):
    _, paths, (x, t, ctx), expected = cases[case]
    model = load_wan_transformer(paths[layout])
    got = np.asarray(_forward(model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
    assert got.shape == expected.shape
    err = rel_l2(got, expected)
    print(f"{case}/{layout}: relative L2 {err:.2e}")
    assert err <= 1e-5


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_parity_bf16_compute(cases, param_dtype):
    _, paths, (x, t, ctx), expected = cases["odd_frames_batch2"]
    cfg = json.loads((paths["diffusers"] / "config.json").read_text())
    config = WanConfig.from_diffusers_json(cfg, dtype="bfloat16")
    model = load_wan_transformer(paths["diffusers"], dtype=jnp.dtype(param_dtype), config=config)
    assert model.blocks.self_attn.q.kernel[...].dtype == jnp.dtype(param_dtype)
    got = np.asarray(_forward(model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
    err = rel_l2(got, expected)
    print(f"bf16 compute, {param_dtype} params: relative L2 {err:.2e}")
    assert err <= 2e-2


def test_export_roundtrip_and_diffusers_reload(cases, tmp_path):
    from diffusers import WanTransformer3DModel

    ref, paths, (x, t, ctx), expected = cases["no_cross_norm_out_ne_in"]
    model = load_wan_transformer(paths["comfy"])
    out_dir = export_wan_transformer(model, tmp_path / "export")
    # bit-identical parameters after reload
    again = load_wan_transformer(out_dir)
    a, b = nnx.to_flat_state(nnx.state(model)), dict(nnx.to_flat_state(nnx.state(again)))
    for path, var in a:
        np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(b[path][...]), err_msg=str(path))
    # the exported tensors are exactly the reference's
    exported = load_file(str(out_dir / "diffusion_pytorch_model.safetensors"))
    original = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    assert set(exported) == set(original)
    for k in original:
        np.testing.assert_array_equal(exported[k], original[k], err_msg=k)
    # diffusers reads the directory and computes the same function (torch itself is not bit-reproducible
    # between two model instances with identical weights: ~3e-7)
    reloaded = WanTransformer3DModel.from_pretrained(out_dir).eval()
    torch_out = reference_forward(reloaded, x, t, ctx)
    assert rel_l2(torch_out, expected) <= 1e-6
    ours = np.asarray(_forward(again, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
    assert rel_l2(ours, torch_out) <= 1e-5


def test_bfloat16_checkpoint_roundtrip(cases, tmp_path):
    """A bfloat16 export (what released Comfy files hold) reloads bit-exactly as bfloat16 parameters."""
    _, paths, _, _ = cases["temporal_patch"]
    model = load_wan_transformer(paths["official"])
    out_dir = export_wan_transformer(model, tmp_path / "bf16", dtype="bfloat16")
    assert load_file(str(out_dir / "diffusion_pytorch_model.safetensors"))["proj_out.weight"].dtype == jnp.bfloat16
    again = load_wan_transformer(out_dir, dtype=jnp.bfloat16)
    b = dict(nnx.to_flat_state(nnx.state(again)))
    for path, var in nnx.to_flat_state(nnx.state(model)):
        assert b[path][...].dtype == jnp.bfloat16
        np.testing.assert_array_equal(
            np.asarray(b[path][...]), np.asarray(var[...].astype(jnp.bfloat16)), err_msg=str(path)
        )


def test_export_merges_lora(cases, tmp_path):
    from diffusers import WanTransformer3DModel

    _, paths, (x, t, ctx), _ = cases["odd_frames_batch2"]
    cfg = json.loads((paths["diffusers"] / "config.json").read_text())
    model = load_wan_transformer(
        paths["diffusers"], config=WanConfig.from_diffusers_json(cfg, lora_rank=3, lora_alpha=6.0)
    )
    b = model.blocks.ffn.up.lora_b
    b[...] = 0.3 * jax.random.normal(jax.random.key(1), b.shape)
    ours = np.asarray(_forward(model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
    reloaded = WanTransformer3DModel.from_pretrained(export_wan_transformer(model, tmp_path / "merged")).eval()
    err = rel_l2(reference_forward(reloaded, x, t, ctx), ours)
    assert err <= 1e-5, err
    merge_lora(model)
    assert rel_l2(np.asarray(_forward(model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))), ours) <= 1e-5


def test_load_onto_mesh(cases):
    _, paths, (x, t, ctx), expected = cases["odd_frames_batch2"]
    mesh = jax.make_mesh((1, 4, 1, 2), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
    model = load_wan_transformer(paths["official_sharded"], mesh=mesh)
    kernel = model.blocks.ffn.up.kernel[...]  # logical ("layers", "embed", "mlp") -> (None, fsdp, tensor)
    assert kernel.sharding == jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "fsdp", "tensor"))
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (2, 24 // 4, 32 // 2)
    with jax.set_mesh(mesh):
        got = np.asarray(_forward(model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
    assert rel_l2(got, expected) <= 1e-5


def test_config_inferred_without_config_json(tmp_path):
    """Width 256 (2 heads of 128, the released head size): every hyper-parameter from the shapes."""
    cfg = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=128,
        in_channels=4,
        out_channels=3,
        text_dim=8,
        freq_dim=8,
        ffn_dim=16,
        num_layers=1,
        rope_max_seq_len=32,
    )
    ref = make_reference(7, **cfg)
    paths = write_layouts(ref, tmp_path)
    (paths["comfy"].parent / "config.json").unlink()
    model = load_wan_transformer(paths["comfy"])
    assert (model.config.dim, model.config.num_heads, model.config.out_dim, model.config.num_layers) == (256, 2, 3, 1)
    x, t, ctx = random_inputs(3, 1, 2, 4, 4, 4, 5, 8)
    got = np.asarray(_forward(model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)))
    assert rel_l2(got, reference_forward(ref, x, t, ctx)) <= 1e-5


def _copy_with(src_file, dst, change):
    tensors = load_file(str(src_file))
    change(tensors)
    dst.mkdir()
    save_file(tensors, dst / "diffusion_pytorch_model.safetensors")
    (dst / "config.json").write_text((src_file.parent / "config.json").read_text())
    return dst


def test_bad_checkpoints_name_key_and_shapes(cases, tmp_path):
    _, paths, _, _ = cases["odd_frames_batch2"]
    src = paths["official"]

    missing = _copy_with(src, tmp_path / "missing", lambda t: t.pop("blocks.1.ffn.2.weight"))
    with pytest.raises(ValueError, match=r"missing keys: blocks\.1\.ffn\.2\.weight \(expected shape \(24, 32\)\)"):
        load_wan_transformer(missing)

    extra = _copy_with(
        src, tmp_path / "extra", lambda t: t.update({"blocks.0.img_emb.w": np.zeros((3, 2), np.float32)})
    )
    with pytest.raises(ValueError, match=r"unexpected keys: blocks\.0\.img_emb\.w \(3, 2\)"):
        load_wan_transformer(extra)

    def reshape(t):
        t["blocks.0.self_attn.q.weight"] = np.zeros((24, 20), np.float32)

    wrong = _copy_with(src, tmp_path / "wrong", reshape)
    with pytest.raises(ValueError, match=r"blocks\.0\.self_attn\.q\.weight expected \(24, 24\) got \(24, 20\)"):
        load_wan_transformer(wrong)

    (tmp_path / "pickle").mkdir()
    torch.save({"a": torch.zeros(1)}, tmp_path / "pickle" / "model.pt")
    with pytest.raises(PickleCheckpointError, match="safetensors"):
        load_wan_transformer(tmp_path / "pickle" / "model.pt")

    (tmp_path / "other").mkdir()
    save_file({"foo.weight": np.zeros(2, np.float32)}, tmp_path / "other" / "x.safetensors")
    with pytest.raises(ValueError, match="not a Wan 2.1 transformer checkpoint"):
        load_wan_transformer(tmp_path / "other" / "x.safetensors")
