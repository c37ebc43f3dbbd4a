"""``token_select(implementation="mosaic_gpu")``: the Mosaic GPU scoring kernel run by the Mosaic GPU
interpreter on CPU (natively on a GPU): identical indices to the reference and to NumPy; CUDA
lowering at the paper's shapes; dispatch rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mgpu_testutil import lowers_for_cuda

import pallas_kernels as pk
from pallas_kernels import _compat, _dispatch
from pallas_kernels.token_select import BlockSizes, soft_votes_reference, token_select_reference
from pallas_kernels.token_select import api as ts_api

BS = BlockSizes(block_kv=128, block_vote=256)


def make_qk(seed, n, hq, hkv, d, dtype=jnp.float32, n_distinct=None):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((hq, d))
    if n_distinct is None:
        k = rng.standard_normal((n, hkv, d))
    else:  # every key is one of a few vectors: votes tie in large groups
        k = rng.standard_normal((n_distinct, hkv, d))[rng.integers(0, n_distinct, n)]
    return jnp.asarray(q, dtype), jnp.asarray(k, dtype)


def numpy_select(q, k, kv_len, *, top_k, n_sink, n_local, scale=1.0):
    """Independent NumPy TokenSelect ("group" mapping; float64 votes, stable descending sort)."""
    q = np.asarray(jnp.asarray(q, jnp.float32), np.float64)
    k = np.asarray(jnp.asarray(k, jnp.float32), np.float64)
    hq, hkv = q.shape[0], k.shape[1]
    s = np.einsum("hd,nhd->hn", q, k[:, np.arange(hq) // (hq // hkv)]) * scale
    cand = np.arange(n_sink, kv_len - n_local)
    sc = s[:, cand]
    p = np.exp(sc - sc.max(1, keepdims=True))
    vote = (p / p.sum(1, keepdims=True)).sum(0)
    top = cand[np.sort(np.argsort(-vote, kind="stable")[:top_k])]
    return np.concatenate([np.arange(n_sink), top, np.arange(kv_len - n_local, kv_len)])


def assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_f32_gqa4_ties_ragged(mgpu_interpret):
    """N=200 is one 128-token tile + a 72-token tail; kv_len=180; votes tie in large groups."""
    if mgpu_interpret is False:
        pytest.skip("f32 runs only interpreted (the device kernel takes bf16/f16)")
    kw = dict(top_k=40, n_sink=4, n_local=8)
    q, k = make_qk(0, 200, 8, 2, 32, n_distinct=6)
    got = jax.jit(
        lambda q, k, n: pk.token_select(
            q, k, n, implementation="mosaic_gpu", interpret=mgpu_interpret, block_sizes=BS, **kw
        )
    )(q, k, jnp.int32(180))
    assert_same(got, token_select_reference(q, k, jnp.int32(180), **kw))
    np.testing.assert_array_equal(np.asarray(got[0]), numpy_select(q, k, 180, **kw))


def test_bf16_gqa8(mgpu_interpret):
    """bf16 cache, 8 query heads on one KV head, default tiles (128 + an 8-token tail)."""
    kw = dict(top_k=24, n_sink=2, n_local=6)
    q, k = make_qk(1, 136, 8, 1, 64, dtype=jnp.bfloat16)
    got = pk.token_select(q, k, 130, implementation="mosaic_gpu", interpret=mgpu_interpret, **kw)
    assert_same(got, token_select_reference(q, k, 130, **kw))
    np.testing.assert_array_equal(np.asarray(got[0]), numpy_select(q, k, 130, **kw))


@pytest.mark.slow
def test_bf16_gqa8_vmap_sparse_and_dense(mgpu_interpret):
    """bf16 cache, 8 query heads on one KV head, vmapped: one sparse and one dense kv_len."""
    kw = dict(top_k=24, n_sink=2, n_local=6)
    q, k = make_qk(1, 136, 8, 1, 64, dtype=jnp.bfloat16)  # default tile 128 + an 8-token tail
    qs, ks = jnp.stack([q, -q]), jnp.stack([k, k[::-1]])
    lens = jnp.array([130, 25], jnp.int32)
    fn = jax.vmap(
        lambda q, k, n: pk.token_select(
            q, k, n, implementation="mosaic_gpu", interpret=mgpu_interpret, **kw
        )
    )
    got = jax.jit(fn)(qs, ks, lens)
    want = jax.vmap(lambda q, k, n: token_select_reference(q, k, n, **kw))(qs, ks, lens)
    assert_same(got, want)
    assert not bool(got[1][1, 25:].any()) and bool(got[1][0].all())


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype,hq,hkv,mapping,n_distinct",
    [
        (jnp.float32, 4, 4, "modulo", None),
        (jnp.float32, 8, 1, "group", None),
        (jnp.bfloat16, 8, 2, "group", 5),
        (jnp.bfloat16, 4, 4, "group", None),
    ],
)
def test_groups_mappings(mgpu_interpret, dtype, hq, hkv, mapping, n_distinct):
    if mgpu_interpret is False and dtype == jnp.float32:
        pytest.skip("f32 runs only interpreted")
    kw = dict(top_k=32, n_sink=3, n_local=5, scale=0.3, gqa_mapping=mapping)
    q, k = make_qk(2, 392, hq, hkv, 32, dtype=dtype, n_distinct=n_distinct)
    got = pk.token_select(
        q, k, 377, implementation="mosaic_gpu", interpret=mgpu_interpret, block_sizes=BS, **kw
    )
    assert_same(got, token_select_reference(q, k, 377, **kw))


@pytest.mark.slow
def test_votes_match_reference(mgpu_interpret):
    """The kernel's soft votes themselves, to 1e-6, including a cache shorter than one tile."""
    from pallas_kernels.token_select.mosaic_gpu import soft_votes_mosaic_gpu

    if mgpu_interpret is False:
        pytest.skip("f32 runs only interpreted")
    kw = dict(n_sink=4, n_local=8, scale=0.5, gqa_mapping="group")
    for n, block_kv in ((264, 64), (40, 64)):
        q, k = make_qk(3, n, 8, 2, 32)
        got = soft_votes_mosaic_gpu(
            q, k, jnp.int32(n - 3), block_kv=block_kv, interpret=mgpu_interpret, **kw
        )
        want = soft_votes_reference(q, k, n - 3, **kw)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_lowers_for_cuda_at_paper_shapes():
    """Hq=32, Hkv=8, d=128, bf16, N = 8192 + 72 (ragged tail): Pallas -> Mosaic GPU lowering."""
    pytest.importorskip("jax.experimental.pallas.mosaic_gpu")
    s = jax.ShapeDtypeStruct
    kw = dict(scale=1.0, vote_pool=1, gqa_mapping="group", axis_name=None, block_sizes=None)
    txt = lowers_for_cuda(  # the whole mosaic_gpu path (kernel, votes, radix top-k), no dispatch
        lambda q, k, n: ts_api.mosaic_gpu_select(
            q, k, n, top_k=2048, n_sink=128, n_local=512, interpret=False, **kw
        ),
        s((32, 128), jnp.bfloat16), s((8192 + 72, 8, 128), jnp.bfloat16), s((), jnp.int32),
    )  # fmt: skip
    assert "mosaic_gpu" in txt


