"""Selection Cache, chunked prefill and the baseline selectors."""

from __future__ import annotations

import _attention_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.attention import (
    SelectionCacheState,
    cached_select,
    chunk_attention,
    dense_attention,
    dense_select,
    per_head_select,
    prefill_attention,
    prefill_select,
    query_cosine,
    raw_logit_select,
    rope_prefill_attention,
    rope_sparse_attention,
    select_tokens,
    sparse_attention,
    streaming_select,
)

N, HQ, HKV, D = 64, 8, 2, 16
BUDGET = dict(top_k=6, n_sink=2, n_local=4)
_select = jax.jit(lambda q, k, n_: select_tokens(q, k, n_, **BUDGET))


def sel(q, k, kv_len):
    """select_tokens with this module's budget, compiled once (kv_len traced)."""
    return _select(jnp.asarray(q), jnp.asarray(k), jnp.int32(kv_len))


def make(seed, n=N):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(HQ, D)).astype(np.float32),
        rng.normal(size=(n, HKV, D)).astype(np.float32),
        rng.normal(size=(n, HKV, D)).astype(np.float32),
    )


# ----------------------------------------------------------------------------- Selection Cache


def test_selection_cache_hit_and_miss_logic():
    q, k, _ = make(0)
    step = jax.jit(lambda s, q, n, t: cached_select(s, q, k, n, threshold=t, **BUDGET))
    state = SelectionCacheState.init(q, **BUDGET)
    # first call: miss (nothing stored), exactly select_tokens
    idx, valid, state, hit = step(state, q, jnp.int32(40), 0.9)
    want = sel(q, k, 40)
    assert not bool(hit)
    np.testing.assert_array_equal(idx, want[0])
    np.testing.assert_array_equal(valid, want[1])
    # nearly the same query two tokens later: hit; middle reused, window moved
    q2 = q + 0.01 * np.random.default_rng(1).normal(size=q.shape).astype(np.float32)
    assert float(query_cosine(q, q2)) > 0.99
    idx2, valid2, state2, hit2 = step(state, q2, jnp.int32(42), 0.9)
    assert bool(hit2) and bool(valid2.all())
    i2 = np.asarray(idx2)
    assert i2[:2].tolist() == [0, 1]
    assert i2[2:8].tolist() == np.asarray(idx)[2:8].tolist()
    assert i2[8:].tolist() == [38, 39, 40, 41]
    assert np.all(np.diff(i2) > 0)
    np.testing.assert_array_equal(state2.query, state.query)  # q at last *selection* kept
    assert int(state2.hits) == 1 and int(state2.steps) == 2
    # a different query: miss, and exactly select_tokens' answer
    q3 = make(9)[0]
    idx3, valid3, state3, hit3 = step(state2, q3, jnp.int32(43), 0.9)
    assert not bool(hit3)
    want3 = sel(q3, k, 43)
    np.testing.assert_array_equal(idx3, want3[0])
    np.testing.assert_array_equal(valid3, want3[1])
    np.testing.assert_allclose(state3.query, q3)
    # threshold above 1 never hits; a rewound kv_len never hits; dense kv_len never hits
    assert not bool(step(state, q, jnp.int32(42), 1.01)[3])
    assert not bool(step(state, q, jnp.int32(39), 0.9)[3])
    idx_d, _valid_d, state_d, hit_d = step(state, q, jnp.int32(10), 0.9)
    assert not bool(hit_d) and not bool(state_d.reusable)
    np.testing.assert_array_equal(idx_d, sel(q, k, 10)[0])
    # a dense state is never reused
    assert not bool(step(state_d, q, jnp.int32(41), 0.9)[3])
    assert float(state2.hit_rate) == 0.5


def test_selection_cache_scan_and_vmap():
    q, k, _ = make(2)
    rng = np.random.default_rng(2)
    qs = q + 0.05 * np.cumsum(rng.normal(size=(6, HQ, D)), axis=0).astype(np.float32)
    lens = jnp.arange(40, 46, dtype=jnp.int32)

    def run(threshold):
        def body(state, x):
            qt, n = x
            idx, _valid, state, hit = cached_select(state, qt, k, n, threshold=threshold, **BUDGET)
            return state, (idx, hit)

        _state, (idx, hits) = jax.lax.scan(body, SelectionCacheState.init(q, **BUDGET), (qs, lens))
        return idx, hits

    idx, hits = jax.jit(jax.vmap(run))(jnp.array([2.0, 0.0]))
    assert not np.asarray(hits[0]).any()  # threshold 2: every step is select_tokens
    for t in range(6):
        np.testing.assert_array_equal(idx[0, t], sel(qs[t], k, int(lens[t]))[0])
    assert np.asarray(hits[1])[1:].all() and not bool(hits[1, 0])


