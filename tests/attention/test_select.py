"""select_tokens, token_scores, soft_vote against the float64 NumPy reference."""

from __future__ import annotations

import _attention_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.attention import (
    dense_attention,
    middle_candidates,
    select_tokens,
    soft_vote,
    sparse_attention,
    token_scores,
)


def make(seed, n, hq, hkv, d, dtype=np.float32, spread=1.0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(hq, d)).astype(dtype) * spread
    k = rng.normal(size=(n, hkv, d)).astype(dtype)
    v = rng.normal(size=(n, hkv, d)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("mapping", ["group", "modulo"])
def test_token_scores_matches_numpy_and_masks_padding(mapping):
    q, k, _ = make(0, 24, 8, 2, 16)
    got = jax.jit(lambda q, k, n: token_scores(q, k, n, scale=0.5, gqa_mapping=mapping))(q, k, 17)
    want = ref.scores(q, k, 17, 0.5, mapping)
    np.testing.assert_allclose(np.asarray(got)[:, :17], want[:, :17], rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(np.asarray(got)[:, 17:]))


def test_gqa_mappings_differ_and_mha_is_both():
    q, k, _ = make(1, 16, 8, 2, 8)
    g = np.asarray(token_scores(q, k, 16, gqa_mapping="group"))
    m = np.asarray(token_scores(q, k, 16, gqa_mapping="modulo"))
    # group: heads 0..3 read kv head 0; modulo: heads 0,2,4,6 read kv head 0.
    np.testing.assert_allclose(g[1], q[1] @ k[:, 0].T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m[1], q[1] @ k[:, 1].T, rtol=1e-5, atol=1e-5)
    q1, k1, _ = make(2, 16, 4, 4, 8)
    np.testing.assert_allclose(
        np.asarray(token_scores(q1, k1, 16, gqa_mapping="group")),
        np.asarray(token_scores(q1, k1, 16, gqa_mapping="modulo")),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("mask_rank", [1, 2])
def test_soft_vote_matches_numpy(mask_rank):
    rng = np.random.default_rng(3)
    s = rng.normal(size=(4, 20)).astype(np.float32) * 5
    mask1 = rng.random(20) < 0.6
    mask = mask1 if mask_rank == 1 else np.broadcast_to(mask1, (4, 20))
    got = np.asarray(jax.jit(soft_vote)(s, mask))
    want = np.zeros(20)
    idx = np.flatnonzero(mask1).tolist()
    for h in range(4):
        for j, p in ref.softmax_over(s[h], idx).items():
            want[j] += p
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[~mask1] == 0)
    np.testing.assert_allclose(got.sum(), 4.0, rtol=1e-5)
    assert np.all(np.asarray(soft_vote(s, np.zeros(20, bool))) == 0)


def test_soft_vote_large_logits_stay_finite():
    s = jnp.array([[1e30, -1e30, 3e38], [-jnp.inf, 0.0, 1.0]], jnp.float32)
    got = np.asarray(soft_vote(s, jnp.ones(3, bool)))
    assert np.all(np.isfinite(got)) and np.isclose(got.sum(), 2.0)


CASES = [
    # n, hq, hkv, d, kv_len, top_k, n_sink, n_local
    (64, 8, 2, 16, 64, 8, 4, 4),
    (64, 8, 2, 16, 50, 8, 4, 4),
    (64, 8, 8, 16, 33, 5, 0, 3),
    (96, 4, 1, 8, 90, 16, 2, 0),
    (96, 6, 3, 8, 70, 1, 1, 1),
    (64, 8, 2, 16, 16, 8, 4, 4),  # dense: kv_len == budget
    (64, 8, 2, 16, 7, 8, 4, 4),  # dense, padding inside the budget
    (64, 8, 4, 16, 0, 8, 4, 4),  # empty cache
    (48, 4, 2, 8, 48, 0, 4, 4),  # no middle selection
]


@pytest.mark.parametrize(
    ("case", "mapping"),
    [(c, "group") for c in CASES] + [(CASES[i], "modulo") for i in (0, 3, 5)],
)
def test_select_tokens_matches_numpy(case, mapping):
    n, hq, hkv, d, kv_len, top_k, n_sink, n_local = case
    q, k, _v = make(sum(case), n, hq, hkv, d)
    f = jax.jit(
        lambda q, k, n_: select_tokens(
            q, k, n_, top_k=top_k, n_sink=n_sink, n_local=n_local, gqa_mapping=mapping
        )
    )
    idx, valid = f(q, k, jnp.int32(kv_len))
    budget = top_k + n_sink + n_local
    assert idx.shape == valid.shape == (budget,)
    assert idx.dtype == jnp.int32
    want, vote, cand = ref.select(q, k, kv_len, top_k, n_sink, n_local, mapping=mapping)
    ref.assert_same_selection(idx, valid, want, vote, cand)
    idx, valid = np.asarray(idx), np.asarray(valid)
    assert np.all((idx >= 0) & (idx < n)) and np.all(np.diff(idx) > 0)
    assert np.all(idx[valid] < kv_len)  # padding never selected
    # valid entries first
    assert not np.any(valid[1:] & ~valid[:-1])
    if kv_len > budget:
        assert set(range(n_sink)) <= set(idx[valid].tolist())
        assert set(range(kv_len - n_local, kv_len)) <= set(idx[valid].tolist())
    else:
        assert idx[valid].tolist() == list(range(kv_len))
    if case not in (CASES[0], CASES[6]) or mapping != "group":
        return
    # a static kv_len (decided in Python, no lax.cond) gives the same answer as a traced one
    idx2, valid2 = jax.jit(
        lambda q, k: select_tokens(
            q, k, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, gqa_mapping=mapping
        )
    )(q, k)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(valid, valid2)


_dense_pair = jax.jit(
    lambda q, k, v, n_: (
        sparse_attention(q, k, v, *select_tokens(q, k, n_, top_k=20, n_sink=4, n_local=8)),
        dense_attention(q, k, v, n_),
    )
)


@pytest.mark.parametrize("kv_len", [1, 20, 32])
def test_dense_when_budget_covers_everything(kv_len):
    q, k, v = make(kv_len, 40, 8, 2, 16)
    got, want = _dense_pair(q, k, v, jnp.int32(kv_len))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(want), ref.attention(q, k, v, list(range(kv_len))), atol=1e-5, rtol=1e-5
    )


