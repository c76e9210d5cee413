"""Track conditioner: permutation/padding invariance, zero init, source/target separation, variants."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from trackedit_jax.models.track_conditioner import ConditionerConfig, TrackConditioner, fourier_features

B, F, H, W, D, N = 2, 3, 4, 6, 32, 7


def _inputs(seed=0, n=N):
    r = np.random.default_rng(seed)
    nu = r.normal(size=(B, F, H, W, D)).astype(np.float32)
    src = np.concatenate([r.uniform(-1, 1, (B, F, n, 2)), r.uniform(0, 1, (B, F, n, 1))], -1).astype(np.float32)
    tgt = np.concatenate([r.uniform(-1, 1, (B, F, n, 2)), r.uniform(0, 1, (B, F, n, 1))], -1).astype(np.float32)
    sv = r.uniform(size=(B, F, n)) > 0.2
    tv = r.uniform(size=(B, F, n)) > 0.2
    return [jnp.asarray(a) for a in (nu, src, tgt, sv, tv)]


_apply = nnx.jit(lambda m, *a: m(*a))  # eager op-by-op dispatch would dominate these tests


def _trained_like(cfg, seed=0):
    """A conditioner whose zero-initialised output layer is randomised, so outputs are non-trivial."""
    m = TrackConditioner(cfg, D, rngs=nnx.Rngs(seed))
    m.out.kernel[...] = jax.random.normal(jax.random.key(seed + 1), m.out.kernel.shape) * 0.1
    if hasattr(m, "null_key"):
        m.null_key[...] = jax.random.normal(jax.random.key(seed + 2), m.null_key.shape)
    return m


VARIANTS = [
    ConditionerConfig(dim=16, heads=2, temporal_layers=1, num_freqs=4, track_dims=td, sampling=s, z_embedding=z)
    for td, s, z in itertools.product((3, 2), ("cross_attn", "gaussian"), (True, False))
    if not (td == 2 and z)
]


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: f"{c.track_dims}d-{c.sampling}-z{int(c.z_embedding)}")
def test_permutation_and_padding_invariance(cfg):
    m = _trained_like(cfg)
    nu, src, tgt, sv, tv = _inputs()
    ts, tt = _apply(m, nu, src, tgt, sv, tv)
    perm = np.random.default_rng(3).permutation(N)
    ps, pt = _apply(m, nu, src[:, :, perm], tgt[:, :, perm], sv[:, :, perm], tv[:, :, perm])
    np.testing.assert_allclose(ps, ts, atol=1e-5)
    np.testing.assert_allclose(pt, tt, atol=1e-5)
    # append 5 padded tracks with arbitrary positions, masked out
    pad = _inputs(seed=9, n=5)
    cat = lambda a, b: jnp.concatenate([a, b], axis=2)
    qs, qt = _apply(
        m, nu, cat(src, pad[1]), cat(tgt, pad[2]), cat(sv, jnp.zeros_like(pad[3])), cat(tv, jnp.zeros_like(pad[4]))
    )
    np.testing.assert_allclose(qs, ts, atol=1e-5)
    np.testing.assert_allclose(qt, tt, atol=1e-5)
    assert float(jnp.abs(ts).max()) > 1e-3  # the check is not vacuous


@pytest.mark.parametrize("cfg", VARIANTS[:1] + VARIANTS[2:3], ids=["cross_attn", "gaussian"])
def test_target_tracks_only_change_tau_tgt(cfg):
    m = _trained_like(cfg)
    nu, src, tgt, sv, tv = _inputs()
    ts, tt = _apply(m, nu, src, tgt, sv, tv)
    ts2, tt2 = _apply(m, nu, src, tgt + 0.3, sv, tv)
    np.testing.assert_array_equal(ts2, ts)
    assert float(jnp.abs(tt2 - tt).max()) > 1e-3


def test_fresh_conditioner_outputs_zero():
    m = TrackConditioner(VARIANTS[0], D, rngs=nnx.Rngs(0))
    ts, tt = _apply(m, *_inputs())
    assert float(jnp.abs(ts).max()) == 0.0 and float(jnp.abs(tt).max()) == 0.0


def test_cell_far_from_tracks_can_receive_nothing():
    """A cell with no valid track gets exactly zero: the null key takes all weight and no bias leaks in."""
    cfg = VARIANTS[0]
    m = _trained_like(cfg)
    nu, src, tgt, sv, tv = _inputs()
    tokens = jnp.ones((B, F, N, cfg.dim))
    out = m.splat(tokens, src, jnp.zeros_like(sv), (H, W))  # all tracks invalid: only the null key
    np.testing.assert_array_equal(out, 0.0)


def test_fourier_features_values():
    p = jnp.asarray([[0.25, -0.5]])
    f = fourier_features(p, 2)
    expect = [
        0.25,
        np.sin(np.pi * 0.25),
        np.sin(2 * np.pi * 0.25),
        np.cos(np.pi * 0.25),
        np.cos(2 * np.pi * 0.25),
        -0.5,
        np.sin(-np.pi * 0.5),
        np.sin(-np.pi),
        np.cos(-np.pi * 0.5),
        np.cos(-np.pi),
    ]
    np.testing.assert_allclose(f[0], expect, atol=1e-6)


def test_bad_shapes():
    m = TrackConditioner(VARIANTS[0], D, rngs=nnx.Rngs(0))
    nu, src, tgt, sv, tv = _inputs()
    with pytest.raises(ValueError, match="tgt_xyz"):
        m(nu, src, tgt[:, :2], sv, tv)
    with pytest.raises(ValueError, match="src_valid"):
        m(nu, src, tgt, sv[:, :, :3], tv)
    with pytest.raises(ValueError, match="z_embedding needs track_dims=3"):
        ConditionerConfig(track_dims=2, z_embedding=True)


# ---------------------------------------------------------------------------------------------------
# parameters: logical axes (they shard on a mesh) and the arithmetic of the flax layers they replace


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_linear_and_layer_norm_match_flax_nnx_bit_for_bit(dtype):
    """The conditioner's own Linear/LayerNorm draw the same keys and compute the same values as the
    `nnx.Linear` / `nnx.LayerNorm` it was first built from (checkpoints and runs stay comparable)."""
    from trackedit_jax.models.track_conditioner import _LayerNorm, _Linear

    cfg = ConditionerConfig(dim=16, heads=2, dtype=dtype, param_dtype=jnp.float32)
    x = jax.random.normal(jax.random.key(3), (2, 5, 12), jnp.float32)
    ours = _Linear(12, 16, ("embed", "mlp"), cfg, rngs=nnx.Rngs(7))
    ref = nnx.Linear(12, 16, kernel_init=nnx.initializers.xavier_uniform(), dtype=dtype, rngs=nnx.Rngs(7))
    ref.bias[...] = ours.bias[...] = jax.random.normal(jax.random.key(4), (16,))
    np.testing.assert_array_equal(np.asarray(ours.kernel[...]), np.asarray(ref.kernel[...]))
    got, want = ours(x), ref(x)
    assert got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))

    y = jax.random.normal(jax.random.key(5), (2, 5, 16), jnp.float32) * 3.0 + 1.0
    ours_n = _LayerNorm(16, cfg, rngs=nnx.Rngs(8))
    ref_n = nnx.LayerNorm(16, dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(8))
    ours_n.scale[...] = ref_n.scale[...] = jax.random.normal(jax.random.key(6), (16,))
    ours_n.bias[...] = ref_n.bias[...] = jax.random.normal(jax.random.key(7), (16,))
    got, want = ours_n(y), ref_n(y)
    assert got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@pytest.mark.parametrize("sampling", ["cross_attn", "gaussian"])
def test_every_parameter_has_logical_axes_and_shards(sampling):
    from trackedit_jax.parallel import logical_axes_of, make_mesh, state_shardings

    cfg = ConditionerConfig(dim=16, heads=2, temporal_layers=1, num_freqs=4, sampling=sampling)
    state = nnx.state(nnx.eval_shape(lambda: TrackConditioner(cfg, D, rngs=nnx.Rngs(0))), nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    missing = [path for path, v in flat.items() if logical_axes_of(v) is None]
    assert not missing, f"parameters without logical axes (silently replicated on a mesh): {missing}"
    specs = {k: s.spec for k, s in nnx.to_flat_state(state_shardings(state, make_mesh({"fsdp": 4, "tensor": 2})))}
    assert specs[("temporal", 0, "fc1", "kernel")] == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert specs[("temporal", 0, "fc2", "kernel")] == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert specs[("sample_value", "kernel")] == jax.sharding.PartitionSpec("fsdp", None)  # fsdp used once