def test_selection_cache_bad_state():
    q, k, _ = make(3)
    state = SelectionCacheState.init(q, top_k=5, n_sink=2, n_local=4)
    with pytest.raises(ValueError, match="state does not match"):
        cached_select(state, q, k, 30, **BUDGET)


# ----------------------------------------------------------------------------- chunked prefill


def causal_reference(q_chunk, k_all, v_all, past_idx, start, c):
    """Each chunk query i sees past_idx plus the chunk tokens start..start+i."""
    out = []
    for i in range(c):
        out.append(
            ref.attention(
                q_chunk[i], k_all, v_all, list(past_idx) + list(range(start, start + i + 1))
            )
        )
    return np.stack(out)


def test_prefill_select_uses_chunk_mean_and_dense_equals_causal():
    _q, k, v = make(4)
    rng = np.random.default_rng(4)
    c, past = 5, 30
    qc = rng.normal(size=(c, HQ, D)).astype(np.float32)
    idx, valid = jax.jit(lambda qc, k, n: prefill_select(qc, k, n, **BUDGET))(qc, k, past)
    want = sel(qc.mean(0), k, past)
    np.testing.assert_array_equal(idx, want[0])
    # chunk_len: only the real rows count in the mean
    idx3, _ = jax.jit(lambda qc, k: prefill_select(qc, k, past, chunk_len=3, **BUDGET))(qc, k)
    np.testing.assert_array_equal(idx3, sel(qc[:3].mean(0), k, past)[0])
    # chunk written at past..past+c-1; selected past + causal chunk
    pa = jax.jit(prefill_attention)
    out = pa(qc, k[past : past + c], v[past : past + c], k, v, idx, valid)
    past_idx = np.asarray(idx)[np.asarray(valid)]
    np.testing.assert_allclose(
        np.asarray(out), causal_reference(qc, k, v, past_idx, past, c), atol=1e-5, rtol=1e-5
    )
    # budget covering the past: exactly dense causal attention
    big = dict(top_k=20, n_sink=4, n_local=8)
    idx_d, valid_d = jax.jit(lambda qc, k: prefill_select(qc, k, 25, **big))(qc, k)
    out_d = pa(qc, k[25:30], v[25:30], k, v, idx_d, valid_d)
    dense = jax.jit(jax.vmap(dense_attention, in_axes=(0, None, None, 0)))
    want_d = dense(qc, k, v, jnp.arange(26, 31, dtype=jnp.int32))
    np.testing.assert_allclose(np.asarray(out_d), np.asarray(want_d), atol=1e-5)


def test_chunk_attention_padding_rows_and_decode_equivalence():
    q, k, v = make(5)
    rng = np.random.default_rng(5)
    qc = rng.normal(size=(4, HQ, D)).astype(np.float32)
    idx, valid = sel(q, k, 50)
    ca = jax.jit(chunk_attention)
    full = ca(qc, k[50:54], v[50:54], k[idx], v[idx], valid)
    part = jax.jit(lambda *a: chunk_attention(*a, chunk_len=2))(
        qc, k[50:54], v[50:54], k[idx], v[idx], valid
    )
    np.testing.assert_allclose(np.asarray(part[:2]), np.asarray(full[:2]), atol=1e-6)
    # a one-token chunk is a decode step over selected + itself
    one = ca(qc[:1], k[50:51], v[50:51], k[idx], v[idx], valid)
    ext = np.concatenate([np.asarray(idx), [50]]).astype(np.int32)
    dec = jax.jit(sparse_attention)(qc[0], k, v, ext, np.ones(ext.shape, bool))
    np.testing.assert_allclose(np.asarray(one[0]), np.asarray(dec), atol=1e-5)


