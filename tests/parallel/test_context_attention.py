"""Context-parallel attention (ulysses, ring, q-split cross-attention) on 8 simulated CPU devices.

Every sharded result is compared with the unsharded dense reference `attention(impl="xla")` computed
with no mesh: forward values and the gradients of a random projection of the output w.r.t. q, k, v.
The compiled HLO shows which collectives each path uses.
"""

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from trackedit_jax.parallel import context_attention as ca
from trackedit_jax.parallel import make_mesh
from trackedit_jax.parallel.attention import attention
from trackedit_jax.parallel.rules import activation_spec

MESH_A = {"data": 1, "fsdp": 2, "context": 4, "tensor": 1}
MESH_B = {"data": 2, "fsdp": 1, "context": 2, "tensor": 2}
QKV_AXES = ("act_batch", "act_length", "act_heads", None)


def _inputs(seed, batch, len_q, len_kv, heads, head_dim=8, masked=True, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (batch, len_q, heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (batch, len_kv, heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (batch, len_kv, heads, head_dim), dtype)
    cot = jax.random.normal(keys[3], (batch, len_q, heads, head_dim), jnp.float32)
    mask = None
    if masked:
        mask = jax.random.uniform(keys[4], (batch, len_kv)) > 0.3
        mask = mask.at[:, 0].set(True)
    return q, k, v, mask, cot


def _value_and_grads(attn, q, k, v, mask, cot):
    def loss(q, k, v):
        out = attn(q, k, v, mask)
        return jnp.sum(out.astype(jnp.float32) * cot), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


@jax.jit
def _reference(q, k, v, mask, cot):
    return _value_and_grads(lambda q, k, v, m: attention(q, k, v, mask=m, impl="xla"), q, k, v, mask, cot)


def _sharded(mesh, strategy, q, k, v, mask, cot, impl="xla", interpret=False):
    """Runs value-and-grad under jit with explicit in/out shardings on `mesh`."""
    qs = NamedSharding(mesh, activation_spec(q.shape, QKV_AXES, mesh))
    ks = NamedSharding(mesh, activation_spec(k.shape, QKV_AXES, mesh))
    ms = None if mask is None else NamedSharding(mesh, activation_spec(mask.shape, ("act_batch", "act_length"), mesh))

    def run(q, k, v, mask, cot):
        attn = lambda q, k, v, m: attention(  # noqa: E731
            q, k, v, mask=m, impl=impl, interpret=interpret, context_parallel=strategy
        )
        return _value_and_grads(attn, q, k, v, mask, cot)

    fn = jax.jit(run, in_shardings=(qs, ks, ks, ms, qs), out_shardings=(qs, (qs, ks, ks)))
    with jax.set_mesh(mesh):
        return fn(q, k, v, mask, cot)


def _assert_close(got, want, tol):
    (out, grads), (ref_out, ref_grads) = got, want
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref_out, np.float32), atol=tol, rtol=0)
    for name, g, r in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(
            np.asarray(g, np.float32), np.asarray(r, np.float32), atol=tol, rtol=0, err_msg=f"d{name}"
        )


def _plan(mesh, q, k, strategy):
    with jax.set_mesh(mesh):
        return ca.plan(q.shape, k.shape, strategy, min_length=0)


# (mesh, batch, length, heads, mask, strategies): odd batches are replicated over (data, fsdp); lengths
# that the context size does not divide are padded; heads that do not suit ulysses go to the ring.
CASES = [
    (MESH_A, 2, 64, 4, "random", ("ulysses", "ring")),
    (MESH_A, 3, 30, 4, "one_empty", ("ulysses", "ring")),  # B=3 not split by fsdp 2; L=30 padded to 32;
    # batch element 1 has no key at all (mean of its real values, no q/k gradient)
    (MESH_B, 2, 32, 4, "random", ("ulysses", "ring")),
    (MESH_B, 3, 17, 6, None, ("ring",)),  # 6 heads / tensor 2 = 3 per shard: ulysses would fall back
    (MESH_B, 1, 24, 3, "random", ("ring",)),  # tensor 2 does not divide 3 heads (replicated)
]
SELF_CASES = [
    pytest.param(mesh, b, length, h, mask, strategy, id=f"{strategy}-B{b}-L{length}-H{h}-{mask}-{mesh['context']}ctx")
    for mesh, b, length, h, mask, strategies in CASES
    for strategy in strategies
]


