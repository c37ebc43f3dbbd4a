"""Selection baselines with TokenSelect's output format, for comparisons at equal budget.

Every selector here takes ``(q [Hq, d], k [N, Hkv, d], kv_len, *, top_k, n_sink, n_local, ...)`` and
returns ``(indices, valid)`` like :func:`jaxsel.attention.select_tokens` (``[B]`` shared by all
heads; ``[Hq, B]`` for :func:`per_head_select`), dense when ``kv_len <= B``.

- :func:`streaming_select`: StreamingLLM (Xiao et al., arXiv:2309.17453), attention sinks plus the
  most recent ``top_k + n_local`` tokens; ignores the query.
- :func:`raw_logit_select`: InfLLM-style (Xiao et al., arXiv:2402.04617) token-level ranking by the sum
  of raw logits over heads, ``vote[j] = sum_h s_h[j]``, with no per-head normalisation.
- :func:`per_head_select`: each query head keeps its own top_k middle tokens by its own score (what
  Quest-style per-head methods do, at token granularity).
- :func:`dense_select`: every valid token (the budget-covers-everything case), ``[N]`` entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsel.attention import _checks
from pallas_kernels._xla_math import budgeted, dense_selection, select_from_votes, token_scores


def _check(q, k, kv_len, top_k, n_sink, n_local, gqa_mapping):
    kv_len, budget = _checks.check_select(
        q, k, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, gqa_mapping=gqa_mapping
    )
    return budget, kv_len


def streaming_select(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    gqa_mapping: str = "group",
) -> tuple[jax.Array, jax.Array]:
    """StreamingLLM at TokenSelect's budget: sinks + the last ``top_k + n_local`` valid tokens.

    ``q`` and ``scale`` are unused (kept so every selector has one signature).
    """
    budget, kv_len = _check(q, k, kv_len, top_k, n_sink, n_local, gqa_mapping)
    window = top_k + n_local

    def sparse():
        idx = jnp.concatenate(
            [
                jnp.arange(n_sink, dtype=jnp.int32),
                jnp.asarray(kv_len, jnp.int32) - window + jnp.arange(window, dtype=jnp.int32),
            ]
        )
        return idx, jnp.ones(idx.shape, bool)

    return budgeted(kv_len, budget, sparse)


def raw_logit_select(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    gqa_mapping: str = "group",
) -> tuple[jax.Array, jax.Array]:
    """InfLLM-style ranking: top_k middle tokens by ``sum_h scale * q_h . k_{g(h)}[j]``."""
    budget, kv_len = _check(q, k, kv_len, top_k, n_sink, n_local, gqa_mapping)

    def sparse():
        votes = jnp.sum(token_scores(q, k, kv_len, scale=scale, gqa_mapping=gqa_mapping), axis=0)
        return select_from_votes(votes, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local)

    return budgeted(kv_len, budget, sparse)


def per_head_select(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    gqa_mapping: str = "group",
) -> tuple[jax.Array, jax.Array]:
    """Each query head its own top_k middle tokens by its own score.

    Returns:
      ``(indices [Hq, B], valid [Hq, B])``, each row in the shared format; feed them to
      :func:`jaxsel.attention.sparse_attention`, which accepts per-head index sets.
    """
    budget, kv_len = _check(q, k, kv_len, top_k, n_sink, n_local, gqa_mapping)
    hq = q.shape[0]

    def dense():
        idx, valid = dense_selection(budget, kv_len)
        return jnp.broadcast_to(idx, (hq, budget)), jnp.broadcast_to(valid, (hq, budget))

    def sparse():
        scores = token_scores(q, k, kv_len, scale=scale, gqa_mapping=gqa_mapping)
        return jax.vmap(
            lambda s: select_from_votes(s, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local)
        )(scores)

    return budgeted(kv_len, budget, sparse, dense_fn=dense)


def dense_select(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    top_k: int = 0,
    n_sink: int = 0,
    n_local: int = 0,
    scale: float = 1.0,
    gqa_mapping: str = "group",
) -> tuple[jax.Array, jax.Array]:
    """Every valid token: ``(arange(N), arange(N) < kv_len)``; the budget arguments are ignored."""
    _checks.check_qk(q, k)
    kv_len = _checks.check_kv_len(kv_len, k.shape[0])
    return dense_selection(k.shape[0], kv_len)
