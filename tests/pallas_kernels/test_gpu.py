"""Checks on a real GPU (``pytest -m gpu``; skipped elsewhere): the paper's shapes, device results
against NumPy, and the dispatch rules there. Run by ``scripts/device_check.sh``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels import _dispatch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("implementation", ["xla", "xla_radix"])
def test_topk_1m_matches_numpy(implementation):
    rng = np.random.default_rng(0)
    x = rng.random((2, 1 << 20), dtype=np.float32)
    x[1] = np.round(x[1] * 1000)  # heavy ties
    v, i = jax.jit(lambda a: pk.topk(a, 2048, implementation=implementation))(jnp.asarray(x))
    want = np.argsort(-x, axis=-1, kind="stable")[:, :2048]
    np.testing.assert_array_equal(np.asarray(i), want)
    np.testing.assert_array_equal(np.asarray(v), np.take_along_axis(x, want, -1))


@pytest.mark.parametrize("implementation", ["xla", "mosaic_gpu"])
def test_token_select_paper_shapes_selects_top_votes(implementation):
    n, hq, hkv, d = 1 << 16, 32, 8, 128
    kw = dict(top_k=2048, n_sink=128, n_local=512, implementation=implementation)
    key = jax.random.key(0)
    q = jax.random.normal(key, (hq, d), jnp.bfloat16)
    k = jax.random.normal(jax.random.fold_in(key, 1), (n, hkv, d), jnp.bfloat16)
    kv_len = n - 1000
    idx, ok = jax.jit(lambda q, k, n_: pk.token_select(q, k, n_, **kw))(q, k, jnp.int32(kv_len))
    idx, ok = np.asarray(idx), np.asarray(ok)
    assert ok.all() and (np.diff(idx) > 0).all()
    # Votes in float64 on the host: every selected middle token outvotes every dropped one, up to
    # the f32 rounding of the device's scores (relative 1e-3 at the selection boundary).
    qf = np.asarray(q.astype(jnp.float32), np.float64)
    kf = np.asarray(k.astype(jnp.float32), np.float64)
    s = np.einsum("kgd,nkd->kgn", qf.reshape(hkv, hq // hkv, d), kf).reshape(hq, n)
    cand = np.arange(128, kv_len - 512)
    sc = s[:, cand]
    p = np.exp(sc - sc.max(1, keepdims=True))
    vote = (p / p.sum(1, keepdims=True)).sum(0)
    chosen = np.isin(cand, idx)
    assert chosen.sum() == 2048
    assert vote[chosen].min() >= vote[~chosen].max() * (1 - 1e-3)
    np.testing.assert_array_equal(idx[:128], np.arange(128))
    np.testing.assert_array_equal(idx[-512:], np.arange(kv_len - 512, kv_len))


@pytest.mark.parametrize(
    "implementation,dtype,tol",
    # f32 on XLA may multiply as tf32 on a GPU (relative ~3e-4); bf16 operands ~1e-3..1e-2.
    [("xla", np.float32, 2e-3), ("xla", jnp.bfloat16, 1e-2), ("mosaic_gpu", jnp.bfloat16, 1e-2)],
)
def test_sparse_decode_matches_numpy(implementation, dtype, tol):
    rng = np.random.default_rng(1)
    n, hq, hkv, d, b = 1 << 15, 32, 8, 128, 2688
    q, k, v = (
        jnp.asarray(rng.standard_normal(shape), dtype)
        for shape in ((hq, d), (n, hkv, d), (n, hkv, d))
    )
    idx = np.sort(rng.choice(n, b, replace=False)).astype(np.int32)
    ok = np.arange(b) < b - 7
    got = pk.sparse_decode_attention(
        q, k, v, jnp.asarray(idx), jnp.asarray(ok), implementation=implementation
    )
    got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
    assert np.isfinite(got).all()
    qf, kf, vf = (np.asarray(jnp.asarray(a, jnp.float32), np.float64) for a in (q, k, v))
    g = hq // hkv
    want = np.zeros((hq, d))
    sel = idx[ok]
    for h in range(hq):
        s = kf[sel, h // g] @ qf[h] / np.sqrt(d)
        p = np.exp(s - s.max())
        want[h] = (p / p.sum()) @ vf[sel, h // g]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < tol


def test_default_dispatch_on_gpu():
    """``implementation=None`` on a GPU: a registered GPU kernel, else 'xla' with one warning."""
    assert "xla" in _dispatch.available_implementations()
    x = jnp.arange(1000.0)
    _, i = pk.topk(x, 3)
    np.testing.assert_array_equal(np.asarray(i), [999, 998, 997])
    with pytest.raises(RuntimeError, match="needs a 'tpu' device"):
        pk.topk(x, 3, implementation="mosaic_tpu")
