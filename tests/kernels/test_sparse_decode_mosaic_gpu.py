"""``sparse_decode_attention(implementation="mosaic_gpu")``: the Mosaic GPU kernel run by the Mosaic
GPU interpreter on CPU (natively on a GPU), against the reference and NumPy; CUDA lowering; dispatch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mgpu_testutil import lowers_for_cuda, to_f32

import pallas_kernels as pk
from pallas_kernels import _compat, _dispatch
from pallas_kernels.sparse_decode import BlockSizes, sparse_decode_attention_reference
from pallas_kernels.sparse_decode import api as sd_api


def make(seed, n, hq, hkv, d, b, n_valid, dtype):
    """Caches with a NaN padding slot that only invalid entries point at."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(s) for s in ((hq, d), (n, hkv, d), (n, hkv, d)))
    k[n - 1] = v[n - 1] = np.nan
    idx = np.sort(rng.choice(n - 1, b, replace=False))
    idx[n_valid:] = n - 1
    cast = lambda a: jnp.asarray(a, dtype)
    return cast(q), cast(k), cast(v), jnp.asarray(idx, jnp.int32), jnp.arange(b) < n_valid


def numpy_attention(q, k, v, idx, valid, scale):
    q, k, v = (np.asarray(to_f32(a), np.float64) for a in (q, k, v))
    hq, hkv = q.shape[0], k.shape[1]
    sel = np.asarray(idx)[np.asarray(valid)]
    out = np.zeros(q.shape)
    for h in range(hq):
        s = k[sel, h // (hq // hkv)] @ q[h] * scale
        p = np.exp(s - s.max())
        out[h] = (p / p.sum()) @ v[sel, h // (hq // hkv)]
    return out


def run(mgpu_interpret, q, k, v, idx, ok, **kw):
    fn = jax.jit(
        lambda *a: pk.sparse_decode_attention(
            *a, implementation="mosaic_gpu", interpret=mgpu_interpret, **kw
        )
    )
    return fn(q, k, v, idx, ok)


def test_f32_gqa4_ragged_splits_nan_padding(mgpu_interpret):
    """B = 100 over splits of 64 (the last one ragged); 12 invalid entries point at NaN rows."""
    if mgpu_interpret is False:
        pytest.skip("f32 runs only interpreted (the device kernel takes bf16/f16)")
    q, k, v, idx, ok = make(0, 160, 8, 2, 32, 100, 88, jnp.float32)
    got = run(mgpu_interpret, q, k, v, idx, ok, scale=0.2, block_sizes=BlockSizes(64))
    want = sparse_decode_attention_reference(q, k, v, idx, ok, scale=0.2)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got), numpy_attention(q, k, v, idx, ok, 0.2), atol=1e-5)


def test_bf16_gqa8_default_blocks(mgpu_interpret):
    """bf16 caches, 8 query heads on one KV head, default block sizes, default scale."""
    q, k, v, idx, ok = make(1, 120, 8, 1, 64, 70, 61, jnp.bfloat16)
    got = to_f32(run(mgpu_interpret, q, k, v, idx, ok))
    want = to_f32(sparse_decode_attention_reference(q, k, v, idx, ok))
    # bf16 output: the split kernel rounds unnormalised weights to bf16, the reference normalised
    # ones (same tolerance as the mosaic_tpu kernel's bf16 test).
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(
        np.asarray(got), numpy_attention(q, k, v, idx, ok, 64**-0.5), atol=2e-2
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype,hq,hkv,mapping",
    [
        (jnp.float32, 4, 4, "group"),
        (jnp.float32, 8, 1, "modulo"),
        (jnp.bfloat16, 8, 2, "group"),
        (jnp.bfloat16, 4, 4, "modulo"),
    ],
)
def test_groups_mappings(mgpu_interpret, dtype, hq, hkv, mapping):
    if mgpu_interpret is False and dtype == jnp.float32:
        pytest.skip("f32 runs only interpreted")
    q, k, v, idx, ok = make(2, 200, hq, hkv, 32, 150, 141, dtype)
    got = to_f32(run(mgpu_interpret, q, k, v, idx, ok, gqa_mapping=mapping))
    want = to_f32(sparse_decode_attention_reference(q, k, v, idx, ok, gqa_mapping=mapping))
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=tol, rtol=tol)


