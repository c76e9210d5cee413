"""EditByTrack: zero-init track independence, LoRA parameter count and what a LoRA step changes,
every conditioner variant forward and backward, and the cached source path."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from trackedit_jax.models.edit_model import EditByTrack
from trackedit_jax.models.lora import count_params, trainable_filter
from trackedit_jax.models.track_conditioner import ConditionerConfig
from trackedit_jax.models.wan.config import WanConfig

D, LAYERS, FFN, TEXT = 32, 2, 48, 8
B, f, h, w, C, N = 2, 3, 4, 4, 4, 6


def _wan(**kw):
    return WanConfig(
        dim=D, num_heads=2, num_layers=LAYERS, ffn_dim=FFN, freq_dim=16, in_dim=C, out_dim=C, text_dim=TEXT, **kw
    )


COND = ConditionerConfig(dim=16, heads=2, temporal_layers=1, num_freqs=4)


# a model's forward pass given a prior (the warp, or the warp and its coverage), jitted once for all tests
_forward_with_prior = jax.jit(lambda m, *a, prior: m.forward(*a, prior_latents=prior))


def _warp_and_coverage(seed, shape):
    """Random warp and coverage latents of `shape`, and the two stacked on the channel axis (the prior)."""
    rng = np.random.default_rng(seed)
    z_warp = jnp.asarray(rng.normal(size=shape), jnp.float32)
    z_cov = jnp.asarray(rng.normal(size=shape), jnp.float32)
    return z_warp, z_cov, jnp.concatenate([z_warp, z_cov], axis=-1)


def _inputs(seed=0):
    r = np.random.default_rng(seed)
    z_src = jnp.asarray(r.normal(size=(B, f, h, w, C)), jnp.float32)
    x_t = jnp.asarray(r.normal(size=(B, f, h, w, C)), jnp.float32)
    xyz = lambda: jnp.asarray(
        np.concatenate([r.uniform(-1, 1, (B, f, N, 2)), r.uniform(0, 1, (B, f, N, 1))], -1), jnp.float32
    )  # noqa: E731
    src, tgt = xyz(), xyz()
    valid = jnp.asarray(r.uniform(size=(B, f, N)) > 0.2)
    ctx = jnp.asarray(r.normal(size=(B, 5, TEXT)), jnp.float32)
    t = jnp.asarray([700.0, 150.0])
    return x_t, t, ctx, z_src, src, tgt, valid


@pytest.fixture(scope="module")
def lora_model():
    return EditByTrack(_wan(lora_rank=4, lora_alpha=8.0), COND, rngs=nnx.Rngs(0))


def test_fresh_model_ignores_the_tracks(lora_model):
    x_t, t, ctx, z_src, src, tgt, valid = _inputs()
    fwd = jax.jit(lambda m, *a: m.forward(*a))
    ref = fwd(lora_model, x_t, t, ctx, z_src, src, tgt, valid, valid)
    other = fwd(lora_model, x_t, t, ctx, z_src, src * 0.5, -tgt, valid, ~valid)
    np.testing.assert_array_equal(ref, other)
    assert ref.shape == (B, f, h, w, C) and float(jnp.abs(ref).max()) > 0


def test_lora_trainable_count_is_exact(lora_model):
    r = 4
    per_layer = 8 * r * (D + D) + r * (D + FFN) + r * (FFN + D)  # q,k,v,o of both attentions + FFN up/down
    lora = LAYERS * per_layer
    conditioner = count_params(lora_model.conditioner)
    got = count_params(lora_model, trainable_filter("lora", EditByTrack.EXTRA_TRAINABLE))
    assert got == lora + conditioner
    assert count_params(lora_model, nnx.LoRAParam) == lora


def test_a_lora_step_changes_only_lora_and_conditioner(lora_model):
    graphdef, params, frozen = nnx.split(lora_model, trainable_filter("lora", EditByTrack.EXTRA_TRAINABLE), ...)
    x_t, t, ctx, z_src, src, tgt, valid = _inputs(1)
    target = jnp.ones_like(x_t)

    def loss(model):
        return jnp.mean((model.forward(x_t, t, ctx, z_src, src, tgt, valid, valid) - target) ** 2)

    @jax.jit
    def step(params, frozen):
        model = nnx.merge(graphdef, params, frozen)
        grads = nnx.grad(loss, argnums=nnx.DiffState(0, trainable_filter("lora", EditByTrack.EXTRA_TRAINABLE)))(model)
        tx = optax.sgd(0.1)
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates)

    new = step(params, frozen)
    moved = {
        jax.tree_util.keystr(p)
        for (p, a), (_, b) in zip(
            jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_flatten_with_path(new)[0]
        )
        if not np.array_equal(a, b)
    }
    assert any("lora_b" in k for k in moved) and any("conditioner" in k for k in moved)
    assert all("lora" in k or "conditioner" in k for k in moved), moved
    # the frozen base is a separate state the step never returns: it cannot change
    assert all("lora" not in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(frozen)[0])


VARIANTS = [
    ConditionerConfig(dim=16, heads=2, temporal_layers=1, num_freqs=4, track_dims=td, sampling=s, z_embedding=z)
    for td, s, z in itertools.product((3, 2), ("cross_attn", "gaussian"), (True, False))
    if not (td == 2 and z)
]


CASES = [(c, "sequential") for c in VARIANTS] + [(VARIANTS[0], "shared")]


@pytest.mark.parametrize(
    "cond, rope_mode",
    CASES,
    ids=lambda x: x if isinstance(x, str) else f"{x.track_dims}d-{x.sampling}-z{int(x.z_embedding)}",
)
def test_every_variant_runs_forward_and_backward(cond, rope_mode):
    model = EditByTrack(_wan(), cond, rope_mode=rope_mode, rngs=nnx.Rngs(1))
    x_t, t, ctx, z_src, src, tgt, valid = _inputs(2)

    def loss(m):
        return jnp.mean(m.forward(x_t, t, ctx, z_src, src, tgt, valid, valid) ** 2)

    value, grads = jax.jit(lambda m: nnx.value_and_grad(loss)(m))(model)
    assert np.isfinite(float(value))
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    # the zero-initialised output layer of the conditioner receives gradient (the tracks can be learned)
    assert float(jnp.abs(grads["conditioner"]["out"]["kernel"][...]).max()) > 0


def test_cached_source_path_equals_forward(lora_model):
    x_t, t, ctx, z_src, src, tgt, valid = _inputs(3)
    cache = lora_model.encode_source(z_src, src, tgt, valid, valid)
    np.testing.assert_array_equal(
        lora_model(x_t, t, ctx, cache), lora_model.forward(x_t, t, ctx, z_src, src, tgt, valid, valid)
    )


def test_bad_latent_shapes(lora_model):
    x_t, t, ctx, z_src, src, tgt, valid = _inputs()
    with pytest.raises(ValueError, match="source_latents"):
        lora_model.encode_source(z_src[..., :3], src, tgt, valid, valid)
    cache = lora_model.encode_source(z_src, src, tgt, valid, valid)
    with pytest.raises(ValueError, match="same \\(f, h, w\\)"):
        lora_model(x_t[:, :2], t, ctx, cache)


def test_source_skip_starts_as_the_source_and_learns_the_change():
    """An untrained `source_skip` model returns the source latents exactly, whatever the noise, the time and
    the tracks; the zero head receives gradient; the output is the source plus the head's own output."""
    model = EditByTrack(_wan(), COND, source_skip=True, rngs=nnx.Rngs(4))
    x_t, t, ctx, z_src, src, tgt, valid = _inputs(5)
    fwd = jax.jit(lambda m, *a: m.forward(*a))
    np.testing.assert_array_equal(fwd(model, x_t, t, ctx, z_src, src, tgt, valid, valid), z_src)
    np.testing.assert_array_equal(fwd(model, -x_t, t * 0.1, ctx, z_src, -src, tgt, valid, ~valid), z_src)

    target = z_src + 1.0
    grads = jax.jit(
        nnx.grad(lambda m: jnp.mean((m.forward(x_t, t, ctx, z_src, src, tgt, valid, valid) - target) ** 2))
    )(model)
    assert float(jnp.abs(grads["dit"]["head"]["linear"]["bias"][...]).max()) > 0

    # with a non-zero head: output == source + the plain model's output (same weights)
    plain = EditByTrack(_wan(), COND, rngs=nnx.Rngs(4))
    nnx.update(model, nnx.state(plain))
    np.testing.assert_allclose(
        fwd(model, x_t, t, ctx, z_src, src, tgt, valid, valid),
        z_src + fwd(plain, x_t, t, ctx, z_src, src, tgt, valid, valid),
        rtol=1e-6,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="in_dim == out_dim"):
        EditByTrack(_wan().replace(out_dim=2 * C), COND, source_skip=True, rngs=nnx.Rngs(0))


