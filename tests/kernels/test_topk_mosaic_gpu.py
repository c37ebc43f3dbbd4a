"""``topk(implementation="mosaic_gpu")``: the radix-select counting kernel run by the Mosaic GPU
interpreter on CPU (natively on a GPU) against ``lax.top_k`` / NumPy; CUDA lowering; dispatch."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mgpu_testutil import lowers_for_cuda

import pallas_kernels as pk
from pallas_kernels import _compat, _dispatch
from pallas_kernels.topk import BlockSizes, topk_reference
from pallas_kernels.topk import api as topk_api

BS = BlockSizes(block_rows=64, radix_bits=4)


def numpy_topk(x, k):
    """Stable descending order on the IEEE total order (the reference's key transform in NumPy)."""
    bits = np.asarray(x, np.float32).view(np.int32)
    keys = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits)
    return np.argsort(-keys.astype(np.int64), axis=-1, kind="stable")[..., :k]


def test_f32_ties_nans_signed_zeros(mgpu_interpret):
    """Two rows of N=300 (not a multiple of the 8192-key tile): heavy ties, NaNs of both signs,
    -0.0 vs +0.0, infinities; against NumPy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 300)).astype(np.float32)
    x[1] = np.round(x[1] * 2)  # a handful of distinct values, each tied many times
    x[0, [3, 9, 11, 12]] = [np.nan, -np.nan, np.inf, -np.inf]
    x[1, [0, 1]] = [-0.0, 0.0]
    xs = jnp.asarray(x)
    v, i = jax.jit(
        lambda a: pk.topk(
            a, 40, implementation="mosaic_gpu", interpret=mgpu_interpret, block_sizes=BS
        )
    )(xs)
    want = numpy_topk(x, 40)
    np.testing.assert_array_equal(np.asarray(i), want)
    np.testing.assert_array_equal(np.asarray(v), np.take_along_axis(x, want, -1))


@pytest.mark.slow
@pytest.mark.parametrize("dtype,n,k", [(jnp.bfloat16, 20000, 700), (jnp.float32, 9000, 9000)])
def test_multi_block_rows(mgpu_interpret, dtype, n, k):
    """Several blocks per row (partial counts summed across blocks), bf16, and k = N."""
    x = jax.random.normal(jax.random.key(1), (3, n), dtype)
    x = x.at[1].set(jnp.round(x[1] * 4))
    v, i = pk.topk(x, k, implementation="mosaic_gpu", interpret=mgpu_interpret, block_sizes=BS)
    rv, ri = topk_reference(x, k)
    np.testing.assert_array_equal(np.asarray(i), np.asarray(ri))
    np.testing.assert_array_equal(np.asarray(v), np.asarray(rv))
    s = pk.topk_set(x, k, implementation="mosaic_gpu", interpret=mgpu_interpret, block_sizes=BS)
    np.testing.assert_array_equal(np.asarray(s), np.sort(np.asarray(ri), -1))


def test_lowers_for_cuda_at_paper_shapes():
    """A 1M-long f32 row, k = 2048: Pallas -> Mosaic GPU lowering of the counting kernel."""
    pytest.importorskip("jax.experimental.pallas.mosaic_gpu")
    from pallas_kernels.topk.mosaic_gpu import topk_set_mosaic_gpu

    s = jax.ShapeDtypeStruct
    txt = lowers_for_cuda(lambda a: topk_set_mosaic_gpu(a, 2048), s((1, 1 << 20), jnp.float32))
    assert "mosaic_gpu" in txt


def test_dispatch_rules(monkeypatch):
    if not _compat.has_mosaic_gpu():
        pytest.skip("no Mosaic GPU in this jax")
    x = jnp.arange(500.0)
    assert "mosaic_gpu" in topk_api._TOPK and "mosaic_gpu" in topk_api._TOPK_SET
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="needs a 'gpu' device"):
            pk.topk(x, 3, implementation="mosaic_gpu")
    with pytest.raises(ValueError, match="multiple of 64"):
        pk.topk(x, 3, implementation="mosaic_gpu", interpret=True, block_sizes=BlockSizes(8))
    # implementation=None on a GPU:
    calls = []
    monkeypatch.setattr(_dispatch, "default_backend_kind", lambda: "gpu")
    monkeypatch.setitem(
        topk_api._TOPK, "mosaic_gpu", lambda x, k, **kw: calls.append(k) or topk_reference(x, k)
    )
    # Measured slower than xla on an H200, so implementation=None uses xla, without a warning ...
    assert "mosaic_gpu" in _dispatch.NOT_DEFAULT
    _dispatch._warn_once.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, i = pk.topk(x, 3)
    assert calls == []
    np.testing.assert_array_equal(np.asarray(i), [499, 498, 497])
    # ... and once it measures ahead (taken out of NOT_DEFAULT), it is the GPU default.
    monkeypatch.setattr(_dispatch, "NOT_DEFAULT", {})
    _, i = pk.topk(x, 3)
    assert calls == [3]
    np.testing.assert_array_equal(np.asarray(i), [499, 498, 497])


@pytest.mark.gpu
def test_device_1m_matches_numpy():
    """On a Hopper GPU: 1M-long rows, k = 2048, one row with heavy ties."""
    rng = np.random.default_rng(2)
    x = rng.random((2, 1 << 20), dtype=np.float32)
    x[1] = np.round(x[1] * 1000)
    v, i = jax.jit(lambda a: pk.topk(a, 2048, implementation="mosaic_gpu"))(jnp.asarray(x))
    want = numpy_topk(x, 2048)
    np.testing.assert_array_equal(np.asarray(i), want)
    np.testing.assert_array_equal(np.asarray(v), np.take_along_axis(x, want, -1))
