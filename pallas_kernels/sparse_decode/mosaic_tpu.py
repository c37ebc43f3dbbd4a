"""Flash-decoding over a selected token set as a Pallas TPU kernel (interpretable on CPU).

The selected rows are gathered once in XLA (``B x Hkv x d``: 2688 x 8 x 128 bf16 = 5.5 MiB for the
paper's budget, ~0.3% of a 1M-token K cache) and laid out as ``[B, Hkv * d]``. Grid
``(Hkv, B / block_b)``: each program scores one split of the set against the G query heads of one
KV head and writes a partial ``(max m_s, sum l_s, unnormalised output o_s)``; the combine in XLA
is ``o = sum_s exp(m_s - m) o_s / sum_s exp(m_s - m) l_s``. Splitting the set (not the heads only)
is what fills the chip when a decode step has a single query.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _compat, _xla_math
from pallas_kernels.sparse_decode.config import BlockSizes


def _split_kernel(
    q_ref: Any, k_ref: Any, v_ref: Any, ok_ref: Any, m_ref: Any, l_ref: Any, o_ref: Any, *, scale
) -> None:
    kt = k_ref[...]  # [block_b, d]
    qg = q_ref[...].astype(kt.dtype)  # [G, d]
    s = lax.dot_general(qg, kt, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    s = jnp.where(ok_ref[...] > 0, s * jnp.float32(scale), -jnp.inf)  # [G, block_b]
    m = jnp.max(s, axis=1, keepdims=True)
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    e = jnp.exp(s - m_safe)
    vt = v_ref[...]
    m_ref[...] = m
    l_ref[...] = jnp.sum(e, axis=1, keepdims=True)
    o_ref[...] = jnp.dot(e.astype(vt.dtype), vt, preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("scale", "gqa_mapping", "block_sizes", "interpret"))
def sparse_decode_pallas(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    *,
    scale: float,
    gqa_mapping: str,
    block_sizes: BlockSizes,
    interpret: Any = False,
) -> jax.Array:
    """``[Hq, d]`` attention over the valid gathered tokens (see module docstring)."""
    hq, d = q.shape
    _, hkv, _ = k.shape
    g = hq // hkv
    b = indices.shape[0]
    bb = block_sizes.block_b
    b_pad = pl.cdiv(b, bb) * bb
    n_split = b_pad // bb
    valid = valid.astype(bool)
    pad = (0, b_pad - b)
    idx = jnp.pad(indices.astype(jnp.int32), pad)
    ok = jnp.pad(valid, pad).astype(jnp.int32)[None, :]  # [1, b_pad]
    kg = k[idx].reshape(b_pad, hkv * d)
    # Zero invalid values: they may be padding slots holding anything, and 0 * NaN = NaN.
    vg = jnp.where(ok[0, :, None, None] > 0, v[idx], jnp.zeros((), v.dtype)).reshape(b_pad, hkv * d)
    qg = _xla_math.group_queries(q, hkv, gqa_mapping)
    interp = _compat.resolve_interpret(interpret)
    m, l, o = pl.pallas_call(
        functools.partial(_split_kernel, scale=scale),
        out_shape=(
            jax.ShapeDtypeStruct((hkv, n_split, g, 1), jnp.float32),
            jax.ShapeDtypeStruct((hkv, n_split, g, 1), jnp.float32),
            jax.ShapeDtypeStruct((hkv, n_split, g, d), jnp.float32),
        ),
        grid=(hkv, n_split),
        in_specs=[
            pl.BlockSpec((None, g, d), lambda h, s: (h, 0, 0)),
            pl.BlockSpec((bb, d), lambda h, s: (s, h)),
            pl.BlockSpec((bb, d), lambda h, s: (s, h)),
            pl.BlockSpec((1, bb), lambda h, s: (0, s)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, g, 1), lambda h, s: (h, s, 0, 0)),
            pl.BlockSpec((None, None, g, 1), lambda h, s: (h, s, 0, 0)),
            pl.BlockSpec((None, None, g, d), lambda h, s: (h, s, 0, 0)),
        ],
        compiler_params=None if interp else _compat.tpu_compiler_params(("parallel", "parallel")),
        interpret=interp,
        name="sparse_decode_split",
    )(qg, kg, vg, ok)
    out = combine_splits(m, l, o)  # [Hkv, G, d]
    return _xla_math.ungroup_heads(out, gqa_mapping).astype(jnp.result_type(q.dtype, v.dtype))


def combine_splits(m: jax.Array, l: jax.Array, o: jax.Array) -> jax.Array:
    """Merges per-split partials ``[..., S, G, 1|d]`` over the split axis -3; empty heads -> 0."""
    m_all = jnp.max(m, axis=-3, keepdims=True)
    m_all = jnp.where(m_all == -jnp.inf, 0.0, m_all)
    w = jnp.exp(m - m_all)  # 0 for empty splits (m = -inf)
    num = jnp.sum(w * o, axis=-3)
    den = jnp.sum(w * l, axis=-3)
    return num / jnp.where(den > 0, den, 1.0)
