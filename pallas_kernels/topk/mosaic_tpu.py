"""Radix-select top-k as a Pallas TPU kernel (``pl.pallas_call``; runs interpreted on CPU).

One program per row; the row sits in VMEM as ``[N_pad / 128, 128]`` and is scanned in
``[block_rows, 128]`` tiles. All passes use only compares, integer sums, selects and bitcasts, which
every Pallas backend lowers (no sort, top_k, argmax or cumsum):

1. ``32 / radix_bits`` passes find the k-th largest key ``T`` (see :mod:`pallas_kernels.topk.radix`).
2. One pass counts ``key > T``; ``ceil(log2 N) / radix_bits`` passes find the index ``p`` of the last
   tie to take, by the same radix descent over index bits on ``count(key == T and index < j)``.
3. Compaction: tiles with a selected element are walked row by row; a row's exclusive prefix count
   comes from a 0/1 matmul with a strictly upper-triangular matrix (exact), and each selected index
   is added into its output slot through a one-hot ``[136, 128]`` compare and a lane sum. The output
   is a column ``[k + 136, 1]`` so that the written window starts at a sublane-aligned offset.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _compat
from pallas_kernels.topk.config import LANES, BlockSizes
from pallas_kernels.topk.radix import INT_MIN

_WINDOW = LANES + 8  # slots one 128-wide row can touch from a sublane-aligned base


def _tile_keys(x_ref: Any, row0: jax.Array, rows: int, n: int) -> tuple[jax.Array, jax.Array]:
    """int32 sortable keys and flat indices of ``x_ref[row0:row0 + rows]``; padding -> INT_MIN."""
    x = x_ref[pl.ds(row0, rows), :].astype(jnp.float32)
    bits = lax.bitcast_convert_type(x, jnp.int32)
    keys = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
    r = lax.broadcasted_iota(jnp.int32, (rows, LANES), 0)
    c = lax.broadcasted_iota(jnp.int32, (rows, LANES), 1)
    idx = (row0 + r) * LANES + c
    return jnp.where(idx < n, keys, jnp.int32(INT_MIN)), idx


def _count(pred: jax.Array) -> jax.Array:
    return jnp.sum(pred.astype(jnp.int32))


def radix_select_kernel(
    x_ref: Any, o_ref: Any, *, n: int, k: int, block_rows: int, radix_bits: int, index_bits: int
) -> None:
    """Writes the top-``k`` indices of the row ``x_ref`` (``[rows, 128]``) ascending into ``o_ref``."""
    n_tiles = x_ref.shape[0] // block_rows
    n_digits = 1 << radix_bits

    def scan(fn: Any, init: Any) -> Any:
        def body(t: jax.Array, acc: Any) -> Any:
            row0 = pl.multiple_of(t * block_rows, block_rows)
            keys, idx = _tile_keys(x_ref, row0, block_rows, n)
            return fn(keys, idx, acc)

        return lax.fori_loop(0, n_tiles, body, init)

    zeros = tuple(jnp.int32(0) for _ in range(n_digits))

    def digits_of(lo: jax.Array, shift: jax.Array) -> list[jax.Array]:
        return [lo | lax.shift_left(jnp.int32(d), shift) for d in range(n_digits)]

    # 1. k-th largest key, radix_bits per pass, top bits first (bit pattern U = key ^ INT_MIN).
    def key_pass(i: jax.Array, lo_u: jax.Array) -> jax.Array:
        shift = 32 - radix_bits * (i + 1)
        cands = [c ^ jnp.int32(INT_MIN) for c in digits_of(lo_u, shift)]
        counts = scan(
            lambda keys, idx, acc: tuple(a + _count(keys >= c) for a, c in zip(acc, cands)),
            zeros,
        )
        digit = sum((c >= k).astype(jnp.int32) for c in counts[1:])
        return lo_u | lax.shift_left(digit, shift)

    thresh = lax.fori_loop(0, 32 // radix_bits, key_pass, jnp.int32(0)) ^ jnp.int32(INT_MIN)

    # 2. How many ties to take, and the index p of the last one taken (largest p with
    #    count(key == T and index < p) < need), by the same descent over index bits.
    n_gt = scan(lambda keys, idx, acc: acc + _count(keys > thresh), jnp.int32(0))
    need = k - n_gt

    def index_pass(i: jax.Array, p: jax.Array) -> jax.Array:
        shift = index_bits - radix_bits * (i + 1)
        cands = digits_of(p, shift)
        counts = scan(
            lambda keys, idx, acc: tuple(
                a + _count((keys == thresh) & (idx < c)) for a, c in zip(acc, cands)
            ),
            zeros,
        )
        digit = sum((c < need).astype(jnp.int32) for c in counts) - 1
        return p | lax.shift_left(digit, shift)

    p = lax.fori_loop(0, index_bits // radix_bits, index_pass, jnp.int32(0))

    # 3. Compaction into ascending index order.
    o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)
    lane = lax.broadcasted_iota(jnp.int32, (LANES, LANES), 0)
    upper = (lane < lax.broadcasted_iota(jnp.int32, (LANES, LANES), 1)).astype(jnp.float32)
    slots = lax.broadcasted_iota(jnp.int32, (_WINDOW, LANES), 0)

    def selected(keys: jax.Array, idx: jax.Array) -> jax.Array:
        return (keys > thresh) | ((keys == thresh) & (idx <= p))

    def write_row(r: jax.Array, offset: jax.Array) -> jax.Array:
        keys, idx = _tile_keys(x_ref, r, 1, n)
        sel = selected(keys, idx)
        cnt = _count(sel)

        @pl.when(cnt > 0)
        def _() -> None:
            before = jnp.dot(sel.astype(jnp.float32), upper, preferred_element_type=jnp.float32)
            base = pl.multiple_of(offset & jnp.int32(-8), 8)  # offset >= 0
            local = offset - base + before.astype(jnp.int32)  # [1, 128] slot of each element
            hit = sel & (local == slots)  # [136, 128]
            vals = jnp.sum(jnp.where(hit, idx, 0), axis=1, keepdims=True)
            o_ref[pl.ds(base, _WINDOW), :] += vals

        return offset + cnt

    def compact_tile(t: jax.Array, offset: jax.Array) -> jax.Array:
        row0 = pl.multiple_of(t * block_rows, block_rows)
        keys, idx = _tile_keys(x_ref, row0, block_rows, n)
        cnt = _count(selected(keys, idx))
        return lax.cond(
            cnt > 0,
            lambda: lax.fori_loop(row0, row0 + block_rows, write_row, offset),
            lambda: offset + cnt,
        )

    lax.fori_loop(0, n_tiles, compact_tile, jnp.int32(0))


@functools.partial(jax.jit, static_argnames=("k", "block_sizes", "interpret"))
def topk_set_pallas(
    x: jax.Array, k: int, *, block_sizes: BlockSizes | None = None, interpret: Any = False
) -> jax.Array:
    """Indices ``[R, k]`` of the top-``k`` entries of each row of ``x`` (``[R, N]``), ascending."""
    rows, n = x.shape
    bs = block_sizes or BlockSizes.get_default(n, k)
    n_pad = bs.padded_length(n)
    x = jnp.pad(x, ((0, 0), (0, n_pad - n))).reshape(rows, n_pad // LANES, LANES)
    index_bits = max(
        bs.radix_bits, -(-max(n_pad - 1, 1).bit_length() // bs.radix_bits) * bs.radix_bits
    )
    out_len = -(-k // 8) * 8 + _WINDOW
    kernel = functools.partial(
        radix_select_kernel,
        n=n,
        k=k,
        block_rows=bs.block_rows,
        radix_bits=bs.radix_bits,
        index_bits=index_bits,
    )
    interp = _compat.resolve_interpret(interpret)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((rows, out_len, 1), jnp.int32),
        grid=(rows,),
        in_specs=[pl.BlockSpec((None, n_pad // LANES, LANES), lambda r: (r, 0, 0))],
        out_specs=pl.BlockSpec((None, out_len, 1), lambda r: (r, 0, 0)),
        compiler_params=None if interp else _compat.tpu_compiler_params(("parallel",)),
        interpret=interp,
        name="radix_topk",
    )(x)
    return out[:, :k, 0]
