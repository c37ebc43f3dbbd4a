"""Page-level KV selection with Quest's min/max key bounds, a block-granular peer of TokenSelect.

Quest (Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference",
arXiv:2406.10774) keeps, for every page of ``S`` consecutive cached tokens and every KV head, the
element-wise minimum and maximum of the page's keys, and bounds the largest dot product any key of
the page can have with the query:

    ub_h(p) = sum_i max(q_h[i] * kmin_p[i], q_h[i] * kmax_p[i])
            = q_h . (kmin_p + kmax_p) / 2  +  |q_h| . (kmax_p - kmin_p) / 2,

then attends to the pages with the largest bounds. Quest picks pages per head; here one page set is
shared by all heads of a layer, ranked by the same per-head soft vote as TokenSelect,
``vote(p) = sum_h softmax_p(ub_h(p))`` over candidate pages, so that the comparison with
:func:`jaxsel.attention.select_tokens` isolates the granularity (pages of ``S`` tokens ranked by a
bound, against single tokens ranked by their exact score) at the same budget and output format.

Pages tile the middle of the cache from ``n_sink`` on: page ``p`` holds tokens
``n_sink + p S .. n_sink + (p + 1) S - 1`` and is a candidate when it ends before the local window,
``n_sink + (p + 1) S <= kv_len - n_local``. Kept tokens are the sinks, the ``n_pages`` pages with the
largest votes (ties to the lower page) and the ``n_local`` last tokens: ``B = n_sink + n_pages S +
n_local`` indices, sorted and unique; dense (``indices = 0..B-1``) when ``kv_len <= B``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsel.attention import _checks
from pallas_kernels._xla_math import budgeted, head_scores, soft_vote


def page_bounds(k: jax.Array, *, n_sink: int, page_size: int) -> tuple[jax.Array, jax.Array]:
    """Element-wise key minimum and maximum of every whole page after the sinks.

    Args:
      k: ``[N, Hkv, d]`` key cache.
      n_sink, page_size: pages start at ``n_sink`` and hold ``page_size`` tokens; the
        ``(N - n_sink) mod page_size`` last slots belong to no page.

    Returns:
      ``(kmin, kmax)``, each ``[(N - n_sink) // page_size, Hkv, d]`` in ``k.dtype``.
    """
    _checks.check_rank(k, 3, "k", "[N, Hkv, d]")
    n, hkv, d = k.shape
    n_pages = (n - n_sink) // page_size
    pages = k[n_sink : n_sink + n_pages * page_size].reshape(n_pages, page_size, hkv, d)
    return jnp.min(pages, axis=1), jnp.max(pages, axis=1)


def page_scores(
    q: jax.Array, kmin: jax.Array, kmax: jax.Array, *, gqa_mapping: str = "group"
) -> jax.Array:
    """Quest's upper bound ``ub[h, p] = max_{k in page p} q_h . k`` over the page's key box.

    ``q [Hq, d]``; ``kmin, kmax [P, Hkv, d]`` from :func:`page_bounds`. Returns ``[Hq, P]`` float32,
    computed as ``q . c + |q| . r`` with the box centre ``c`` and half-width ``r``.
    """
    _checks.check_qk(q, kmin)
    if kmax.shape != kmin.shape:
        raise ValueError(f"kmin.shape={kmin.shape} and kmax.shape={kmax.shape} differ")
    centre = (kmin.astype(jnp.float32) + kmax.astype(jnp.float32)) * 0.5
    radius = (kmax.astype(jnp.float32) - kmin.astype(jnp.float32)) * 0.5
    qf = q.astype(jnp.float32)
    return head_scores(qf, centre, gqa_mapping) + head_scores(jnp.abs(qf), radius, gqa_mapping)


def page_select(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    n_pages: int,
    page_size: int,
    n_sink: int,
    n_local: int,
    gqa_mapping: str = "group",
) -> tuple[jax.Array, jax.Array]:
    """Sinks + the ``n_pages`` pages of largest soft-voted Quest bound + the local window.

    Args:
      q: ``[Hq, d]`` scoring query (the mean query of a prefill chunk, or the decode query; with
        unrotated cached keys use :func:`jaxsel.attention.scoring_query`).
      k: ``[N, Hkv, d]`` key cache of static length N.
      kv_len: integer scalar (may be traced), number of valid tokens.
      n_pages, page_size: the middle budget is ``n_pages * page_size`` tokens in whole pages.
      n_sink, n_local: first and last tokens always kept; ``n_local >= 1``.
      gqa_mapping: ``"group"`` (standard) or ``"modulo"``.

    Returns:
      ``(indices, valid)``, each ``[n_sink + n_pages * page_size + n_local]``, in the format of
      :func:`jaxsel.attention.select_tokens`.
    """
    _checks.check_qk(q, k)
    n = k.shape[0]
    kv_len = _checks.check_kv_len(kv_len, n)
    _checks.check_positive_int(page_size, "page_size")
    _checks.check_gqa_mapping(gqa_mapping)
    if not isinstance(n_pages, int | np.integer) or isinstance(n_pages, bool) or n_pages < 0:
        raise ValueError(f"n_pages must be a Python int >= 0, got {n_pages!r}")
    middle = int(n_pages) * int(page_size)
    if n_sink + middle + n_local > n:
        raise ValueError(
            f"budget n_sink + n_pages * page_size + n_local = {n_sink} + {n_pages} * {page_size} + "
            f"{n_local} is larger than the cache length N={n} (k.shape[0])"
        )
    budget = _checks.check_budget(top_k=middle, n_sink=n_sink, n_local=n_local, n=n)
    if n_local < 1:
        raise ValueError(f"n_local must be >= 1 (the current token is local), got {n_local=}")

    def sparse():
        parts = [jnp.arange(n_sink, dtype=jnp.int32)]
        if n_pages > 0:
            kmin, kmax = page_bounds(k, n_sink=n_sink, page_size=page_size)
            scores = page_scores(q, kmin, kmax, gqa_mapping=gqa_mapping)
            p = jnp.arange(kmin.shape[0])
            cand = n_sink + (p + 1) * page_size <= kv_len - n_local
            votes = soft_vote(scores, cand)
            lo = jnp.finfo(jnp.float32).min
            votes = jnp.nan_to_num(votes, nan=lo, posinf=jnp.finfo(jnp.float32).max, neginf=lo)
            # kv_len > budget leaves at least n_pages whole candidate pages, so every pick is one.
            _, top = lax.top_k(jnp.where(cand, votes, -jnp.inf), n_pages)
            first = n_sink + jnp.sort(top.astype(jnp.int32)) * page_size
            parts.append((first[:, None] + jnp.arange(page_size, dtype=jnp.int32)).reshape(-1))
        kv = jnp.asarray(kv_len, jnp.int32)
        parts.append(kv - n_local + jnp.arange(n_local, dtype=jnp.int32))
        idx = jnp.concatenate(parts)
        return idx, jnp.ones(idx.shape, bool)

    return budgeted(kv_len, budget, sparse)
