"""Radix select in plain JAX: the algorithm the Pallas kernels implement, written for XLA.

For one row of int32 keys (:func:`~pallas_kernels.topk.reference.sortable_keys`) and ``k``:

1. Threshold. ``T`` = the k-th largest key = the largest ``t`` with ``count(key >= t) >= k``. It is
   found from the top bit down, ``radix_bits`` bits per pass: with the bits decided so far in ``lo``,
   count ``c_d = count(key >= lo + d * 2**shift)`` for every digit ``d`` (a cumulative per-digit
   histogram, counted with compares only: no scatter, no sort), and keep the largest ``d`` with
   ``c_d >= k``. The search runs on the bit pattern ``U = key ^ INT_MIN`` (unsigned order) so that
   building candidates is a bitwise OR; candidates are compared back in the signed domain.
2. Ties. ``need = k - count(key > T) >= 1`` of the keys equal to ``T`` are taken, lowest index first.
3. Compaction: the selected indices in ascending index order (:func:`compact_mask`: a prefix sum
   gives each selected index its output slot, one scatter writes it; the TPU kernel compacts tile
   by tile without a prefix-sum primitive).

The ``32 / radix_bits`` passes are unrolled (a Python loop): on a GPU an XLA while loop reads its
predicate back to the host every iteration.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.topk.reference import sortable_keys

INT_MIN = jnp.iinfo(jnp.int32).min


def digit_candidates(lo_u: jax.Array, shift: jax.Array | int, radix_bits: int) -> jax.Array:
    """``[2**radix_bits]`` signed candidate thresholds ``(lo_u | d << shift) ^ INT_MIN``."""
    d = jnp.arange(1 << radix_bits, dtype=jnp.int32)
    return (lo_u | lax.shift_left(d, jnp.asarray(shift, jnp.int32))) ^ jnp.int32(INT_MIN)


def next_digit(counts: jax.Array, k: jax.Array | int) -> jax.Array:
    """Largest ``d`` with ``counts[d] >= k`` given non-increasing counts and ``counts[0] >= k``."""
    return jnp.sum(counts[1:] >= k).astype(jnp.int32)


def kth_largest_key(keys: jax.Array, k: int, *, radix_bits: int = 4) -> jax.Array:
    """The k-th largest entry of the int32 row ``keys`` (``[N]``), by radix descent."""

    def one_pass(i: int, lo_u: jax.Array) -> jax.Array:
        shift = 32 - radix_bits * (i + 1)
        cands = digit_candidates(lo_u, shift, radix_bits)
        counts = jnp.sum(keys[None, :] >= cands[:, None], axis=1, dtype=jnp.int32)
        return lo_u | lax.shift_left(next_digit(counts, k), shift)

    lo_u = jnp.int32(0)
    for i in range(32 // radix_bits):
        lo_u = one_pass(i, lo_u)
    return lo_u ^ jnp.int32(INT_MIN)


def select_mask(keys: jax.Array, k: int, *, radix_bits: int = 4) -> jax.Array:
    """``[N]`` bool, true on exactly the top-``k`` keys (ties to the lower index)."""
    return mask_above(keys, kth_largest_key(keys, k, radix_bits=radix_bits), k)


def mask_above(keys: jax.Array, t: jax.Array, k: int) -> jax.Array:
    """``[N]`` bool: the keys above the k-th largest key ``t``, then the lowest-index ties."""
    tie = keys == t
    need = k - jnp.sum(keys > t, dtype=jnp.int32)
    return (keys > t) | (tie & (jnp.cumsum(tie, dtype=jnp.int32) <= need))


def compact_mask(mask: jax.Array, k: int) -> jax.Array:
    """The indices of the ``k`` true entries of the ``[N]`` bool ``mask``, ascending, as ``[k]`` int32.

    ``jnp.nonzero(mask, size=k)`` computes the same through a ``bincount`` over all N prefix sums,
    a scatter-add whose updates pile onto few slots; here each true entry has its own slot
    (``cumsum(mask) - 1``) and the N - k others are dropped by the scatter.
    """
    n = mask.shape[-1]
    slot = jnp.where(mask, jnp.cumsum(mask, dtype=jnp.int32) - 1, k)
    out = jnp.zeros((k,), jnp.int32)
    return out.at[slot].set(jnp.arange(n, dtype=jnp.int32), mode="drop")


@functools.partial(jax.jit, static_argnames=("k", "radix_bits"))
def topk_set_radix(x: jax.Array, k: int, *, radix_bits: int = 4) -> jax.Array:
    """Indices ``[..., k]`` int32 of the top-``k`` entries of each row, in ascending index order."""

    def row(xr: jax.Array) -> jax.Array:
        mask = select_mask(sortable_keys(xr), k, radix_bits=radix_bits)
        return compact_mask(mask, k)

    flat = x.reshape(-1, x.shape[-1])
    return jax.vmap(row)(flat).reshape(*x.shape[:-1], k)


@jax.jit
def order_by_value(x: jax.Array, indices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reorders a top-k set (``[..., k]`` indices into ``x``) to descending value, ties by index."""
    vals = jnp.take_along_axis(x, indices, axis=-1)
    keys = sortable_keys(vals)
    _, idx = lax.sort((~keys, indices), dimension=indices.ndim - 1, num_keys=2)
    return jnp.take_along_axis(x, idx, axis=-1), idx