def test_warp_prior_starts_as_the_warp_and_its_embedding_joins_the_target_tokens():
    """An untrained `source_skip` + `warp_prior` model returns the warp's latents exactly; with non-zero
    weights and a zero prior embedding it is the warp plus the plain model's output (same weights: the
    prior embedding is created last, so every other parameter draws the same key); a non-zero prior
    embedding changes the output; a missing, unexpected or mis-shaped prior is refused."""
    model = EditByTrack(_wan(), COND, source_skip=True, warp_prior=True, rngs=nnx.Rngs(4))
    x_t, t, ctx, z_src, src, tgt, valid = _inputs(6)
    z_warp = jnp.asarray(np.random.default_rng(7).normal(size=z_src.shape), jnp.float32)
    np.testing.assert_array_equal(
        _forward_with_prior(model, x_t, t, ctx, z_src, src, tgt, valid, valid, prior=z_warp), z_warp
    )
    np.testing.assert_array_equal(
        _forward_with_prior(model, -x_t, t * 0.3, ctx, -z_src, src, -tgt, valid, ~valid, prior=z_warp), z_warp
    )

    plain = EditByTrack(_wan(), COND, rngs=nnx.Rngs(4))
    nnx.update(model, nnx.state(plain))
    kernel = model.prior_embedding.kernel
    kernel[...] = jnp.zeros_like(kernel[...])
    model.prior_embedding.bias[...] = jnp.zeros_like(model.prior_embedding.bias[...])
    with_zero_prior = _forward_with_prior(model, x_t, t, ctx, z_src, src, tgt, valid, valid, prior=z_warp)
    np.testing.assert_allclose(
        with_zero_prior,
        z_warp + _forward_with_prior(plain, x_t, t, ctx, z_src, src, tgt, valid, valid, prior=None),
        rtol=1e-6,
        atol=1e-6,
    )
    kernel[...] = 0.05 * jax.random.normal(jax.random.PRNGKey(8), kernel[...].shape)
    changed = _forward_with_prior(model, x_t, t, ctx, z_src, src, tgt, valid, valid, prior=z_warp)
    assert float(jnp.abs(changed - with_zero_prior).max()) > 1e-3

    with pytest.raises(ValueError, match="prior_latents .* is required"):
        model.forward(x_t, t, ctx, z_src, src, tgt, valid, valid)
    with pytest.raises(ValueError, match="without warp_prior"):
        plain.forward(x_t, t, ctx, z_src, src, tgt, valid, valid, prior_latents=z_warp)
    with pytest.raises(ValueError, match="prior_latents must have shape"):
        model.forward(x_t, t, ctx, z_src, src, tgt, valid, valid, prior_latents=z_warp[:1])