@pytest.mark.parametrize("mesh_sizes,batch,length,heads,mask_kind,strategy", SELF_CASES)
def test_self_attention_matches_unsharded(mesh_sizes, batch, length, heads, mask_kind, strategy):
    mesh = make_mesh(mesh_sizes)
    q, k, v, mask, cot = _inputs(batch * 100 + length, batch, length, length, heads, masked=mask_kind is not None)
    if mask_kind == "one_empty":
        mask = mask.at[1].set(False)
    got = _sharded(mesh, strategy, q, k, v, mask, cot)
    _assert_close(got, _reference(q, k, v, mask, cot), 1e-5)


def test_ulysses_falls_back_to_ring_when_heads_do_not_divide():
    q, k, *_ = _inputs(0, 2, 32, 32, 6)
    mesh_b = make_mesh(MESH_B)
    assert _plan(mesh_b, q, k, "ulysses") == "ring"  # 3 heads per tensor shard, context 2
    assert _plan(mesh_b, q, k, "auto") == "ring"
    q4, k4, *_ = _inputs(0, 2, 32, 32, 4)
    assert _plan(mesh_b, q4, k4, "auto") == "ulysses"
    assert _plan(mesh_b, q4, k4, "ring") == "ring"
    assert _plan(make_mesh(MESH_A), q4, k4, "ulysses") == "ulysses"


def test_ring_tiles_blocks_larger_than_its_chunks(monkeypatch):
    # 4 devices x 40 tokens: 3 query chunks of 14 and 4 key chunks of 10 rows (queries padded to 42 locally).
    mesh = make_mesh(MESH_A)
    q, k, v, mask, cot = _inputs(7, 2, 160, 160, 4)
    monkeypatch.setattr(ca, "RING_QUERY_BLOCK", 16)
    monkeypatch.setattr(ca, "RING_KEY_BLOCK", 10)
    assert ca._chunking(40, 16) == (3, 14) and ca._chunking(40, 10) == (4, 10)
    got = _sharded(mesh, "ring", q, k, v, mask, cot)
    _assert_close(got, _reference(q, k, v, mask, cot), 1e-5)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_cross_attention_splits_queries_only(impl):
    """Keys shared by every context shard: their gradient is the sum over shards (for "chunked" the
    custom_vjp backward must add that sum itself)."""
    mesh = make_mesh(MESH_B)
    q, k, v, mask, cot = _inputs(11, 2, 36, 7, 4)  # short text-like keys, L_q = 36 not split evenly by 8
    assert _plan(mesh, q, k, "ulysses") == "cross"
    qs = NamedSharding(mesh, activation_spec(q.shape, QKV_AXES, mesh))
    rep = NamedSharding(mesh, activation_spec(k.shape, ("act_batch", None, "act_heads", None), mesh))
    mrep = NamedSharding(mesh, activation_spec(mask.shape, ("act_batch", None), mesh))

    def run(q, k, v, mask, cot):
        attn = lambda q, k, v, m: attention(q, k, v, mask=m, impl=impl, context_parallel="ring")  # noqa: E731
        return _value_and_grads(attn, q, k, v, mask, cot)

    fn = jax.jit(run, in_shardings=(qs, rep, rep, mrep, qs), out_shardings=(qs, (qs, rep, rep)))
    with jax.set_mesh(mesh):
        compiled = fn.lower(q, k, v, mask, cot).compile()
        got = compiled(q, k, v, mask, cot)
    hlo = compiled.as_text()
    _assert_close(got, _reference(q, k, v, mask, cot), 1e-5)
    assert "all-to-all" not in hlo and "collective-permute" not in hlo


