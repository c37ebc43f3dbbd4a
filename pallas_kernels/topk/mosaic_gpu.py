"""Radix-select top-k with its counting passes as a Mosaic GPU kernel (Hopper, ``plgpu.kernel``).

The threshold search of :mod:`pallas_kernels.topk.radix` reads the whole row once per pass
(``32 / radix_bits`` passes), so those passes are the kernel: grid ``(R, N_pad / block)`` (named
axes ``"r"``, ``"b"``), one warpgroup per block. Each block TMA-copies its ``[block_rows, 128]``
tile of int32 sortable keys and the pass's ``2**radix_bits`` candidate thresholds (one per row of a
``[D, 128]`` array, so no scalar loads), counts ``key >= candidate`` per lane with compares and a
column sum (no atomics, no scatter), and writes ``[D, 128]`` partial counts. XLA sums the partials
(``R x blocks x D x 128`` ints: 1/(block_rows) of the row) and picks the next digit. The ties at the
threshold (lowest index first) and the compaction to ascending indices are plain JAX
(:func:`pallas_kernels.topk.radix.mask_above`, :func:`~pallas_kernels.topk.radix.compact_mask`), as
is the sortable-key transform.

Tested: the kernel in the Mosaic GPU interpreter on jax 0.10.2 and 0.12 (identical indices to
``lax.top_k``, ties and NaNs included), its CUDA lowering on a CPU-only machine, and compiled on an
H200 (jax 0.11.2, 2026-11-26): identical to NumPy on two 1M-long rows with k = 2048, one with heavy
ties (at ``block_rows`` = 256, ``radix_bits`` = 4, the default then). Speed there at 1M: 0.37 ms at
the current default against 0.25-0.27 ms for ``lax.top_k`` (0.74x), so ``implementation=None``
keeps ``lax.top_k`` (``results/gpu/README.md``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import _mgpu
from pallas_kernels.topk.config import LANES, BlockSizes
from pallas_kernels.topk.radix import (
    INT_MIN,
    compact_mask,
    digit_candidates,
    mask_above,
    next_digit,
)
from pallas_kernels.topk.reference import sortable_keys


def _count_kernel(
    keys_ref: Any, cand_ref: Any, out_ref: Any, keys_smem: Any, cand_smem: Any, cnt_smem: Any,
    bar: Any, *, block_rows: int, n_digits: int, interp: Any,
) -> None:  # fmt: skip
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    r = lax.axis_index("r")
    b = lax.axis_index("b")
    plgpu.copy_gmem_to_smem(keys_ref.at[r, pl.ds(b * block_rows, block_rows)], keys_smem, bar)
    plgpu.copy_gmem_to_smem(cand_ref.at[r], cand_smem, bar)
    plgpu.barrier_wait(bar)
    keys = _mgpu.load_tile(keys_smem, interp)  # [block_rows, 128] int32
    for d in range(n_digits):
        c = _mgpu.load_vector(cand_smem.at[d], "col", interp)  # [128], every lane the same
        hit = (keys >= lax.broadcast_in_dim(c, keys.shape, [1])).astype(jnp.int32)
        cnt_smem.at[d][...] = jnp.sum(hit, axis=0)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(cnt_smem, out_ref.at[r, b])
    plgpu.wait_smem_to_gmem(0)


def default_block_sizes(n: int) -> BlockSizes:
    """Tiles of 64 rows of 128 keys, 2 radix bits per pass (16 passes of 4 candidates).

    Measured on an H200 at N = 1M, k = 2048 (``results/gpu/bench_kernel_variants.json``):
    ``block_rows`` 64 / 256 x ``radix_bits`` 2 / 4 take 0.37 / 0.56 / 0.53 / 0.97 ms. Smaller tiles
    give 128 blocks per pass instead of 32 (the H200 has 132 SMs), and 2 bits count 4 candidates
    per key instead of 16.
    """
    del n
    return BlockSizes(block_rows=64, radix_bits=2)


@functools.partial(jax.jit, static_argnames=("k", "block_sizes", "interpret"))
def topk_set_mosaic_gpu(
    x: jax.Array, k: int, *, block_sizes: BlockSizes | None = None, interpret: Any = False
) -> jax.Array:
    """Indices ``[R, k]`` of the top-``k`` entries of each row of ``x`` (``[R, N]``), ascending."""
    rows, n = x.shape
    bs = block_sizes or default_block_sizes(n)
    if bs.block_rows % 64:
        raise ValueError(f"mosaic_gpu needs block_rows a multiple of 64, got {bs.block_rows=}")
    interp = _mgpu.interpret_params(interpret)
    bits = bs.radix_bits
    n_digits = 1 << bits
    n_pad = bs.padded_length(n)
    n_blocks = n_pad // (bs.block_rows * LANES)
    keys = sortable_keys(x)
    # INT_MIN padding ranks last and, at equal keys, after every real index.
    keys3 = jnp.pad(keys, ((0, 0), (0, n_pad - n)), constant_values=INT_MIN)
    keys3 = keys3.reshape(rows, n_pad // LANES, LANES)
    count = _mgpu.kernel(
        functools.partial(
            _count_kernel, block_rows=bs.block_rows, n_digits=n_digits, interp=interp
        ),
        jax.ShapeDtypeStruct((rows, n_blocks, n_digits, LANES), jnp.int32),
        scratch=[
            _mgpu.operand_smem((bs.block_rows, LANES), jnp.int32),  # swizzled: conflict-free loads
            _smem((n_digits, LANES), jnp.int32),
            _smem((n_digits, LANES), jnp.int32),
            _barrier(2),
        ],
        grid=(rows, n_blocks),
        grid_names=("r", "b"),
        interpret=interp,
    )

    def one_pass(i: int, lo_u: jax.Array) -> jax.Array:  # lo_u: [R] bits decided so far
        shift = 32 - bits * (i + 1)
        cands = jax.vmap(lambda lo: digit_candidates(lo, shift, bits))(lo_u)  # [R, D]
        cand_rows = jnp.broadcast_to(cands[:, :, None], (rows, n_digits, LANES))
        counts = jnp.sum(count(keys3, cand_rows), axis=(1, 3))  # [R, D]
        digit = jax.vmap(lambda c: next_digit(c, k))(counts)
        return lo_u | lax.shift_left(digit, shift)

    lo_u = jnp.zeros((rows,), jnp.int32)
    for i in range(32 // bits):  # unrolled: a GPU while loop syncs with the host per iteration
        lo_u = one_pass(i, lo_u)
    thresh = lo_u ^ jnp.int32(INT_MIN)

    def finish(key_row: jax.Array, t: jax.Array) -> jax.Array:
        return compact_mask(mask_above(key_row, t, k), k)

    return jax.vmap(finish)(keys, thresh)


def _smem(shape: tuple[int, ...], dtype: Any) -> Any:
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.SMEM(shape, dtype)


def _barrier(num_arrivals: int) -> Any:
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.Barrier(num_arrivals=num_arrivals)
