"""sparse_attention / dense_attention against NumPy and torch, adaptive temperature."""

from __future__ import annotations

import _attention_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.attention import (
    adaptive_inverse_temperature,
    adaptive_temperature_attention,
    adaptive_temperature_softmax,
    dense_attention,
    sparse_attention,
)

N, HQ, HKV, D = 48, 8, 2, 16


def make(seed, n=N, hq=HQ, hkv=HKV, d=D):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(hq, d)).astype(np.float32),
        rng.normal(size=(n, hkv, d)).astype(np.float32),
        rng.normal(size=(n, hkv, d)).astype(np.float32),
    )


@pytest.mark.parametrize("mapping", ["group", "modulo"])
def test_sparse_attention_matches_numpy_and_ignores_invalid(mapping):
    q, k, v = make(0)
    idx = np.array([0, 3, 7, 8, 20, 41, 2, 5], np.int32)
    valid = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
    f = jax.jit(lambda *a: sparse_attention(*a, scale=0.3, gqa_mapping=mapping))
    got = np.asarray(f(q, k, v, idx, valid))
    want = ref.attention(q, k, v, idx[valid].tolist(), scale=0.3, mapping=mapping)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # what invalid entries point at does not matter
    k2, v2 = k.copy(), v.copy()
    k2[[2, 5]] = 1e4
    v2[[2, 5]] = np.nan
    np.testing.assert_allclose(np.asarray(f(q, k2, v2, idx, valid)), got, atol=1e-6)
    # no valid entry: zeros
    assert np.all(np.asarray(f(q, k, v, idx, np.zeros(8, bool))) == 0)


def test_per_head_indices():
    q, k, v = make(1)
    rng = np.random.default_rng(1)
    idx = np.stack([np.sort(rng.choice(N, 6, replace=False)) for _ in range(HQ)]).astype(np.int32)
    valid = rng.random((HQ, 6)) < 0.8
    valid[:, 0] = True
    got = np.asarray(jax.jit(sparse_attention)(q, k, v, idx, valid))
    want = ref.attention(q, k, v, [idx[h][valid[h]].tolist() for h in range(HQ)])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_dense_attention_matches_numpy_jit_vmap():
    qs, ks, vs = zip(*[make(s) for s in range(3)])
    lens = jnp.array([48, 1, 30], jnp.int32)
    got = jax.jit(jax.vmap(dense_attention))(np.stack(qs), np.stack(ks), np.stack(vs), lens)
    for b in range(3):
        want = ref.attention(qs[b], ks[b], vs[b], list(range(int(lens[b]))))
        np.testing.assert_allclose(np.asarray(got[b]), want, atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(dense_attention(qs[0], ks[0], vs[0], 0)) == 0)


def test_dense_attention_matches_torch_sdpa(torch):
    q, k, v = make(4)
    kv_len = 37
    qt = torch.tensor(q)[:, None, :]  # [Hq, 1, d]
    g = HQ // HKV
    kt = torch.tensor(k[:kv_len]).permute(1, 0, 2).repeat_interleave(g, dim=0)
    vt = torch.tensor(v[:kv_len]).permute(1, 0, 2).repeat_interleave(g, dim=0)
    want = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)[:, 0].numpy()
    got = np.asarray(dense_attention(q, k, v, kv_len))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_adaptive_temperature_softmax_matches_numpy():
    rng = np.random.default_rng(5)
    # low entropy (beta = 1), high entropy (beta > 1), and in between
    rows = [
        np.array([10.0, 0.0, 0.0, 0.0]),
        rng.normal(size=64) * 0.1,
        rng.normal(size=64) * 2.0,
        rng.normal(size=300),
    ]
    for x in rows:
        got = np.asarray(jax.jit(adaptive_temperature_softmax)(x.astype(np.float32)))
        np.testing.assert_allclose(got, ref.adaptive_softmax(x), atol=1e-6, rtol=1e-4)
    # axis and masking: masked entries get 0 and do not count
    x = rng.normal(size=(3, 10)).astype(np.float32)
    mask = rng.random((3, 10)) < 0.7
    mask[:, 0] = True
    got = np.asarray(adaptive_temperature_softmax(x.T, axis=0, where=mask.T)).T
    for r in range(3):
        want = np.zeros(10)
        want[mask[r]] = ref.adaptive_softmax(x[r][mask[r]])
        np.testing.assert_allclose(got[r], want, atol=1e-6, rtol=1e-4)


def test_adaptive_temperature_extremes_and_beta():
    assert float(adaptive_inverse_temperature(0.3)) == 1.0
    h = 3.0
    poly = -0.037 * h**4 + 0.481 * h**3 - 2.3 * h**2 + 4.917 * h - 1.791
    np.testing.assert_allclose(float(adaptive_inverse_temperature(h)), max(1.0, poly), rtol=1e-6)
    for dtype in (jnp.bfloat16, jnp.float16):
        x = jnp.array([6e4, -6e4, 0.0, -jnp.inf], dtype)
        p = np.asarray(adaptive_temperature_softmax(x))
        assert np.all(np.isfinite(p)) and np.isclose(p.sum(), 1.0) and p[3] == 0
    assert np.all(np.asarray(adaptive_temperature_softmax(jnp.full(4, -jnp.inf))) == 0)


def test_adaptive_temperature_attention():
    q, k, v = make(6)
    q = q * 0.05  # flat logits -> high entropy -> sharpening active
    got = np.asarray(jax.jit(adaptive_temperature_attention)(q, k, v, 40))
    want = ref.attention(q, k, v, list(range(40)), softmax=ref.adaptive_softmax)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    idx = np.arange(40, dtype=np.int32)
    sp = sparse_attention(q, k, v, idx, idx < 40, adaptive_temperature=True)
    np.testing.assert_allclose(np.asarray(sp), want, atol=1e-5, rtol=1e-4)
    assert not np.allclose(got, np.asarray(dense_attention(q, k, v, 40)), atol=1e-4)


def test_pallas_implementation_agrees_with_xla():
    """``implementation="pallas"`` dispatches to pallas_kernels (XLA fallback on CPU)."""
    import warnings

    from jaxsel.attention import select_tokens

    pytest.importorskip("pallas_kernels")
    q, k, v = make(7)
    kw = dict(top_k=8, n_sink=2, n_local=4)
    want = jax.jit(lambda q, k: select_tokens(q, k, 44, **kw))(q, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = jax.jit(lambda q, k: select_tokens(q, k, 44, implementation="pallas", **kw))(q, k)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        out = jax.jit(lambda *a: sparse_attention(*a, implementation="pallas"))(q, k, v, *want)
    np.testing.assert_allclose(
        np.asarray(out), np.asarray(sparse_attention(q, k, v, *want)), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="shared"):
        sparse_attention(q, k, v, *want, adaptive_temperature=True, implementation="pallas")