def test_a_coverage_model_reads_the_coverage_but_skips_only_the_warp():
    """A `warp_coverage` model takes (warp, coverage) latents stacked on channels: untrained it returns the
    warp's latents whatever the coverage; with a zero embedding for the coverage half it equals the warp-only
    model with the same weights; a non-zero coverage weight makes the coverage change the output; a prior
    of one clip's width is refused, as is coverage without a warp prior."""
    model = EditByTrack(_wan(), COND, source_skip=True, warp_prior=True, warp_coverage=True, rngs=nnx.Rngs(4))
    x_t, t, ctx, z_src, src, tgt, valid = _inputs(6)
    z_warp, z_cov, both = _warp_and_coverage(7, z_src.shape)
    np.testing.assert_array_equal(
        _forward_with_prior(model, x_t, t, ctx, z_src, src, tgt, valid, valid, prior=both), z_warp
    )

    warp_only = EditByTrack(_wan(), COND, source_skip=True, warp_prior=True, rngs=nnx.Rngs(9))
    for m in (model, warp_only):  # non-zero heads, shared weights
        head = m.dit.head.linear
        head.kernel[...] = 0.05 * jax.random.normal(jax.random.PRNGKey(3), head.kernel[...].shape)
    k_warp = warp_only.prior_embedding.kernel[...]
    model.prior_embedding.kernel[...] = jnp.concatenate([k_warp, jnp.zeros_like(k_warp)], axis=0)
    model.prior_embedding.bias[...] = warp_only.prior_embedding.bias[...]
    state = nnx.state(warp_only, nnx.Not(nnx.PathContains("prior_embedding")))
    nnx.update(model, state)
    base = _forward_with_prior(warp_only, x_t, t, ctx, z_src, src, tgt, valid, valid, prior=z_warp)
    np.testing.assert_allclose(
        _forward_with_prior(model, x_t, t, ctx, z_src, src, tgt, valid, valid, prior=both), base, rtol=1e-5, atol=1e-5
    )
    model.prior_embedding.kernel[...] = jnp.concatenate([k_warp, k_warp], axis=0)
    changed = _forward_with_prior(model, x_t, t, ctx, z_src, src, tgt, valid, valid, prior=both)
    assert float(jnp.abs(changed - base).max()) > 1e-3

    with pytest.raises(ValueError, match="prior_latents must have shape"):
        model.forward(x_t, t, ctx, z_src, src, tgt, valid, valid, prior_latents=z_warp)
    with pytest.raises(ValueError, match="warp_coverage needs warp_prior"):
        EditByTrack(_wan(), COND, warp_coverage=True, rngs=nnx.Rngs(0))


