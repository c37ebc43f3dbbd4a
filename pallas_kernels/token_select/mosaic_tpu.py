"""TokenSelect scoring and soft voting as Pallas TPU kernels (``pl.pallas_call``; interpretable on CPU).

Two passes; the K cache is read exactly once:

1. ``score``: grid ``(Hkv, N / block_kv)``. Each program loads one K tile ``[block_kv, d]`` of one
   KV head and scores it against the G query heads of that head's group in one matmul
   (``[G, d] x [d, block_kv]``, products in k's dtype, f32 accumulation), masks non-candidates to
   ``-inf``, writes the f32 scores, and updates a per-head online log-sum-exp (running max ``m`` and
   rescaled sum ``l``, resident across the token axis).
2. ``vote``: grid ``(N / block_vote,)``. ``vote[j] = sum_h exp(s_h[j] - m_h) / l_h`` over all Hq
   heads, non-candidates at ``-inf``, NaN/inf cleaned as the reference does.

Scores cost ``4 * Hq * N`` bytes written and read once, against ``2 * Hkv * d * N`` bytes of bf16 K:
1/16 of the K traffic at Hq=32, Hkv=8, d=128. Recomputing scores instead would read K twice.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _compat
from pallas_kernels._xla_math import group_queries, ungroup_heads
from pallas_kernels.token_select.config import BlockSizes


def _score_kernel(
    kv_len_ref: Any,
    q_ref: Any,
    k_ref: Any,
    s_ref: Any,
    m_ref: Any,
    l_ref: Any,
    *,
    scale: float,
    n_sink: int,
    n_local: int,
    block_kv: int,
) -> None:
    t = pl.program_id(1)

    @pl.when(t == 0)
    def _init() -> None:
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)

    kt = k_ref[...]  # [block_kv, d], loaded once for the whole group
    qg = q_ref[...].astype(kt.dtype)  # [G, d]
    s = lax.dot_general(qg, kt, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    s = s * jnp.float32(scale)
    pos = t * block_kv + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    cand = (pos >= n_sink) & (pos < kv_len_ref[0] - n_local)
    s = jnp.where(cand, s, -jnp.inf)
    s_ref[...] = s

    m_old = m_ref[...]
    m_new = jnp.maximum(m_old, jnp.max(s, axis=1, keepdims=True))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # an all-masked row so far stays at l = 0
    l_ref[...] = l_ref[...] * jnp.exp(m_old - m_safe) + jnp.sum(
        jnp.exp(s - m_safe), axis=1, keepdims=True
    )
    m_ref[...] = m_new


def _vote_kernel(
    kv_len_ref: Any,
    s_ref: Any,
    m_ref: Any,
    l_ref: Any,
    v_ref: Any,
    *,
    n_sink: int,
    n_local: int,
    block_vote: int,
) -> None:
    m = m_ref[...]
    m = jnp.where(jnp.abs(m) < jnp.inf, m, 0.0)
    l = l_ref[...]
    p = jnp.exp(s_ref[...] - m) / jnp.where(l > 0, l, 1.0)  # [Hq, block_vote]
    vote = jnp.sum(p, axis=0, keepdims=True)
    lo, hi = jnp.finfo(jnp.float32).min, jnp.finfo(jnp.float32).max
    vote = jnp.where(vote != vote, lo, jnp.clip(vote, lo, hi))  # nan_to_num
    pos = pl.program_id(0) * block_vote + lax.broadcasted_iota(jnp.int32, vote.shape, 1)
    cand = (pos >= n_sink) & (pos < kv_len_ref[0] - n_local)
    v_ref[...] = jnp.where(cand, vote, -jnp.inf)


@functools.partial(
    jax.jit,
    static_argnames=("n_sink", "n_local", "scale", "gqa_mapping", "block_sizes", "interpret"),
)
def ranked_votes_pallas(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array,
    *,
    n_sink: int,
    n_local: int,
    scale: float,
    gqa_mapping: str,
    block_sizes: BlockSizes,
    interpret: Any = False,
) -> jax.Array:
    """``[N]`` f32 votes ready for the top-k: candidates' soft votes, ``-inf`` elsewhere."""
    hq, d = q.shape
    n, hkv, _ = k.shape
    g = hq // hkv
    bk, bv = block_sizes.block_kv, block_sizes.block_vote
    qg = group_queries(q, hkv, gqa_mapping)  # [Hkv, G, d]
    kv_len = jnp.reshape(kv_len, (1,)).astype(jnp.int32)
    interp = _compat.resolve_interpret(interpret)
    n_tiles = pl.cdiv(n, bk)
    n_s = n_tiles * bk  # scores padded to whole tiles: the ragged last K tile is masked, not copied
    scores, m, l = pl.pallas_call(
        functools.partial(_score_kernel, scale=scale, n_sink=n_sink, n_local=n_local, block_kv=bk),
        out_shape=(
            jax.ShapeDtypeStruct((hkv, g, n_s), jnp.float32),
            jax.ShapeDtypeStruct((hkv, g, 1), jnp.float32),
            jax.ShapeDtypeStruct((hkv, g, 1), jnp.float32),
        ),
        grid_spec=_prefetch_grid_spec(
            grid=(hkv, n_tiles),
            in_specs=[
                pl.BlockSpec((None, g, d), lambda h, t, *_: (h, 0, 0)),
                # K viewed as [N, Hkv * d] (a free reshape): the tile of head h is the column
                # block h, so TPU tiling sees a [block_kv, d] block with d a multiple of 128.
                pl.BlockSpec((bk, d), lambda h, t, *_: (t, h)),
            ],
            out_specs=[
                pl.BlockSpec((None, g, bk), lambda h, t, *_: (h, 0, t)),
                pl.BlockSpec((None, g, 1), lambda h, t, *_: (h, 0, 0)),
                pl.BlockSpec((None, g, 1), lambda h, t, *_: (h, 0, 0)),
            ],
        ),
        compiler_params=None if interp else _compat.tpu_compiler_params(("parallel", "arbitrary")),
        interpret=interp,
        name="token_select_score",
    )(kv_len, qg, k.reshape(n, hkv * d))
    # Per-head rows in head order (the vote sums over all heads, so the order only matters for
    # matching the reference's summation order).
    scores = ungroup_heads(scores, gqa_mapping)  # [Hq, n_s]
    m = ungroup_heads(m, gqa_mapping)
    l = ungroup_heads(l, gqa_mapping)
    bv = min(bv, n_s)
    n_v = pl.cdiv(n_s, bv) * bv
    votes = pl.pallas_call(
        functools.partial(_vote_kernel, n_sink=n_sink, n_local=n_local, block_vote=bv),
        out_shape=jax.ShapeDtypeStruct((1, n_v), jnp.float32),
        grid_spec=_prefetch_grid_spec(
            grid=(n_v // bv,),
            in_specs=[
                pl.BlockSpec((hq, bv), lambda t, *_: (0, t)),
                pl.BlockSpec((hq, 1), lambda t, *_: (0, 0)),
                pl.BlockSpec((hq, 1), lambda t, *_: (0, 0)),
            ],
            out_specs=pl.BlockSpec((1, bv), lambda t, *_: (0, t)),
        ),
        compiler_params=None if interp else _compat.tpu_compiler_params(("parallel",)),
        interpret=interp,
        name="token_select_vote",
    )(kv_len, scores, m, l)
    return votes[0, :n]


def _prefetch_grid_spec(**kw: Any) -> Any:
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1, **kw)
