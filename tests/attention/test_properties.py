"""Property-based tests (hypothesis) of the selection invariants."""

from __future__ import annotations

import functools

import _attention_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsel.attention import (
    SelectionCacheState,
    cached_select,
    dense_attention,
    middle_candidates,
    select_tokens,
    soft_vote,
    sparse_attention,
    token_scores,
)

N, D = 32, 8
HEADS = [(4, 1), (4, 4)]
# (top_k, n_sink, n_local, vote_pool)
BUDGETS = [(0, 0, 4, 1), (5, 2, 3, 1), (8, 0, 0, 1), (12, 2, 4, 1), (5, 2, 3, 3), (12, 2, 4, 2)]


@functools.cache
def selector(top_k, n_sink, n_local, vote_pool):
    return jax.jit(
        lambda q, k, n_: select_tokens(
            q, k, n_, top_k=top_k, n_sink=n_sink, n_local=n_local, vote_pool=vote_pool
        )
    )


_attend = jax.jit(
    lambda q, k, v, i, m, n_: (sparse_attention(q, k, v, i, m), dense_attention(q, k, v, n_))
)
_votes = jax.jit(
    lambda q, k, n_, s, l: soft_vote(
        token_scores(q, k, n_), middle_candidates(k.shape[0], n_, n_sink=s, n_local=l)
    ),
    static_argnums=(3, 4),
)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    heads=st.sampled_from(HEADS),
    budget=st.sampled_from(BUDGETS),
    kv_len=st.integers(0, N),
    spread=st.sampled_from([0.1, 1.0, 10.0]),
)
def test_selection_invariants(seed, heads, budget, kv_len, spread):
    hq, hkv = heads
    top_k, n_sink, n_local, vote_pool = budget
    rng = np.random.default_rng(seed)
    q = (rng.normal(size=(hq, D)) * spread).astype(np.float32)
    k = rng.normal(size=(N, hkv, D)).astype(np.float32)
    v = rng.normal(size=(N, hkv, D)).astype(np.float32)
    idx, valid = selector(top_k, n_sink, n_local, vote_pool)(q, k, jnp.int32(kv_len))
    idx, valid = np.asarray(idx), np.asarray(valid)
    b = top_k + n_sink + n_local
    # shape, range, order, uniqueness, valid-first, count
    assert idx.shape == valid.shape == (b,)
    assert np.all((idx >= 0) & (idx < N))
    assert np.all(np.diff(idx) > 0)
    assert not np.any(valid[1:] & ~valid[:-1])
    assert valid.sum() == min(kv_len, b)
    sel = idx[valid]
    assert np.all(sel < kv_len)  # padding never selected
    if kv_len <= b:
        assert sel.tolist() == list(range(kv_len))
        out, dense = _attend(q, k, v, idx, valid, jnp.int32(kv_len))
        np.testing.assert_allclose(np.asarray(out), np.asarray(dense), atol=1e-5, rtol=1e-5)
        return
    assert set(range(n_sink)) <= set(sel.tolist())
    assert set(range(kv_len - n_local, kv_len)) <= set(sel.tolist())
    # top-k property: every chosen middle token's (pooled) vote >= every unchosen candidate's
    vote = np.asarray(_votes(q, k, jnp.int32(kv_len), n_sink, n_local), np.float64)
    cand = list(range(n_sink, kv_len - n_local))
    vote = ref.pool(vote, cand, vote_pool)
    mid = [j for j in sel if n_sink <= j < kv_len - n_local]
    assert len(mid) == top_k
    rest = [j for j in cand if j not in set(mid)]
    if rest and mid:
        assert min(vote[mid]) >= max(vote[rest]) - 1e-6
        # ties to the lower index: an unchosen token tied with a chosen one sits above it
        for j in rest:
            for i in mid:
                if vote[i] == vote[j]:
                    assert i < j


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    noise=st.sampled_from([0.0, 0.01, 0.3, 3.0]),
    threshold=st.sampled_from([0.5, 0.9, 0.99]),
    grow=st.integers(0, 4),
)
def test_cache_hit_iff_similar_and_miss_is_select_tokens(seed, noise, threshold, grow):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(4, D)).astype(np.float32)
    k = rng.normal(size=(N, 2, D)).astype(np.float32)
    q2 = (q + noise * rng.normal(size=q.shape)).astype(np.float32)
    bud = dict(top_k=5, n_sink=2, n_local=3)
    step = _cache_step(threshold)
    state = SelectionCacheState.init(q, **bud)
    _, _, state, _ = step(state, q, k, jnp.int32(24))
    idx, valid, _, hit = step(state, q2, k, jnp.int32(24 + grow))
    cos = float(np.dot(q.ravel(), q2.ravel()) / np.linalg.norm(q) / np.linalg.norm(q2))
    if abs(cos - threshold) > 1e-5:
        assert bool(hit) == (cos > threshold)
    if not bool(hit):
        want = _select_523(q2, k, jnp.int32(24 + grow))
        np.testing.assert_array_equal(idx, want[0])
        np.testing.assert_array_equal(valid, want[1])
    else:
        i = np.asarray(idx)
        assert np.all(np.diff(i) > 0) and i[-3:].tolist() == list(range(21 + grow, 24 + grow))


_select_523 = jax.jit(lambda q, k, n_: select_tokens(q, k, n_, top_k=5, n_sink=2, n_local=3))


@functools.cache
def _cache_step(threshold):
    return jax.jit(
        lambda s, q, k, n_: cached_select(
            s, q, k, n_, threshold=threshold, top_k=5, n_sink=2, n_local=3
        )
    )