@pytest.mark.slow
def test_vmap_with_an_empty_sequence(mgpu_interpret):
    """vmapped over two sequences; one has no valid entry at all (zeros)."""
    if mgpu_interpret is False:
        pytest.skip("f32 runs only interpreted")
    q, k, v, idx, ok = make(3, 100, 4, 1, 32, 40, 30, jnp.float32)
    oks = jnp.stack([ok, jnp.zeros_like(ok)])
    fn = jax.vmap(
        lambda o: pk.sparse_decode_attention(
            q, k, v, idx, o, implementation="mosaic_gpu", interpret=mgpu_interpret
        )
    )
    got = np.asarray(fn(oks))
    want = np.asarray(jax.vmap(lambda o: sparse_decode_attention_reference(q, k, v, idx, o))(oks))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got[1] == 0).all()


def test_lowers_for_cuda_at_paper_shapes():
    """Hq=32, Hkv=8, d=128, bf16, the paper's 2688-token budget: Pallas -> Mosaic GPU lowering."""
    pytest.importorskip("jax.experimental.pallas.mosaic_gpu")
    from pallas_kernels.sparse_decode.mosaic_gpu import (
        default_block_sizes,
        sparse_decode_mosaic_gpu,
    )

    s = jax.ShapeDtypeStruct
    kv = s((8192, 8, 128), jnp.bfloat16)
    txt = lowers_for_cuda(
        lambda q, k, v, i, o: sparse_decode_mosaic_gpu(
            q, k, v, i, o, scale=0.1, gqa_mapping="group", block_sizes=default_block_sizes(2688)
        ),
        s((32, 128), jnp.bfloat16), kv, kv, s((2688,), jnp.int32), s((2688,), jnp.bool_),
    )  # fmt: skip
    assert "mosaic_gpu" in txt


def test_dispatch_rules(monkeypatch):
    q, k, v, idx, ok = make(4, 64, 4, 2, 32, 16, 16, jnp.float32)
    if not _compat.has_mosaic_gpu():
        pytest.skip("no Mosaic GPU in this jax")
    assert "mosaic_gpu" in sd_api._IMPLS
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="needs a 'gpu' device"):
            pk.sparse_decode_attention(q, k, v, idx, ok, implementation="mosaic_gpu")
    with pytest.raises(ValueError, match="interpret='tpu'"):
        pk.sparse_decode_attention(q, k, v, idx, ok, implementation="mosaic_gpu", interpret="tpu")
    with pytest.raises(ValueError, match="multiple of 64"):
        pk.sparse_decode_attention(
            q, k, v, idx, ok, implementation="mosaic_gpu", interpret=True, block_sizes=BlockSizes(8)
        )
    # On the device the kernel refuses f32 (wgmma would use tf32) with NotImplementedError ...
    from pallas_kernels.sparse_decode.mosaic_gpu import sparse_decode_mosaic_gpu

    with pytest.raises(NotImplementedError, match="tf32"):
        sparse_decode_mosaic_gpu(
            q, k, v, idx, ok, scale=1.0, gqa_mapping="group", block_sizes=BlockSizes(64)
        )
    # ... so that implementation=None on a GPU picks mosaic_gpu, and falls back to xla for f32.
    calls = []
    real = sd_api._IMPLS["mosaic_gpu"]

    def spy(*a, **kw):
        calls.append(a[1].dtype)
        return real(*a, **{**kw, "interpret": False})

    # (as it will once it measures faster than xla; until then None does not pick mosaic_gpu)
    monkeypatch.setattr(_dispatch, "NOT_DEFAULT", {})
    monkeypatch.setattr(_dispatch, "default_backend_kind", lambda: "gpu")
    monkeypatch.setitem(sd_api._IMPLS, "mosaic_gpu", spy)
    with pytest.warns(RuntimeWarning, match="falling back to 'xla'"):
        got = pk.sparse_decode_attention(q, k, v, idx, ok)
    assert calls == [jnp.float32]
    want = sparse_decode_attention_reference(q, k, v, idx, ok)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


@pytest.mark.gpu
def test_device_paper_shapes_match_numpy():
    """On a Hopper GPU: the compiled kernel at Hq=32, Hkv=8, d=128, B=2688, bf16."""
    q, k, v, idx, ok = make(5, 1 << 15, 32, 8, 128, 2688, 2681, jnp.bfloat16)
    got = to_f32(pk.sparse_decode_attention(q, k, v, idx, ok, implementation="mosaic_gpu"))
    np.testing.assert_allclose(
        np.asarray(got), numpy_attention(q, k, v, idx, ok, 128**-0.5), atol=2e-2, rtol=2e-2
    )