def test_ties_go_to_lower_index():
    n, hq, hkv, d = 40, 4, 2, 8
    q = np.ones((hq, d), np.float32)
    k = np.ones((n, hkv, d), np.float32)  # every vote equal
    sel = jax.jit(
        lambda q, k, t: select_tokens(q, k, 36, top_k=t, n_sink=2, n_local=3), static_argnums=2
    )
    idx, _valid = sel(q, k, 5)
    assert np.asarray(idx).tolist() == [0, 1, 2, 3, 4, 5, 6, 33, 34, 35]
    # a planted pair of equal winners: both taken, then the lowest-index filler
    k[20] *= 2.0
    k[11] *= 2.0
    idx, _ = sel(q, k, 3)
    assert np.asarray(idx).tolist() == [0, 1, 2, 11, 20, 33, 34, 35]


def test_padding_never_selected_even_if_it_would_win():
    q, k, _ = make(5, 64, 4, 2, 8)
    k[40:] = 100.0 * np.sign(q[0])  # huge scores in the padding region
    idx, valid = select_tokens(q, k, jnp.int32(40), top_k=8, n_sink=2, n_local=2)
    assert np.all(np.asarray(idx)[np.asarray(valid)] < 40)


def test_vmap_over_sequences_with_different_kv_len():
    n, hq, hkv, d = 64, 8, 2, 16
    qs, ks, vs = zip(*[make(s, n, hq, hkv, d) for s in range(4)])
    q, k, v = np.stack(qs), np.stack(ks), np.stack(vs)
    lens = jnp.array([64, 10, 33, 21], jnp.int32)
    sel = jax.jit(jax.vmap(lambda q, k, n_: select_tokens(q, k, n_, top_k=6, n_sink=2, n_local=4)))
    idx, valid = sel(q, k, lens)
    att = jax.jit(jax.vmap(sparse_attention))(q, k, v, idx, valid)
    for b in range(4):
        want, vote, cand = ref.select(q[b], k[b], int(lens[b]), 6, 2, 4)
        ref.assert_same_selection(idx[b], valid[b], want, vote, cand)
        ii = np.asarray(idx[b])[np.asarray(valid[b])].tolist()
        np.testing.assert_allclose(
            np.asarray(att[b]), ref.attention(q[b], k[b], v[b], ii), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("vote_pool", [2, 3, 5])
def test_vote_pool_matches_numpy(vote_pool):
    q, k, _ = make(7 + vote_pool, 80, 4, 2, 8)
    idx, valid = jax.jit(
        lambda q, k: select_tokens(q, k, 75, top_k=10, n_sink=3, n_local=5, vote_pool=vote_pool)
    )(q, k)
    want, vote, cand = ref.select(q, k, 75, 10, 3, 5, vote_pool=vote_pool)
    ref.assert_same_selection(idx, valid, want, vote, cand)


def test_bf16_inputs():
    q, k, v = make(11, 128, 8, 2, 32)
    qb, kb, vb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    idx, valid = jax.jit(lambda q, k: select_tokens(q, k, 120, top_k=16, n_sink=4, n_local=8))(
        qb, kb
    )
    # reference on the bf16-rounded values
    q32, k32, v32 = (np.asarray(x.astype(jnp.float32)) for x in (qb, kb, vb))
    want, vote, cand = ref.select(q32, k32, 120, 16, 4, 8)
    ref.assert_same_selection(idx, valid, want, vote, cand, rtol=1e-2)
    out = sparse_attention(qb, kb, vb, idx, valid)
    assert out.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(out, np.float32)))
    ii = np.asarray(idx)[np.asarray(valid)].tolist()
    np.testing.assert_allclose(
        np.asarray(out, np.float32), ref.attention(q32, k32, v32, ii), atol=3e-2, rtol=3e-2
    )
    # large bf16 logits stay finite
    big = jnp.asarray(q * 300, jnp.bfloat16)
    out = sparse_attention(big, kb * 50, vb, idx, valid)
    assert np.all(np.isfinite(np.asarray(out, np.float32)))


