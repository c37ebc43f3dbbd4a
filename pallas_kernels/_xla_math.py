"""Plain-JAX TokenSelect math: the one implementation behind the kernels' references, their ``xla``
backends and :mod:`jaxsel.attention` (which documents it; arXiv:2411.02886).

Unchecked and unbatched: callers validate with :mod:`pallas_kernels._checks` and batch with ``vmap``.
GQA head ``h`` reads KV head ``g(h) = h // (Hq/Hkv)`` ("group") or ``h % Hkv`` ("modulo"). Products
run in the cache's dtype with f32 accumulation (a bf16 cache is never copied to f32); softmax in f32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Selection = tuple[jax.Array, jax.Array]


def group_queries(q: jax.Array, hkv: int, gqa_mapping: str) -> jax.Array:
    """``[..., Hq, d] -> [..., Hkv, G, d]``: ``[..., k, i, :]`` is the i-th query head of KV head k."""
    *lead, hq, d = q.shape
    g = hq // hkv
    if gqa_mapping == "group":
        return q.reshape(*lead, hkv, g, d)
    return jnp.swapaxes(q.reshape(*lead, g, hkv, d), -3, -2)  # head h = i * Hkv + kv_head


def ungroup_heads(x: jax.Array, gqa_mapping: str) -> jax.Array:
    """Inverse of :func:`group_queries` on a per-head result ``[Hkv, G, ...] -> [Hq, ...]``."""
    hkv, g = x.shape[:2]
    if gqa_mapping == "group":
        return x.reshape(hkv * g, *x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape(hkv * g, *x.shape[2:])


def head_scores(q: jax.Array, k: jax.Array, gqa_mapping: str) -> jax.Array:
    """``s[h, j] = q[h] . k[j, g(h)]`` in f32: ``q [Hq, d]``, ``k [M, Hkv, d]`` -> ``[Hq, M]``.

    One batched dot per KV head, reading each KV head once for all its query heads. (Not a fused
    multiply-reduce: XLA:CPU computed that one wrongly under ``jit(vmap)`` over a batch of one;
    ``tests/attention/test_select.py`` keeps that case.)
    """
    hq, d = q.shape
    m, hkv, _ = k.shape
    g = hq // hkv
    qc = q.astype(k.dtype)
    if gqa_mapping == "group":
        s = jnp.einsum("kgd,nkd->kgn", qc.reshape(hkv, g, d), k, preferred_element_type=jnp.float32)
    else:  # head h = i * Hkv + kv_head
        s = jnp.einsum("gkd,nkd->gkn", qc.reshape(g, hkv, d), k, preferred_element_type=jnp.float32)
    return s.reshape(hq, m)


def head_values(p: jax.Array, v: jax.Array, gqa_mapping: str) -> jax.Array:
    """``o[h] = sum_j p[h, j] v[j, g(h)]``: ``p [Hq, M]`` (f32), ``v [M, Hkv, d]`` -> ``[Hq, d]`` f32."""
    hq, m = p.shape
    _, hkv, d = v.shape
    g = hq // hkv
    pc = p.astype(v.dtype)
    if gqa_mapping == "group":
        o = jnp.einsum("kgn,nkd->kgd", pc.reshape(hkv, g, m), v, preferred_element_type=jnp.float32)
    else:
        o = jnp.einsum("gkn,nkd->gkd", pc.reshape(g, hkv, m), v, preferred_element_type=jnp.float32)
    return o.reshape(hq, d)


def masked_softmax(logits: jax.Array, mask: jax.Array | None, axis: int = -1) -> jax.Array:
    """f32 softmax over the entries where ``mask`` is true; 0 elsewhere; an all-masked row gives 0.

    Finite for any finite or -inf logits (the max is subtracted; an empty row divides by 1).
    """
    logits = logits.astype(jnp.float32)
    x = logits if mask is None else jnp.where(mask, logits, -jnp.inf)
    m = jnp.max(x, axis=axis, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(x - m)
    z = jnp.sum(e, axis=axis, keepdims=True)
    return e / jnp.where(z > 0, z, 1.0)


def token_scores(
    q: jax.Array, k: jax.Array, kv_len: jax.Array | int, *, scale: float, gqa_mapping: str
) -> jax.Array:
    """``[Hq, N]`` f32 ``scale * q[h] . k[j, g(h)]``, ``-inf`` at padding positions ``j >= kv_len``."""
    s = head_scores(q, k, gqa_mapping) * jnp.float32(scale)
    return jnp.where(jnp.arange(k.shape[0])[None, :] < kv_len, s, -jnp.inf)


def soft_vote(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """``[N]`` f32: each head's softmax over the ``mask`` tokens (``[N]`` or ``[H, N]``), summed."""
    return jnp.sum(masked_softmax(scores, mask.astype(bool)), axis=0)


