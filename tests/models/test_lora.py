"""LoRA on the stacked DiT blocks: parameter counts, zero-init identity, merging, what trains."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from trackedit_jax.models.lora import (
    LoRALinear,
    count_params,
    count_trainable,
    lora_layers,
    merge_kernel,
    merge_lora,
    trainable_filter,
)
from trackedit_jax.models.wan.config import tiny
from trackedit_jax.models.wan.dit import WanDiT

D, F, LAYERS = 24, 40, 3


def _config(rank=0, alpha=None):
    return tiny(dim=D, num_heads=2, ffn_dim=F, text_dim=16, num_layers=LAYERS, lora_rank=rank, lora_alpha=alpha)


def _inputs():
    rng = np.random.default_rng(0)
    return (
        jnp.asarray(rng.standard_normal((2, 3, 4, 6, 4), dtype=np.float32)),
        jnp.asarray([10.0, 700.0], jnp.float32),
        jnp.asarray(rng.standard_normal((2, 5, 16), dtype=np.float32)),
    )


_forward = nnx.jit(lambda m, x, t, c: m(x, t, c))


@pytest.fixture(scope="module")
def base_and_lora():
    """A base model and a rank-4 LoRA model carrying the same base weights."""
    base = WanDiT(_config(), rngs=nnx.Rngs(0))
    lora = WanDiT(_config(rank=4, alpha=8.0), rngs=nnx.Rngs(1))
    nnx.update(lora, nnx.state(base))  # copy every base parameter; the adapters stay as initialised
    return base, lora


@pytest.mark.parametrize("rank", [1, 4])
def test_lora_parameter_count_is_exact(rank):
    model = nnx.eval_shape(lambda: WanDiT(_config(rank=rank), rngs=nnx.Rngs(0)))
    # per block: 8 attention projections D->D and the FFN D->F, F->D; each adapter has r*(in+out)
    per_block = 8 * rank * (D + D) + 2 * rank * (D + F)
    assert count_trainable(model, "lora") == LAYERS * per_block
    assert count_params(model, nnx.LoRAParam) == LAYERS * per_block
    assert (
        count_trainable(model, "full")
        == count_params(model)
        == count_params(nnx.eval_shape(lambda: WanDiT(_config(), rngs=nnx.Rngs(0)))) + LAYERS * per_block
    )
    assert len(lora_layers(model)) == 10  # 10 stacked LoRALinear modules, each (LAYERS, ...)
    assert model.blocks.self_attn.q.lora_a.shape == (LAYERS, D, rank)
    assert model.blocks.ffn.down.lora_b.shape == (LAYERS, rank, D)


def test_zero_initialised_lora_is_the_base_model(base_and_lora):
    base, lora = base_and_lora
    assert float(jnp.abs(lora.blocks.self_attn.q.lora_a[...]).max()) > 0  # A is random, B is zero
    np.testing.assert_array_equal(np.asarray(_forward(lora, *_inputs())), np.asarray(_forward(base, *_inputs())))


def test_merge_lora_keeps_the_function(base_and_lora):
    base, lora = base_and_lora
    lora = nnx.clone(lora)
    for _, layer in lora_layers(lora):
        layer.lora_b[...] = 0.2 * jax.random.normal(jax.random.key(3), layer.lora_b.shape)
    before = np.asarray(_forward(lora, *_inputs()))
    assert np.abs(before - np.asarray(_forward(base, *_inputs()))).max() > 1e-3  # the adapters act
    # independent merge: kernel + (alpha / r) * A @ B in numpy, written into the base model
    expected = nnx.clone(base)
    for (_path, layer), (_, target) in zip(
        lora_layers(lora),
        sorted(
            (
                (p, m)
                for p, m in nnx.iter_graph(expected)
                if isinstance(m, LoRALinear) and p[-1] in ("q", "k", "v", "o", "up", "down")
            ),
            key=lambda pm: pm[0],
        ),
    ):
        a, b = np.asarray(layer.lora_a[...], np.float64), np.asarray(layer.lora_b[...], np.float64)
        target.kernel[...] = jnp.asarray(np.asarray(layer.kernel[...], np.float64) + 2.0 * a @ b, jnp.float32)
    merge_lora(lora)
    assert all(float(jnp.abs(layer.lora_b[...]).max()) == 0 for _, layer in lora_layers(lora))
    after = np.asarray(_forward(lora, *_inputs()))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after, np.asarray(_forward(expected, *_inputs())), rtol=1e-5, atol=1e-5)


def test_optimizer_updates_only_the_selected_parameters(base_and_lora):
    _, lora = base_and_lora
    x, t, ctx = _inputs()

    def changed_paths(mode, extra=()):
        model = nnx.clone(lora)
        before = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=trainable_filter(mode, extra))

        @nnx.jit
        def step(model, opt):
            loss = lambda m: jnp.mean(m(x, t, ctx) ** 2)  # noqa: E731
            opt.update(model, nnx.grad(loss, argnums=nnx.DiffState(0, trainable_filter(mode, extra)))(model))

        step(model, opt)
        after = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
        return {p for p, v in before.items() if not np.array_equal(v, np.asarray(after[p][...]))}

    with_head = changed_paths("lora", extra=("head",))
    # step 1 moves every B (A gets zero gradient while B = 0) and the head; nothing else moves
    lora_moved = {p for p in with_head if p[0] != "head"}
    assert lora_moved == {path + ("lora_b",) for path, _ in lora_layers(lora)}
    assert {p for p in with_head if p[0] == "head"} == {
        ("head", "linear", "kernel"),
        ("head", "linear", "bias"),
        ("head", "modulation"),
    }
    full = changed_paths("full")
    assert ("blocks", "self_attn", "q", "kernel") in full and ("patch_embedding", "kernel") in full
    with pytest.raises(ValueError, match="mode must be one of"):
        trainable_filter("some")


def test_merge_kernel_is_pure_and_works_on_stacked_kernels_and_one_layer():
    """The one merge (used by `merge_lora` and the export): kernel + scale A @ B in float32, kernel dtype kept."""
    rng = np.random.default_rng(5)
    k = rng.standard_normal((LAYERS, D, F)).astype(np.float32)
    a = rng.standard_normal((LAYERS, D, 4)).astype(np.float32)
    b = rng.standard_normal((LAYERS, 4, F)).astype(np.float32)
    kernel = jnp.asarray(k)
    got = merge_kernel(kernel, jnp.asarray(a), jnp.asarray(b), 0.5)
    want = k.astype(np.float64) + 0.5 * np.einsum("lir,lro->lio", a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(kernel), k)  # nothing written
    one_layer = merge_kernel(k[1], a[1], b[1], 0.5)  # numpy in, as the export streams it
    np.testing.assert_allclose(np.asarray(one_layer), np.asarray(got[1]), rtol=1e-6, atol=1e-6)
    assert merge_kernel(kernel.astype(jnp.bfloat16), a, b, 0.5).dtype == jnp.bfloat16