def test_bfloat16_ring_close_to_reference():
    # the ring's own block code: bf16 matmul inputs, float32 softmax statistics and accumulators
    mesh = make_mesh(MESH_A)
    q, k, v, mask, cot = _inputs(5, 2, 64, 64, 4, dtype=jnp.bfloat16)
    got = _sharded(mesh, "ring", q, k, v, mask, cot)
    assert got[0].dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in got[1])
    _assert_close(got, _reference(q, k, v, mask, cot), 6e-2)


def test_ulysses_runs_a_pallas_inner_kernel():
    # Pallas kernels run with check_vma off; batch 3 is replicated over data 2, heads split over tensor 2
    mesh = make_mesh(MESH_B)
    q, k, v, mask, cot = _inputs(9, 3, 32, 32, 4)
    got = _sharded(mesh, "ulysses", q, k, v, mask, cot, impl="pallas_gpu", interpret=True)
    _assert_close(got, _reference(q, k, v, mask, cot), 1e-5)


# ---------------------------------------------------------------------------------------------------
# what the compiled programs communicate


def _collectives(hlo: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in hlo.splitlines():
        m = re.search(r"=\s*(.+?)\s+(all-to-all|collective-permute|all-gather|all-reduce)(?:-start)?\(", line)
        if m:
            found.setdefault(m.group(2), []).append(m.group(1))
    return found


def _compiled_grad_hlo(mesh, strategy, q, k, v, mask, cot, lowered_only=False, **kw):
    qs = NamedSharding(mesh, activation_spec(q.shape, QKV_AXES, mesh))
    ms = NamedSharding(mesh, activation_spec(mask.shape, ("act_batch", "act_length"), mesh))

    def run(q, k, v, mask, cot):
        attn = lambda q, k, v, m: attention(q, k, v, mask=m, impl="xla", context_parallel=strategy, **kw)  # noqa: E731
        return _value_and_grads(attn, q, k, v, mask, cot)

    with jax.set_mesh(mesh):
        lowered = jax.jit(run, in_shardings=(qs, qs, qs, ms, qs)).lower(q, k, v, mask, cot)
        return lowered.as_text() if lowered_only else lowered.compile().as_text()


def test_hlo_ulysses_uses_all_to_all_and_ring_uses_collective_permute():
    mesh = make_mesh(MESH_A)
    q, k, v, mask, cot = _inputs(1, 2, 64, 64, 4)
    # one K/V block per device is (1, 16, 4, 8); the full K/V of a batch row would be (1, 64, 4, 8)
    uly = _collectives(_compiled_grad_hlo(mesh, "ulysses", q, k, v, mask, cot))
    assert "all-to-all" in uly and "collective-permute" not in uly
    # the only all-gather is the boolean key mask; K/V are never gathered
    assert all(shape.startswith("pred") for shape in uly.get("all-gather", [])), uly.get("all-gather")

    ring = _collectives(_compiled_grad_hlo(mesh, "ring", q, k, v, mask, cot))
    assert "collective-permute" in ring and "all-to-all" not in ring and "all-gather" not in ring
    assert any("f32[1,1,16,4,8]" in s for s in ring["collective-permute"])  # (chunks, b, keys, h, d)
    # remaining all-reduces are the (B, H, D) mean of v for fully-masked rows, never a K/V-sized array
    assert all("16,4,8" not in s and "64,4,8" not in s for s in ring.get("all-reduce", [])), ring["all-reduce"]

    # GSPMD without context parallelism gathers K/V over the context axis instead
    plain = _collectives(_compiled_grad_hlo(mesh, None, q, k, v, mask, cot))
    assert "all-to-all" not in plain and "collective-permute" not in plain
    assert any(s.startswith("f32") for s in plain.get("all-gather", [])), plain


def test_auto_threshold_and_no_mesh_paths():
    q, k, v, mask, cot = _inputs(2, 2, 64, 64, 4)
    mesh = make_mesh(MESH_A)
    with jax.set_mesh(mesh):
        assert ca.plan(q.shape, k.shape, "auto") is None  # 64 < CONTEXT_PARALLEL_MIN_LENGTH
        assert ca.plan(q.shape, k.shape, "auto", min_length=64) == "ulysses"
        assert ca.plan(q.shape, k.shape, None, min_length=0) is None
    # StableHLO before partitioning: only an explicit shard_map body has all_to_all at this stage
    short = _compiled_grad_hlo(mesh, "auto", q, k, v, mask, cot, lowered_only=True)
    assert "all_to_all" not in short and "shard_map" not in short
    long = _compiled_grad_hlo(mesh, "auto", q, k, v, mask, cot, lowered_only=True, context_min_length=64)
    assert "all_to_all" in long
    # no mesh, or a mesh whose context axis has size 1: exactly today's computation
    assert ca.plan(q.shape, k.shape, "ring") is None
    with jax.set_mesh(make_mesh({"data": 2, "fsdp": 4})):
        assert ca.plan(q.shape, k.shape, "ring") is None
    base = jax.make_jaxpr(lambda q, k, v: attention(q, k, v, mask=mask, context_parallel=None))(q, k, v)
    auto = jax.make_jaxpr(lambda q, k, v: attention(q, k, v, mask=mask))(q, k, v)
    assert str(base) == str(auto)
    np.testing.assert_array_equal(attention(q, k, v, mask=mask), attention(q, k, v, mask=mask, context_parallel=None))


def test_bad_arguments():
    q, k, v, mask, _ = _inputs(0, 2, 32, 32, 4)
    with jax.set_mesh(make_mesh(MESH_A)):
        with pytest.raises(ValueError, match="context_parallel must be one of"):
            attention(q, k, v, context_parallel="megatron")
        with pytest.raises(ValueError, match="mask must be"):
            attention(q, k, v, mask=mask[:, :5], context_parallel="ring")
    with pytest.raises(ValueError, match="needs a mesh"):
        ca.context_parallel_attention(q, k, v)


@pytest.mark.parametrize("impl,platform", [("pallas_tpu", "tpu"), ("splash", "tpu"), ("pallas_gpu", "cuda")])
def test_ulysses_with_pallas_kernels_exports_for_hardware(impl, platform):
    # The shard_map around our Pallas kernels lowers for 8 TPU chips / GPUs from this CPU machine (forward
    # plus the backward kernels); running it needs the hardware.
    from trackedit_jax.kernels.pallas_gpu import TRITON_CUSTOM_CALL, lowering_for_gpu
    from trackedit_jax.kernels.pallas_tpu import MOSAIC_CUSTOM_CALL

    target = MOSAIC_CUSTOM_CALL if platform == "tpu" else TRITON_CUSTOM_CALL

    mesh = make_mesh(MESH_A)
    qkv = jax.ShapeDtypeStruct((2, 2048, 8, 128), jnp.bfloat16)
    msk = jax.ShapeDtypeStruct((2, 2048), jnp.bool_)
    qs = NamedSharding(mesh, activation_spec(qkv.shape, QKV_AXES, mesh))
    ms = NamedSharding(mesh, activation_spec(msk.shape, ("act_batch", "act_length"), mesh))

    def fn(q, k, v, m):
        def loss(q, k, v):
            out = attention(q, k, v, mask=m, impl=impl, context_parallel="ulysses")
            return jnp.sum(out.astype(jnp.float32) ** 2)

        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    with jax.set_mesh(mesh), lowering_for_gpu() if platform == "cuda" else contextlib.nullcontext():
        exported = jax.export.export(
            jax.jit(fn, in_shardings=(qs, qs, qs, ms)),
            platforms=[platform],
            disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(target)],
        )(qkv, qkv, qkv, msk)
    module = exported.mlir_module()
    assert exported.nr_devices == 8
    calls = re.findall(r"stablehlo\.custom_call @([\w$.]+)", module)
    assert calls.count(target) >= 3
    assert "all_to_all" in module and "collective_permute" not in module
