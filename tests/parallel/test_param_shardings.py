"""Golden parameter shardings of a small EditByTrack, and the one fitting rule they come from.

The golden table `golden/edit_model_shardings.json` holds {mesh case: {parameter path: {shape, spec}}}
for `configs/tiny_cpu.py` (LoRA adapters on, "shared" RoPE so the side embedding exists), built
abstractly and placed on simulated 8-device meshes. A change to a logical axis name, to the rules table
or to the fitting rule shows up here as a readable diff. After an intended change, regenerate with

    UPDATE_GOLDEN=1 nice -n 19 python -m pytest -q tests/parallel/test_param_shardings.py

and review the JSON diff.
"""

import json
import os
import pathlib

import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs.tiny_cpu import get_config
from trackedit_jax.parallel import (
    batch_sharding,
    data_parallel_size,
    fit_spec,
    logical_axes_of,
    make_mesh,
    mesh_axes,
    param,
    state_shardings,
)
from trackedit_jax.train.build import build_edit_model

GOLDEN = pathlib.Path(__file__).parent / "golden" / "edit_model_shardings.json"
MESHES = {
    "data2_fsdp4": {"data": 2, "fsdp": 4},
    "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
}


def _abstract_params():
    """nnx.State of the tiny_cpu EditByTrack's parameters (LoRA included), shapes only."""
    config = get_config()
    config.lora.mode = "lora"
    config.model.rope_mode = "shared"
    model = nnx.eval_shape(lambda: build_edit_model(config))
    return nnx.state(model, nnx.Param)


def _spec_json(spec: P, ndim: int) -> list:
    """PartitionSpec -> JSON list, one entry per dimension (null, "axis" or ["axis", ...])."""
    entries = list(spec) + [None] * (ndim - len(spec))
    return [list(e) if isinstance(e, tuple) else e for e in entries]


def _table(state, mesh_sizes: dict) -> dict:
    """{parameter path: {"shape": [...], "spec": [...]}} on a mesh of `mesh_sizes`."""
    shardings = dict(nnx.to_flat_state(state_shardings(state, make_mesh(mesh_sizes))))
    out = {}
    for path, var in nnx.to_flat_state(state):
        key = "/".join(map(str, path))
        out[key] = {"shape": list(var.shape), "spec": _spec_json(shardings[path].spec, len(var.shape))}
    return out


def _dump(tables: dict) -> str:
    """The golden JSON, one line per parameter so that a review diff reads line by line."""
    cases = []
    for case in sorted(tables):
        rows = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(tables[case].items())]
        cases.append(f" {json.dumps(case)}: {{\n" + ",\n".join(rows) + "\n }")
    return "{\n" + ",\n".join(cases) + "\n}\n"


def _diff(want: dict, got: dict) -> list[str]:
    lines = [f"missing  {k}: golden {want[k]}" for k in sorted(set(want) - set(got))]
    lines += [f"extra    {k}: now {got[k]}" for k in sorted(set(got) - set(want))]
    common = sorted(set(want) & set(got))
    lines += [f"changed  {k}: golden {want[k]} -> now {got[k]}" for k in common if want[k] != got[k]]
    return lines


@pytest.fixture(scope="module")
def abstract_params():
    return _abstract_params()


def test_every_parameter_carries_logical_axes(abstract_params):
    missing = ["/".join(map(str, p)) for p, v in nnx.to_flat_state(abstract_params) if logical_axes_of(v) is None]
    assert not missing, f"parameters without logical axes (silently replicated on a mesh): {missing}"


def test_parameter_shardings_match_the_golden_table(abstract_params):
    got = {case: _table(abstract_params, sizes) for case, sizes in MESHES.items()}
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(_dump(got))
    want = json.loads(GOLDEN.read_text())
    report = []
    for case in sorted(set(want) | set(got)):
        lines = _diff(want.get(case, {}), got.get(case, {}))
        if lines:
            report.append(f"[{case}] mesh {MESHES.get(case)}:")
            report.extend("  " + line for line in lines)
    print("\n".join(report))
    assert not report, "parameter shardings differ from the golden table:\n" + "\n".join(report)


def test_golden_table_shards_the_conditioner():
    """Spot checks a reader can verify by hand against the rules table (embed -> fsdp, mlp/heads -> tensor)."""
    table = json.loads(GOLDEN.read_text())["data2_fsdp2_tensor2"]
    assert table["conditioner/temporal/0/fc1/kernel"]["spec"] == ["fsdp", "tensor"]
    assert table["conditioner/sample_attn/q/kernel"]["spec"] == ["fsdp", "tensor"]
    assert table["conditioner/null_key"]["spec"] == ["tensor"]
    assert table["side_embedding"]["spec"] == [None, "fsdp"]


# ---------------------------------------------------------------------------------------------------
# the one fitting rule, `param`, and mesh axes through the table


def test_fit_spec_one_rule_for_every_array():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    # a multi-axis entry is kept whole or dropped whole: 2 is divisible by data but not by data*fsdp
    assert fit_spec((2, 8), ("act_batch", "act_embed"), mesh) == P(None, None)
    assert fit_spec((4, 8), ("act_batch", "act_embed"), mesh) == P(("data", "fsdp"), None)
    # a mesh axis serves one dimension only: the second "embed" is replicated
    assert fit_spec((8, 8), ("embed", "embed"), mesh) == P("fsdp", None)
    assert fit_spec((6, 3), ("embed", "mlp"), mesh) == P("fsdp", None)
    # size-1 axes never appear (context is 1 here)
    assert fit_spec((4, 8), ("act_batch", "act_length"), mesh) == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="do not match array rank 2"):
        fit_spec((4, 8), ("embed",), mesh)


def test_param_checks_its_logical_axes_and_draws_keys_like_the_initializer():
    p = param(nnx.Rngs(0), nnx.initializers.normal(0.02), (4, 6), ("embed", "mlp"), jnp.float32)
    assert logical_axes_of(p) == ("embed", "mlp") and isinstance(p, nnx.Param)
    want = nnx.initializers.normal(0.02)(nnx.Rngs(0).params(), (4, 6), jnp.float32)
    assert bool(jnp.array_equal(p[...], want))
    lora = param(None, nnx.initializers.zeros, (3,), ("lora",), jnp.float32, nnx.LoRAParam)
    assert isinstance(lora, nnx.LoRAParam)
    with pytest.raises(ValueError, match="do not match parameter shape"):
        param(None, nnx.initializers.zeros, (3, 4), ("embed",), jnp.float32)
    with pytest.raises(ValueError, match="unknown logical axis 'bogus'"):
        param(None, nnx.initializers.zeros, (3,), ("bogus",), jnp.float32)


def test_mesh_axes_come_from_the_table():
    mesh = make_mesh({"data": 2, "fsdp": 4})
    assert mesh_axes("act_batch") == ("data", "fsdp")
    assert mesh_axes("act_length") == ("context",) and mesh_axes("norm") == ()
    assert data_parallel_size(mesh) == 8
    assert batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