def middle_candidates(n: int, kv_len: jax.Array | int, *, n_sink: int, n_local: int) -> jax.Array:
    """``[N]`` bool, the middle tokens ``n_sink <= j < kv_len - n_local``."""
    pos = jnp.arange(n)
    return (pos >= n_sink) & (pos < kv_len - n_local)


def soft_votes(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    n_sink: int,
    n_local: int,
    scale: float,
    gqa_mapping: str,
) -> jax.Array:
    """``[N]`` f32 soft votes of the middle candidates, 0 elsewhere."""
    cand = middle_candidates(k.shape[0], kv_len, n_sink=n_sink, n_local=n_local)
    return soft_vote(token_scores(q, k, kv_len, scale=scale, gqa_mapping=gqa_mapping), cand)


def pool_votes(votes: jax.Array, candidates: jax.Array, vote_pool: int) -> jax.Array:
    """Centred max-pool of the candidates' votes over ``vote_pool`` neighbours (1: identity)."""
    if vote_pool == 1:
        return votes
    x = jnp.where(candidates, votes, -jnp.inf)
    left, right = (vote_pool - 1) // 2, vote_pool // 2
    return lax.reduce_window(x, -jnp.inf, lax.max, (vote_pool,), (1,), ((left, right),))


def rank_votes(votes: jax.Array, candidates: jax.Array, vote_pool: int = 1) -> jax.Array:
    """What the top-k ranks: non-finite votes at the lowest finite value (NaN never wins, a
    candidate always beats a non-candidate), pooled, non-candidates at ``-inf``."""
    lo, hi = jnp.finfo(jnp.float32).min, jnp.finfo(jnp.float32).max
    v = jnp.nan_to_num(votes.astype(jnp.float32), nan=lo, posinf=hi, neginf=lo)
    return jnp.where(candidates, pool_votes(v, candidates, vote_pool), -jnp.inf)


def assemble(
    middle: jax.Array | None, kv_len: jax.Array | int, *, n_sink: int, n_local: int
) -> Selection:
    """Sinks, then the ascending ``middle`` indices, then the last ``n_local`` tokens; all valid."""
    parts = [jnp.arange(n_sink, dtype=jnp.int32)]
    if middle is not None:
        parts.append(middle.astype(jnp.int32))
    parts.append(jnp.asarray(kv_len, jnp.int32) - n_local + jnp.arange(n_local, dtype=jnp.int32))
    idx = jnp.concatenate(parts)
    return idx, jnp.ones(idx.shape, bool)


def lax_topk_set(x: jax.Array, k: int) -> jax.Array:
    """Indices of ``lax.top_k(x, k)`` (ties to the lower index), ascending."""
    return jnp.sort(lax.top_k(x, k)[1])


def select_from_votes(
    votes: jax.Array | None,
    kv_len: jax.Array | int,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    vote_pool: int = 1,
    topk_set: Callable[[jax.Array, int], jax.Array] = lax_topk_set,
) -> Selection:
    """The sparse selection: sinks + ``topk_set(ranked votes, top_k)`` + locals (``votes`` may be
    None when ``top_k == 0``)."""
    middle = None
    if top_k > 0:
        cand = middle_candidates(votes.shape[0], kv_len, n_sink=n_sink, n_local=n_local)
        middle = topk_set(rank_votes(votes, cand, vote_pool), top_k)
    return assemble(middle, kv_len, n_sink=n_sink, n_local=n_local)


