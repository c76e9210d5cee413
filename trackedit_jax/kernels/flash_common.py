"""Pieces shared by our attention kernels (the Pallas flash kernels for GPU/Triton and TPU/Mosaic, the
chunked pure-JAX kernel) and by `parallel.context_attention`, which builds its ring from the same maths.

Both kernels see padded inputs: sequence lengths are rounded up to a multiple of the block sizes and keys
that are padding or masked out get an additive logit bias of -inf (0 for attended keys), so they receive
exactly zero probability and zero gradient. The online softmax guards its running maximum against
all -inf blocks (a block can be entirely masked for a row).

A batch element whose keys are ALL masked has no valid softmax; the project convention (the "xla" impl,
which writes finfo.min into masked logits) is a uniform average over its real keys' values with no
gradient into q or k. `split_fully_masked` hands such elements to the kernel unmasked (so it stays
finite) and `merge_fully_masked` replaces their rows by mean(v) afterwards; their kernel rows then get a
zero cotangent, so the backward kernels contribute nothing for them either.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the flash kernels (query rows x key rows per program).

    `block_q`/`block_k` tile the forward pass. The backward pass runs two kernels: dK/dV (one key block
    per program, looping over query blocks) and dQ (one query block per program, looping over key
    blocks); their tiles default to the forward ones.
    """

    block_q: int = 128
    block_k: int = 128
    block_q_dkv: int | None = None
    block_k_dkv: int | None = None
    block_q_dq: int | None = None
    block_k_dq: int | None = None

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"BlockSizes.{field.name} must be a positive int; got {value!r}")

    @property
    def dkv(self) -> tuple[int, int]:
        return (self.block_q_dkv or self.block_q, self.block_k_dkv or self.block_k)

    @property
    def dq(self) -> tuple[int, int]:
        return (self.block_q_dq or self.block_q, self.block_k_dq or self.block_k)

    def items(self) -> list[tuple[str, int]]:
        """(name, value) of the tiles that are set."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name)]

    def q_multiple(self) -> int:
        """Query lengths are padded to a multiple of every query tile."""
        return math.lcm(self.block_q, self.dkv[0], self.dq[0])

    def k_multiple(self) -> int:
        return math.lcm(self.block_k, self.dkv[1], self.dq[1])

    def clipped(self, len_q: int, len_kv: int, *, fit) -> BlockSizes:
        """Shrinks tiles larger than `fit(length)` (the smallest legal tile covering the sequence)."""

        def clip(block, length):
            if block is None:
                return None
            return min(block, fit(length))

        return BlockSizes(
            block_q=clip(self.block_q, len_q),
            block_k=clip(self.block_k, len_kv),
            block_q_dkv=clip(self.block_q_dkv, len_q),
            block_k_dkv=clip(self.block_k_dkv, len_kv),
            block_q_dq=clip(self.block_q_dq, len_q),
            block_k_dq=clip(self.block_k_dq, len_kv),
        )


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def check_qkv(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> None:
    """Validates (B, L, H, D) q/k/v and a (B, L_kv) key-padding mask; raises ValueError naming the argument."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects q, k, v of shape (B, L, H, D); got q{q.shape}, k{k.shape}, v{v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, L_kv, H, D); got k{k.shape}, v{v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q (B, L_q, H, D) and k (B, L_kv, H, D) disagree: q{q.shape}, k{k.shape}")
    if mask is not None and tuple(mask.shape) != (k.shape[0], k.shape[1]):
        raise ValueError(
            f"mask must be a (B, L_kv) = {(k.shape[0], k.shape[1])} key-padding mask; got {tuple(mask.shape)}"
        )
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")


NN = (((1,), (0,)), ((), ()))  # a @ b
NT = (((1,), (1,)), ((), ()))  # a @ b.T
TN = (((0,), (0,)), ((), ()))  # a.T @ b


def dot(a: jax.Array, b: jax.Array, dims=NN) -> jax.Array:
    """Matmul with float32 accumulation. float32 operands get full float32 precision (IEEE on Triton,
    fp32 contraction on Mosaic) rather than the hardware default (TF32 / bf16 passes)."""
    precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
    return jax.lax.dot_general(a, b, dims, precision=(precision, precision), preferred_element_type=jnp.float32)


def balanced_blocks(length: int, block: int) -> tuple[int, int]:
    """(block size, number of blocks) covering `length` with at most `block` per block and the least
    padding: 2100 with block 2048 becomes 2 x 1050, not 2 x 2048."""
    num = max(1, -(-length // block))
    return -(-length // num), num


def pad_axis(x: jax.Array, axis: int, length: int, value=0) -> jax.Array:
    """`x` padded at the end of `axis` up to `length` with `value` (same dtype; `x` itself when no padding)."""
    if x.shape[axis] == length:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def varying_axes(x: jax.Array) -> frozenset:
    """Manual mesh axes over which `x` varies inside `shard_map` (empty outside). Kernels need it because
    loop carries and cotangents must vary over the same axes as their values; the aval field holding it
    moved between jax releases."""
    t = jax.typeof(x)
    vma = getattr(t, "vma", None)
    if vma is None:
        vma = getattr(getattr(t, "manual_axis_type", None), "varying", frozenset())
    return frozenset(vma)


def key_bias(mask: jax.Array | None, batch: int, len_kv: int, len_kv_padded: int) -> jax.Array | None:
    """(B, L_kv_padded) float32 additive logit bias: 0 for attended keys, -inf for masked and padding keys;
    None when nothing is masked."""
    if mask is None and len_kv == len_kv_padded:
        return None
    if mask is None:
        real = jnp.zeros((batch, len_kv), jnp.float32)
    else:
        real = jnp.where(mask.astype(bool), 0.0, -jnp.inf).astype(jnp.float32)
    pad = jnp.full((batch, len_kv_padded - len_kv), -jnp.inf, jnp.float32)
    return jnp.concatenate([real, pad], axis=1)


def split_fully_masked(mask: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
    """(mask the kernel sees, (B,) bool "has an attended key") for a (B, L_kv) key-padding mask."""
    if mask is None:
        return None, None
    mask = mask.astype(bool)
    has_key = jnp.any(mask, axis=1)
    return mask | ~has_key[:, None], has_key


def merge_fully_masked(out: jax.Array, v: jax.Array, has_key: jax.Array | None) -> jax.Array:
    """Rows of batch elements without any attended key become mean(v) over the real keys."""
    if has_key is None:
        return out
    mean_v = jnp.mean(v.astype(jnp.float32), axis=1, keepdims=True).astype(out.dtype)
    return jnp.where(has_key[:, None, None, None], out, mean_v)


def running_max_shift(m: jax.Array) -> jax.Array:
    """The online-softmax shift: the running maximum, or 0 while a row has seen only -inf logits."""
    return jnp.where(m == -jnp.inf, 0.0, m)