def test_source_gate_blends_the_source_into_the_warp_value_by_value():
    """A `source_gate` model is the warp-prior model with the same weights (the gate head is created last)
    plus sigmoid(gate) * (source - warp): untrained, gate = sigmoid(-4) everywhere; a constant per-value
    bias gives exactly that blend on top of the warp-only output; a saturated gate gives the source plus
    the change; the zero gate kernel receives gradient; a gate without source_skip and warp_prior is refused."""
    gated = EditByTrack(_wan(), COND, source_skip=True, warp_prior=True, source_gate=True, rngs=nnx.Rngs(4))
    warp_only = EditByTrack(_wan(), COND, source_skip=True, warp_prior=True, rngs=nnx.Rngs(4))
    x_t, t, ctx, z_src, src, tgt, valid = _inputs(8)
    z_warp = jnp.asarray(np.random.default_rng(9).normal(size=z_src.shape), jnp.float32)
    run = lambda m: _forward_with_prior(m, x_t, t, ctx, z_src, src, tgt, valid, valid, prior=z_warp)  # noqa: E731
    g0 = 1.0 / (1.0 + np.exp(4.0))
    np.testing.assert_allclose(run(gated), z_warp + g0 * (z_src - z_warp), rtol=1e-6, atol=1e-6)

    for m in (gated, warp_only):  # the same non-zero head in both
        head = m.dit.head.linear
        head.kernel[...] = 0.05 * jax.random.normal(jax.random.PRNGKey(3), head.kernel[...].shape)
    state = nnx.state(warp_only)
    nnx.update(gated, state)
    base = run(warp_only)
    assert float(jnp.abs(base - z_warp).max()) > 1e-3  # the head's change is really there

    # constant gate per output value: bias b over the patch values, kernel zero
    pv = gated.gate_head.bias[...].shape[0]
    b = jnp.asarray(np.random.default_rng(10).normal(size=pv) * 2.0, jnp.float32)
    gated.gate_head.bias[...] = b
    gate_values = gated.dit.unpatchify(
        jnp.broadcast_to(jax.nn.sigmoid(b), (B, (f * h * w) // 4, pv)), (f, h // 2, w // 2)
    )
    np.testing.assert_allclose(run(gated), base + gate_values * (z_src - z_warp), rtol=1e-5, atol=1e-5)

    gated.gate_head.bias[...] = jnp.full((pv,), 40.0)  # saturated: the source replaces the warp
    np.testing.assert_allclose(run(gated), base - z_warp + z_src, rtol=1e-5, atol=1e-5)

    gated.gate_head.bias[...] = jnp.full((pv,), -4.0)
    loss = lambda m: jnp.mean(  # noqa: E731
        (m.forward(x_t, t, ctx, z_src, src, tgt, valid, valid, prior_latents=z_warp) - z_src) ** 2
    )
    grads = jax.jit(nnx.grad(loss))(gated)
    assert float(jnp.abs(grads["gate_head"]["kernel"][...]).max()) > 0

    for kw in (dict(source_skip=True), dict(warp_prior=True), {}):
        with pytest.raises(ValueError, match="source_gate .* needs source_skip and warp_prior"):
            EditByTrack(_wan(), COND, source_gate=True, rngs=nnx.Rngs(0), **kw)


def test_gate_coverage_lets_the_coverage_clip_set_the_gate_value_by_value():
    """A `gate_coverage` model adds a linear map of the coverage clip's patches to the gate: untrained (zero
    map, created last) it equals the gated coverage model with the same seed; with a zero gate head and the
    map c * identity, gate = sigmoid(c * z_cov) value by value, so output = warp + sigmoid(c * z_cov) *
    (source - warp) exactly, and `return_gate` gives those logits c * z_cov; its kernel receives gradient; it
    needs source_gate and warp_coverage."""
    kw = dict(source_skip=True, warp_prior=True, warp_coverage=True, source_gate=True)
    model = EditByTrack(_wan(), COND, gate_coverage=True, rngs=nnx.Rngs(4), **kw)
    plain = EditByTrack(_wan(), COND, rngs=nnx.Rngs(4), **kw)
    x_t, t, ctx, z_src, src, tgt, valid = _inputs(11)
    z_warp, z_cov, both = _warp_and_coverage(12, z_src.shape)
    run = lambda m: _forward_with_prior(m, x_t, t, ctx, z_src, src, tgt, valid, valid, prior=both)  # noqa: E731
    np.testing.assert_array_equal(run(model), run(plain))

    gate = model.gate_head
    gate.kernel[...] = jnp.zeros_like(gate.kernel[...])
    gate.bias[...] = jnp.zeros_like(gate.bias[...])
    c = 1.7
    model.gate_prior.kernel[...] = c * jnp.eye(model.gate_prior.kernel[...].shape[0], dtype=jnp.float32)
    expect = z_warp + jax.nn.sigmoid(c * z_cov) * (z_src - z_warp)  # the head is zero: no change on top
    np.testing.assert_allclose(run(model), expect, rtol=1e-5, atol=1e-5)
    out, logits = model.forward(x_t, t, ctx, z_src, src, tgt, valid, valid, prior_latents=both, return_gate=True)
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, c * z_cov, rtol=1e-5, atol=1e-5)  # the logits a training loss reads
    with pytest.raises(ValueError, match="return_gate: this model has no source gate"):
        EditByTrack(_wan(), COND, rngs=nnx.Rngs(4)).forward(
            x_t, t, ctx, z_src, src, tgt, valid, valid, return_gate=True
        )

    model.gate_prior.kernel[...] = jnp.zeros_like(model.gate_prior.kernel[...])
    loss = lambda m: jnp.mean(  # noqa: E731
        (m.forward(x_t, t, ctx, z_src, src, tgt, valid, valid, prior_latents=both) - z_src) ** 2
    )
    grads = jax.jit(nnx.grad(loss))(model)
    assert float(jnp.abs(grads["gate_prior"]["kernel"][...]).max()) > 0

    for bad in (dict(kw, source_gate=False), dict(kw, warp_coverage=False)):
        with pytest.raises(ValueError, match="gate_coverage .* needs source_gate and warp_coverage"):
            EditByTrack(_wan(), COND, gate_coverage=True, rngs=nnx.Rngs(0), **bad)