def dense_selection(budget: int, kv_len: jax.Array | int) -> Selection:
    """The ``kv_len <= budget`` answer: ``indices = 0..budget-1``, ``valid = indices < kv_len``."""
    idx = jnp.arange(budget, dtype=jnp.int32)
    return idx, idx < kv_len


def budgeted(
    kv_len: jax.Array | int,
    budget: int,
    sparse_fn: Callable[[], Selection],
    *,
    dense_fn: Callable[[], Selection] | None = None,
    use_cond: bool = True,
) -> Selection:
    """``dense_fn()`` (default :func:`dense_selection`) when ``kv_len <= budget``, else ``sparse_fn()``.

    A static ``kv_len`` decides in Python; a traced one through ``lax.cond``, which skips the
    scoring when dense (under ``vmap`` both branches run; the answer is still exact).
    ``use_cond=False`` computes both and selects: kernels run by the TPU / GPU interpreters are
    effects that ``vmap`` of ``cond`` cannot batch.
    """
    static = isinstance(kv_len, int | np.integer)
    kv_len = int(kv_len) if static else jnp.asarray(kv_len)
    if dense_fn is None:
        dense_fn = functools.partial(dense_selection, budget, kv_len)
    if static:
        return dense_fn() if kv_len <= budget else sparse_fn()
    if use_cond:
        return lax.cond(kv_len <= budget, dense_fn, sparse_fn)
    is_dense = kv_len <= budget
    return jax.tree.map(lambda a, b: jnp.where(is_dense, a, b), dense_fn(), sparse_fn())


def select_by_votes(
    votes_fn: Callable[[jax.Array | int], jax.Array],
    kv_len: jax.Array | int,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    use_cond: bool = True,
    **select_kw: Any,
) -> Selection:
    """TokenSelect's budget logic around any vote: dense while ``kv_len <= budget``, else
    :func:`select_from_votes` (``select_kw``: ``vote_pool``, ``topk_set``) of ``votes_fn(kv_len)``,
    which is not called when ``top_k == 0``."""

    def sparse() -> Selection:
        votes = votes_fn(kv_len) if top_k > 0 else None
        return select_from_votes(
            votes, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, **select_kw
        )

    return budgeted(kv_len, n_sink + top_k + n_local, sparse, use_cond=use_cond)


def gathered_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    *,
    scale: float,
    gqa_mapping: str,
    probs: Callable[[jax.Array, jax.Array], jax.Array] = masked_softmax,
) -> jax.Array:
    """``o_h = sum_{j: valid[j]} probs_j(scale * q_h . k[i_j, g(h)]) v[i_j, g(h)]``, ``[B]`` indices.

    ``probs(logits [Hq, B], mask [Hq, B])`` normalises each row (default: :func:`masked_softmax`).
    Invalid entries' values are zeroed before the product: they may point at padding holding
    anything, even NaN, and ``0 * NaN`` would leak through a zero weight. Output in
    ``result_type(q, v)``.
    """
    valid = valid.astype(bool)
    # The gathered rows are laid out KV head first, [Hkv, B, d], before the products: a gather
    # fused into a dot operand with the head axis in the middle ran ~10x slower on XLA:CPU
    # (18 ms vs 2 ms for B = 2688, Hq = 32, Hkv = 8, d = 128).
    kg = jnp.swapaxes(k[indices], 0, 1)
    qg = group_queries(q.astype(k.dtype), k.shape[1], gqa_mapping)  # [Hkv, G, d]
    s = jnp.einsum("kgd,kmd->kgm", qg, kg, preferred_element_type=jnp.float32)
    s = ungroup_heads(s, gqa_mapping) * scale  # [Hq, B]
    p = probs(s, jnp.broadcast_to(valid[None, :], s.shape))
    vg = jnp.swapaxes(jnp.where(valid[:, None, None], v[indices], jnp.zeros((), v.dtype)), 0, 1)
    pg = group_queries(p.astype(v.dtype), v.shape[1], gqa_mapping)  # [Hkv, G, B]
    o = jnp.einsum("kgm,kmd->kgd", pg, vg, preferred_element_type=jnp.float32)
    return ungroup_heads(o, gqa_mapping).astype(jnp.result_type(q.dtype, v.dtype))
