"""Quest-style page selection (``jaxsel.attention.page_select``) against a float64 NumPy oracle."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.attention import page_bounds, page_scores, page_select

N, HQ, HKV, D = 96, 6, 2, 8
KW = dict(n_pages=3, page_size=8, n_sink=4, n_local=6)  # budget 34
_select = jax.jit(lambda q, k, n_: page_select(q, k, n_, **KW))


def oracle(q, k, kv_len, *, n_pages, page_size, n_sink, n_local):
    """Loops in float64: Quest bound per (head, page) from the keys themselves, soft vote over
    whole pages ending before the local window, top pages (ties to the lower page)."""
    budget = n_sink + n_pages * page_size + n_local
    if kv_len <= budget:
        return list(range(kv_len)), None, None
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    hq, hkv = q.shape[0], k.shape[1]
    pages = [
        p
        for p in range((k.shape[0] - n_sink) // page_size)
        if n_sink + (p + 1) * page_size <= kv_len - n_local
    ]
    vote = {p: 0.0 for p in pages}
    for h in range(hq):
        g = h // (hq // hkv)
        ub = {}
        for p in pages:
            keys = k[n_sink + p * page_size : n_sink + (p + 1) * page_size, g]
            lo, hi = keys.min(axis=0), keys.max(axis=0)
            ub[p] = sum(max(q[h, i] * lo[i], q[h, i] * hi[i]) for i in range(q.shape[1]))
        m = max(ub.values())
        z = sum(np.exp(u - m) for u in ub.values())
        for p in pages:
            vote[p] += np.exp(ub[p] - m) / z
    top = sorted(sorted(pages, key=lambda p: (-vote[p], p))[:n_pages])
    mid = [n_sink + p * page_size + i for p in top for i in range(page_size)]
    return list(range(n_sink)) + mid + list(range(kv_len - n_local, kv_len)), vote, pages


def make(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(HQ, D)).astype(np.float32), rng.normal(size=(N, HKV, D)).astype(
        np.float32
    )


@pytest.mark.parametrize("kv_len", [1, 20, 34, 35, 41, 60, 96])
def test_page_select_matches_oracle(kv_len):
    q, k = make(kv_len)
    idx, valid = _select(q, k, jnp.int32(kv_len))
    want, vote, _ = oracle(q, k, kv_len, **KW)
    idx, valid = np.asarray(idx), np.asarray(valid)
    assert idx.shape == (34,) and len(set(idx.tolist())) == 34
    assert idx[valid].tolist() == want or _near_tie(idx[valid].tolist(), want, vote)
    if kv_len > 34:
        assert valid.all()
    else:
        np.testing.assert_array_equal(idx, np.arange(34))
        np.testing.assert_array_equal(valid, np.arange(34) < kv_len)


def _near_tie(got, want, vote):
    # Pages swapped across the top-n boundary must have votes within f32 rounding (H * 1e-6).
    if vote is None:
        return False
    got_p = {(i - KW["n_sink"]) // KW["page_size"] for i in set(got) - set(want)}
    want_p = {(i - KW["n_sink"]) // KW["page_size"] for i in set(want) - set(got)}
    return all(abs(vote[a] - vote[b]) <= HQ * 1e-6 for a in got_p for b in want_p)


def test_page_bound_holds_for_every_key_and_is_attained_by_a_box_corner():
    q, k = make(7)
    kmin, kmax = page_bounds(jnp.asarray(k), n_sink=4, page_size=8)
    ub = np.asarray(page_scores(jnp.asarray(q), kmin, kmax))  # [HQ, 11]
    assert ub.shape == (HQ, (N - 4) // 8)
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    for h in range(HQ):
        g = h // (HQ // HKV)
        for p in range(ub.shape[1]):
            keys = k64[4 + 8 * p : 12 + 8 * p, g]
            best = (keys @ q64[h]).max()
            corner = np.where(q64[h] >= 0, keys.max(0), keys.min(0)) @ q64[h]
            # f32 sums of D=8 products of magnitude <= |q||k|: a few ulp of the absolute sum.
            err = 8 * D * np.finfo(np.float32).eps * (np.abs(q64[h]) @ np.abs(keys).max(0))
            assert ub[h, p] >= best - err
            assert abs(ub[h, p] - corner) <= err


def test_one_needle_page_is_found():
    # A page whose keys align with the query must be selected even when other pages are noise.
    rng = np.random.default_rng(3)
    k = rng.normal(size=(N, HKV, D)).astype(np.float32) * 0.1
    q = rng.normal(size=(HQ, D)).astype(np.float32)
    for g in range(HKV):
        k[4 + 8 * 5 : 4 + 8 * 6, g] = 3 * q[g * (HQ // HKV)] / np.linalg.norm(q[g * (HQ // HKV)])
    idx, _ = _select(q, k, jnp.int32(80))
    assert set(range(44, 52)) <= set(np.asarray(idx).tolist())


def test_page_select_errors():
    q, k = make(0)
    with pytest.raises(ValueError, match=r"n_pages \* page_size .* larger than the cache length"):
        page_select(q, k, 10, n_pages=20, page_size=8, n_sink=4, n_local=6)
    with pytest.raises(ValueError, match="n_pages must be"):
        page_select(q, k, 10, n_pages=-1, page_size=8, n_sink=4, n_local=6)
    with pytest.raises(ValueError, match="page_size must be"):
        page_select(q, k, 10, n_pages=2, page_size=0, n_sink=4, n_local=6)
    with pytest.raises(ValueError, match="n_local must be >= 1"):
        page_select(q, k, 10, n_pages=2, page_size=8, n_sink=4, n_local=0)
    with pytest.raises(ValueError, match=r"kmin\.shape"):
        page_scores(q, jnp.zeros((3, HKV, D)), jnp.zeros((4, HKV, D)))