@pytest.mark.parametrize("block_kv", [3, 8, 512])
def test_chunk_attention_key_blocks_match_reference(block_kv):
    """The online-softmax key blocks (a last block shifted back over an earlier one) give the
    reference at any block size: masked past entries and padding keys; rows with no live key
    (no valid past, chunk_len 0) give 0, not NaN."""
    _q, k, v = make(7)
    rng = np.random.default_rng(7)
    c, b = 6, 13
    qc = rng.normal(size=(c, HQ, D)).astype(np.float32)
    past_idx = np.sort(rng.choice(40, b, replace=False)).astype(np.int32)
    valid = rng.random(b) < 0.7
    start = 50
    out = jax.jit(lambda *a: chunk_attention(*a, chunk_len=4, block_kv=block_kv))(
        qc, k[start : start + c], v[start : start + c], k[past_idx], v[past_idx], valid
    )
    want = causal_reference(qc, k, v, past_idx[valid], start, 4)
    np.testing.assert_allclose(np.asarray(out[:4]), want, atol=1e-5, rtol=1e-5)
    none_valid = jax.jit(lambda *a: chunk_attention(*a, chunk_len=2, block_kv=block_kv))(
        qc, k[start : start + c], v[start : start + c], k[past_idx], v[past_idx], valid & False
    )
    np.testing.assert_allclose(
        np.asarray(none_valid[:2]), causal_reference(qc, k, v, [], start, 2), atol=1e-5, rtol=1e-5
    )
    empty = jax.jit(lambda *a: chunk_attention(*a, chunk_len=0, block_kv=block_kv))(
        qc, k[start : start + c], v[start : start + c], k[past_idx], v[past_idx], valid & False
    )
    np.testing.assert_array_equal(np.asarray(empty), 0.0)


def test_rope_prefill_matches_rope_decode():
    q, k, v = make(6)
    idx, valid = sel(q, k, 50)
    # a decode step is a one-token chunk after kv_len - 1 past tokens whose selection excludes it
    ext = jnp.concatenate([idx, jnp.array([50], jnp.int32)])
    for mode in ("original", "compact"):
        one = jax.jit(
            lambda q, k, v, i, m, mode=mode: rope_prefill_attention(
                q[None], k[50:51], v[50:51], k, v, i, m, 50, position_mode=mode
            )
        )(q, k, v, idx, valid)
        dec = jax.jit(
            lambda q, k, v, i, mode=mode: rope_sparse_attention(
                q, k, v, i, jnp.ones(i.shape, bool), 51, position_mode=mode
            )
        )(q, k, v, ext)
        np.testing.assert_allclose(np.asarray(one[0]), np.asarray(dec), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- baselines


def test_streaming_select():
    q, k, _ = make(7)
    idx, valid = jax.jit(lambda q, k, n: streaming_select(q, k, n, **BUDGET))(q, k, jnp.int32(50))
    assert np.asarray(idx).tolist() == [0, 1, *range(40, 50)] and bool(valid.all())
    idx, valid = streaming_select(q, k, 9, **BUDGET)
    assert np.asarray(idx)[np.asarray(valid)].tolist() == list(range(9))


def test_raw_logit_select_matches_numpy():
    q, k, _ = make(8)
    idx, valid = jax.jit(lambda q, k, n: raw_logit_select(q, k, n, **BUDGET))(q, k, jnp.int32(55))
    s = ref.scores(q, k, 55)
    cand = list(range(2, 51))
    vote = s.sum(0)
    want = [0, 1, *ref.top_k_lowest_first(vote, cand, 6), 51, 52, 53, 54]
    ref.assert_same_selection(idx, valid, want, vote, cand)


def test_per_head_select_matches_numpy_and_attends():
    q, k, v = make(9)
    idx, valid = jax.jit(lambda q, k, n: per_head_select(q, k, n, **BUDGET))(q, k, jnp.int32(55))
    assert idx.shape == (HQ, 12)
    s = ref.scores(q, k, 55)
    cand = list(range(2, 51))
    rows = []
    for h in range(HQ):
        want = [0, 1, *ref.top_k_lowest_first(s[h], cand, 6), 51, 52, 53, 54]
        ref.assert_same_selection(idx[h], valid[h], want, s[h], cand)
        rows.append(np.asarray(idx[h]).tolist())
    out = sparse_attention(q, k, v, idx, valid)
    np.testing.assert_allclose(np.asarray(out), ref.attention(q, k, v, rows), atol=1e-5, rtol=1e-5)
    _idx_d, valid_d = per_head_select(q, k, 10, **BUDGET)
    assert np.asarray(valid_d).sum(1).tolist() == [10] * HQ


def test_dense_select():
    q, k, v = make(10)
    idx, valid = dense_select(q, k, jnp.int32(33))
    assert idx.shape == (N,)
    out = sparse_attention(q, k, v, idx, valid)
    np.testing.assert_allclose(
        np.asarray(out), np.asarray(dense_attention(q, k, v, 33)), atol=1e-5, rtol=1e-5
    )
