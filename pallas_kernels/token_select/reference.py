"""Plain-JAX reference of TokenSelect selection (same contract as ``jaxsel.attention.select_tokens``).

One decode step, one layer, one sequence (arXiv:2411.02886, Sec. 3):

    s_h[j]  = scale * q_h . k_{g(h)}[j]
    p_h[j]  = exp(s_h[j] - m_h) / sum_{i in C} exp(s_h[i] - m_h),  m_h = max_{i in C} s_h[i]
    vote[j] = sum_h p_h[j]                 for j in C = {n_sink, ..., kv_len - n_local - 1}
    kept    = {0..n_sink-1} U top_k(vote over C) U {kv_len-n_local..kv_len-1}

Output ``(indices [B] int32 ascending, valid [B] bool)``, ``B = n_sink + top_k + n_local``. When
``kv_len <= B`` the answer is dense: ``indices = 0..B-1``, ``valid = indices < kv_len``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pallas_kernels import _checks


def candidates(n: int, kv_len: jax.Array | int, *, n_sink: int, n_local: int) -> jax.Array:
    """``[N]`` bool, the middle tokens ``n_sink <= j < kv_len - n_local`` ranked by the vote."""
    pos = jnp.arange(n)
    return (pos >= n_sink) & (pos < kv_len - n_local)


def soft_votes_reference(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    gqa_mapping: str = "group",
) -> jax.Array:
    """``[N]`` f32 votes, 0 outside the middle candidates (products in k's dtype, f32 accumulation)."""
    hq, hkv, _d = _checks.check_qk(q, k)
    n = k.shape[0]
    qg = _checks.group_queries(q.astype(k.dtype), hkv, gqa_mapping)  # [Hkv, G, d]
    s = jnp.einsum("kgd,nkd->kgn", qg, k, preferred_element_type=jnp.float32) * jnp.float32(scale)
    s = s.reshape(hq, n)
    cand = candidates(n, kv_len, n_sink=n_sink, n_local=n_local)
    x = jnp.where(cand[None, :], s, -jnp.inf)
    m = jnp.max(x, axis=1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(x - m)
    z = jnp.sum(e, axis=1, keepdims=True)
    return jnp.sum(e / jnp.where(z > 0, z, 1.0), axis=0)


def rank_votes(votes: jax.Array, cand: jax.Array, vote_pool: int = 1) -> jax.Array:
    """The array the top-k runs on: NaN/inf cleaned, optional max-pool, non-candidates at -inf."""
    lo, hi = jnp.finfo(jnp.float32).min, jnp.finfo(jnp.float32).max
    v = jnp.nan_to_num(votes.astype(jnp.float32), nan=lo, posinf=hi, neginf=lo)
    if vote_pool > 1:
        x = jnp.where(cand, v, -jnp.inf)
        left, right = (vote_pool - 1) // 2, vote_pool // 2
        v = lax.reduce_window(x, -jnp.inf, lax.max, (vote_pool,), (1,), ((left, right),))
    return jnp.where(cand, v, -jnp.inf)


def assemble(
    middle: jax.Array | None, kv_len: jax.Array | int, *, n_sink: int, n_local: int
) -> tuple[jax.Array, jax.Array]:
    """Sinks + ascending middle indices + locals, all valid."""
    parts = [jnp.arange(n_sink, dtype=jnp.int32)]
    if middle is not None:
        parts.append(middle.astype(jnp.int32))
    parts.append(jnp.asarray(kv_len, jnp.int32) - n_local + jnp.arange(n_local, dtype=jnp.int32))
    idx = jnp.concatenate(parts)
    return idx, jnp.ones(idx.shape, bool)


def budgeted(
    kv_len: jax.Array | int,
    budget: int,
    sparse_fn: Callable[[], tuple[jax.Array, jax.Array]],
    *,
    use_cond: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Dense answer when ``kv_len <= budget`` (static: in Python; traced: ``lax.cond``).

    ``use_cond=False`` computes both answers and selects: needed for kernels run by the TPU / GPU
    interpreters, whose callbacks are effects that ``vmap`` of ``cond`` cannot batch.
    """

    def dense() -> tuple[jax.Array, jax.Array]:
        idx = jnp.arange(budget, dtype=jnp.int32)
        return idx, idx < kv_len

    if isinstance(kv_len, int | np.integer):
        return dense() if kv_len <= budget else sparse_fn()
    if use_cond:
        return lax.cond(kv_len <= budget, dense, sparse_fn)
    is_dense = kv_len <= budget
    return jax.tree.map(lambda a, b: jnp.where(is_dense, a, b), dense(), sparse_fn())


def token_select_reference(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    vote_pool: int = 1,
    gqa_mapping: str = "group",
) -> tuple[jax.Array, jax.Array]:
    """TokenSelect in plain JAX: soft votes, ``lax.top_k`` (ties to the lower index), assembly.

    Args:
      q: ``[Hq, d]`` scoring query; k: ``[N, Hkv, d]`` key cache; kv_len: valid tokens (int scalar).
      top_k, n_sink, n_local: static budget parts, ``n_sink + top_k + n_local <= N``.
      scale: scoring scale (1.0: raw dot products, as the authors' code).
      vote_pool: max-pool window over neighbouring votes (1: off).
      gqa_mapping: "group" (``h // G``) or "modulo" (``h % Hkv``, the authors' kernel).

    Returns:
      ``(indices [B] int32 ascending, valid [B] bool)``.
    """
    _checks.check_qk(q, k)
    _checks.check_gqa_mapping(gqa_mapping)
    n = k.shape[0]
    kv_len = _checks.check_kv_len(kv_len, n)
    budget = _checks.check_budget(top_k=top_k, n_sink=n_sink, n_local=n_local, n=n)

    def sparse() -> tuple[jax.Array, jax.Array]:
        middle = None
        if top_k > 0:
            votes = soft_votes_reference(
                q, k, kv_len, n_sink=n_sink, n_local=n_local, scale=scale, gqa_mapping=gqa_mapping
            )
            cand = candidates(n, kv_len, n_sink=n_sink, n_local=n_local)
            _, mid = lax.top_k(rank_votes(votes, cand, vote_pool), top_k)
            middle = jnp.sort(mid)
        return assemble(middle, kv_len, n_sink=n_sink, n_local=n_local)

    return budgeted(kv_len, budget, sparse)