def test_middle_candidates():
    got = np.asarray(middle_candidates(10, jnp.int32(8), n_sink=2, n_local=3))
    assert np.flatnonzero(got).tolist() == [2, 3, 4]


@pytest.mark.parametrize("mapping", ["group", "modulo"])
def test_scores_and_selection_under_jit_vmap_of_a_batch_of_one(mapping):
    # Regression: a multiply-reduce formulation of the scores came out wrong (errors ~40) under
    # jit(vmap) over a batch of ONE on XLA:CPU, the batch a single-prompt decode runs.
    from jaxsel.attention._common import head_scores

    q, k, _ = make(12, 300, 9, 3, 64)
    want = ref.scores(q, k, 300, 1.0, mapping)
    f = lambda q, k: head_scores(q, k, mapping)
    got = jax.jit(jax.vmap(f))(jnp.asarray(q)[None], jnp.asarray(k)[None])[0]
    # An f32 dot of length d = 64 (inputs exact in f32) is within d u sum_d |q_d k_d| of the exact
    # value (Higham's bound for recursive or blocked summation).
    bound = 64 * 2.0**-24 * ref.scores(np.abs(q), np.abs(k), 300, 1.0, mapping)
    assert np.all(np.abs(np.asarray(got) - want) <= bound)
    kw = dict(top_k=200, n_sink=4, n_local=40)
    sel = lambda q, k, n: select_tokens(q, k, n, gqa_mapping=mapping, **kw)
    one = jax.jit(sel)(jnp.asarray(q), jnp.asarray(k), jnp.int32(290))
    batched = jax.jit(jax.vmap(sel))(jnp.asarray(q)[None], jnp.asarray(k)[None], jnp.int32([290]))
    np.testing.assert_array_equal(np.asarray(batched[0][0]), np.asarray(one[0]))
