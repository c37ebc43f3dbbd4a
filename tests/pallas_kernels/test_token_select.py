"""pallas_kernels.token_select against a NumPy reference, jaxsel.attention, and across backends."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.token_select import (
    BlockSizes,
    soft_votes_reference,
    token_select,
    token_select_reference,
)

BS = BlockSizes(block_kv=128, block_vote=256)


def numpy_select(q, k, kv_len, *, top_k, n_sink, n_local, scale=1.0, modulo=False):
    """Independent NumPy TokenSelect (float64 votes, stable descending sort)."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    _n, hkv, _ = k.shape
    hq = q.shape[0]
    budget = n_sink + top_k + n_local
    if kv_len <= budget:
        idx = np.arange(budget)
        return idx, idx < kv_len
    heads = np.arange(hq) % hkv if modulo else np.arange(hq) // (hq // hkv)
    s = np.einsum("hd,nhd->hn", q, k[:, heads]) * scale
    cand = np.arange(n_sink, kv_len - n_local)
    sc = s[:, cand]
    p = np.exp(sc - sc.max(1, keepdims=True))
    vote = (p / p.sum(1, keepdims=True)).sum(0)
    top = cand[np.sort(np.argsort(-vote, kind="stable")[:top_k])]
    idx = np.concatenate([np.arange(n_sink), top, np.arange(kv_len - n_local, kv_len)])
    return idx, np.ones(budget, bool)


def make_qk(seed, n, hq, hkv, d, dtype=jnp.float32, n_distinct=None):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((hq, d))
    if n_distinct is None:
        k = rng.standard_normal((n, hkv, d))
    else:  # every key is one of a few vectors: votes tie in large groups
        k = rng.standard_normal((n_distinct, hkv, d))[rng.integers(0, n_distinct, n)]
    return jnp.asarray(q, dtype), jnp.asarray(k, dtype)


def assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (8, 1)])
@pytest.mark.parametrize("kv_len", [300, 37])
def test_reference_matches_numpy(hq, hkv, kv_len):
    q, k = make_qk(0, 320, hq, hkv, 16)
    got = jax.jit(lambda q, k, n: token_select_reference(q, k, n, top_k=24, n_sink=4, n_local=8))(
        q, k, jnp.int32(kv_len)
    )
    assert_same(got, numpy_select(q, k, kv_len, top_k=24, n_sink=4, n_local=8))


def test_reference_modulo_and_ties():
    q, k = make_qk(1, 256, 8, 2, 8, n_distinct=5)
    got = token_select_reference(q, k, 250, top_k=30, n_sink=2, n_local=4, gqa_mapping="modulo")
    assert_same(got, numpy_select(q, k, 250, top_k=30, n_sink=2, n_local=4, modulo=True))


def test_matches_jaxsel_attention():
    attention = pytest.importorskip("jaxsel.attention")
    q, k = make_qk(2, 300, 8, 2, 16)
    kw = dict(top_k=20, n_sink=3, n_local=5)
    lens = jnp.array([290, 20], jnp.int32)
    for extra in ({}, {"vote_pool": 3, "gqa_mapping": "modulo"}):
        want = jax.jit(
            jax.vmap(lambda n, extra=extra: attention.select_tokens(q, k, n, **kw, **extra))
        )(lens)
        got = jax.jit(
            jax.vmap(
                lambda n, extra=extra: token_select(q, k, n, implementation="xla", **kw, **extra)
            )
        )(lens)
        assert_same(got, want)


def test_votes_are_distributions():
    q, k = make_qk(3, 200, 8, 2, 16)
    v = soft_votes_reference(q, k, 150, n_sink=4, n_local=8)
    assert float(v[:4].sum()) == 0.0 and float(v[142:].sum()) == 0.0
    np.testing.assert_allclose(float(v.sum()), 8.0, rtol=1e-5)


def test_kernel_f32_group4_ties_ragged(kernel_backend_tpu_first):
    """N=700 and kv_len=650 are not multiples of the 128-token tile; votes tie in large groups."""
    impl, interpret = kernel_backend_tpu_first
    kw = dict(top_k=40, n_sink=4, n_local=8)
    for seed, n_distinct in ((4, None), (5, 6)):
        q, k = make_qk(seed, 700, 8, 2, 16, n_distinct=n_distinct)
        got = token_select(
            q, k, jnp.int32(650), implementation=impl, interpret=interpret, block_sizes=BS, **kw
        )
        assert_same(got, token_select_reference(q, k, jnp.int32(650), **kw))
        assert_same(got, numpy_select(q, k, 650, **kw))


def test_kernel_bf16_group8_vmap(kernel_backend_tpu_first):
    """bf16 cache, 8 query heads per KV head, vmapped over sequences with sparse and dense kv_len."""
    impl, interpret = kernel_backend_tpu_first
    kw = dict(top_k=24, n_sink=2, n_local=6)
    q, k = make_qk(6, 400, 8, 1, 16, dtype=jnp.bfloat16)
    qs = jnp.stack([q, -q])
    ks = jnp.stack([k, k[::-1]])
    lens = jnp.array([390, 25], jnp.int32)
    fn = jax.jit(
        jax.vmap(
            lambda q, k, n: token_select(
                q, k, n, implementation=impl, interpret=interpret, block_sizes=BS, **kw
            )
        )
    )
    got = fn(qs, ks, lens)
    want = jax.vmap(lambda q, k, n: token_select_reference(q, k, n, **kw))(qs, ks, lens)
    assert_same(got, want)
    assert not bool(got[1][1, 25:].any()) and bool(got[1][0].all())


@pytest.mark.slow
def test_kernel_group1_modulo(pallas_interpret):
    """MHA (G = 1) with the "modulo" mapping, generic interpreter."""
    from conftest import interpret_for

    interpret = interpret_for("mosaic_tpu", True, pallas_interpret)
    q, k = make_qk(7, 260, 4, 4, 16)
    kw = dict(top_k=16, n_sink=1, n_local=3, gqa_mapping="modulo", scale=0.25)
    got = token_select(q, k, 259, implementation="mosaic_tpu", interpret=interpret,
                       block_sizes=BS, **kw)  # fmt: skip
    assert_same(got, token_select_reference(q, k, 259, **kw))


def test_bad_input():
    q, k = make_qk(8, 64, 6, 4, 8)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        token_select(q, k, 10, top_k=4, n_sink=1, n_local=1)
    q, k = make_qk(8, 64, 8, 4, 8)
    with pytest.raises(ValueError, match="budget"):
        token_select(q, k, 10, top_k=60, n_sink=4, n_local=4)
    with pytest.raises(ValueError, match="kv_len"):
        token_select(q, k, 10.0, top_k=4, n_sink=1, n_local=1)
    with pytest.raises(ValueError, match="block_kv"):
        BlockSizes(block_kv=100)