def test_dispatch_rules(monkeypatch):
    if not _compat.has_mosaic_gpu():
        pytest.skip("no Mosaic GPU in this jax")
    from pallas_kernels.token_select.mosaic_gpu import soft_votes_mosaic_gpu

    kw = dict(top_k=8, n_sink=2, n_local=2)
    q, k = make_qk(4, 100, 4, 2, 32)
    assert "mosaic_gpu" in ts_api._IMPLS
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="needs a 'gpu' device"):
            pk.token_select(q, k, 90, implementation="mosaic_gpu", **kw)
    with pytest.raises(ValueError, match="interpret='tpu'"):
        pk.token_select(q, k, 90, implementation="mosaic_gpu", interpret="tpu", **kw)
    vkw = dict(n_sink=2, n_local=2, scale=1.0, gqa_mapping="group")
    with pytest.raises(NotImplementedError, match="tf32"):  # f32 on the device
        soft_votes_mosaic_gpu(q, k, jnp.int32(90), block_kv=64, **vkw)
    qb, kb = q.astype(jnp.bfloat16), k[:99].astype(jnp.bfloat16)
    with pytest.raises(NotImplementedError, match="multiple of 8"):
        soft_votes_mosaic_gpu(qb, kb, jnp.int32(90), block_kv=64, **vkw)
    # implementation=None on a GPU tries mosaic_gpu and falls back to xla on NotImplementedError.
    calls = []
    real = ts_api._IMPLS["mosaic_gpu"]

    def spy(*a, **kw):
        calls.append(a[1].dtype)
        return real(*a, **{**kw, "interpret": False})

    # (as it will once it measures faster than xla; until then None does not pick mosaic_gpu)
    monkeypatch.setattr(_dispatch, "NOT_DEFAULT", {})
    monkeypatch.setattr(_dispatch, "default_backend_kind", lambda: "gpu")
    monkeypatch.setitem(ts_api._IMPLS, "mosaic_gpu", spy)
    with pytest.warns(RuntimeWarning, match="falling back to 'xla'"):
        got = pk.token_select(q, k, 90, **kw)
    assert calls == [jnp.float32]
    assert_same(got, token_select_reference(q, k, 90, **kw))


@pytest.mark.gpu
def test_device_paper_shapes_match_reference():
    """On a Hopper GPU: the compiled kernel at N=64K, Hq=32, Hkv=8, d=128, bf16, k=2048."""
    kw = dict(top_k=2048, n_sink=128, n_local=512)
    q, k = make_qk(5, 1 << 16, 32, 8, 128, dtype=jnp.bfloat16)
    n = jnp.int32((1 << 16) - 1000)
    got = jax.jit(lambda q, k, n: pk.token_select(q, k, n, implementation="mosaic_gpu", **kw))(
        q, k, n
    )
    assert_same(got, token_select_reference(q, k, n, **kw))
