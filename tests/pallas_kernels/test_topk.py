"""pallas_kernels.topk against a plain NumPy stable sort, per backend, under jit and vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.topk import BlockSizes, sortable_keys, topk, topk_reference, topk_set


def numpy_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable descending sort on IEEE total order, in NumPy (independent of JAX)."""
    bits = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    keys = np.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)  # total order, as an int64
    order = np.argsort(-keys, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(np.asarray(x, np.float32), order, -1), order


def tie_rows(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """Rows with many exact ties (small integers), signed zeros and infinities."""
    x = rng.integers(-4, 5, size=(rows, n)).astype(np.float32)
    x[0, ::7] = -0.0
    x[-1, 3] = np.inf
    x[-1, 5] = -np.inf
    return x


def test_sortable_keys_total_order():
    vals = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, np.inf], np.float32)
    keys = np.asarray(sortable_keys(jnp.asarray(vals)))
    assert (np.diff(keys.astype(np.int64)) > 0).all()


def test_reference_matches_numpy_and_lax():
    rng = np.random.default_rng(0)
    x = tie_rows(rng, 3, 257)
    v, i = topk_reference(jnp.asarray(x), 40)
    nv, ni = numpy_topk(x, 40)
    np.testing.assert_array_equal(np.asarray(i), ni)
    np.testing.assert_array_equal(np.asarray(v), nv)
    _lv, li = jax.lax.top_k(jnp.asarray(x), 40)
    np.testing.assert_array_equal(np.asarray(li), ni)


@pytest.mark.parametrize("implementation", ["xla", "xla_radix"])
def test_xla_backends(implementation):
    rng = np.random.default_rng(1)
    x = tie_rows(rng, 2, 333)
    x[1] = rng.standard_normal(333)
    for k in (50, 333):
        v, i = jax.jit(lambda a, k=k: topk(a, k, implementation=implementation))(jnp.asarray(x))
        nv, ni = numpy_topk(x, k)
        np.testing.assert_array_equal(np.asarray(i), ni)
        np.testing.assert_array_equal(np.asarray(v), nv)


def test_kernel_f32_ties_ragged(kernel_backend):
    """N = 1000 is not a multiple of the [8, 128] tile; rows with heavy ties and signed zeros."""
    impl, interpret = kernel_backend
    rng = np.random.default_rng(2)
    x = tie_rows(rng, 3, 1000)
    x[1] = rng.standard_normal(1000)
    bs = BlockSizes(block_rows=8, radix_bits=4)
    v, i = topk(jnp.asarray(x), 37, implementation=impl, interpret=interpret, block_sizes=bs)
    nv, ni = numpy_topk(x, 37)
    np.testing.assert_array_equal(np.asarray(i), ni)
    np.testing.assert_array_equal(np.asarray(v), nv)


def test_kernel_bf16_vmap_k_equals_n(kernel_backend_tpu_first):
    """bf16, k = N (every element, padding never selected), vmapped over a batch of rows."""
    impl, interpret = kernel_backend_tpu_first
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(-3, 4, size=(2, 200)), jnp.bfloat16)
    fn = jax.vmap(lambda r: topk_set(r, 200, implementation=impl, interpret=interpret))
    got = np.asarray(fn(x))
    np.testing.assert_array_equal(got, np.tile(np.arange(200), (2, 1)))
    v, i = topk(
        x,
        9,
        implementation=impl,
        interpret=interpret,
        block_sizes=BlockSizes(block_rows=8, radix_bits=2),
    )
    _nv, ni = numpy_topk(np.asarray(x.astype(jnp.float32)), 9)
    np.testing.assert_array_equal(np.asarray(i), ni)
    assert v.dtype == jnp.bfloat16


def test_topk_set_is_ascending_top_set():
    rng = np.random.default_rng(4)
    x = tie_rows(rng, 2, 300)
    got = np.asarray(topk_set(jnp.asarray(x), 64, implementation="xla"))
    _, ni = numpy_topk(x, 64)
    np.testing.assert_array_equal(got, np.sort(ni, axis=-1))


def test_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        topk(jnp.zeros((4, 8)), 9)
    with pytest.raises(ValueError, match="floating"):
        topk(jnp.zeros((8,), jnp.int32), 2)
    with pytest.raises(ValueError, match="block_rows"):
        BlockSizes(block_rows=12)
    with pytest.raises(ValueError, match="unknown"):
        topk(jnp.zeros((8,)), 2, implementation="nope")


def test_explicit_backend_without_device_raises():
    if jax.default_backend() == "tpu":
        pytest.skip("on a TPU mosaic_tpu runs natively")
    with pytest.raises(RuntimeError, match="needs a 'tpu' device"):
        topk(jnp.zeros((8,)), 2, implementation="mosaic_tpu")


def test_default_falls_back_to_xla_with_one_warning(monkeypatch):
    """``implementation=None``: on a GPU 'xla' is the measured best (no warning); on a TPU without a
    registered Pallas backend 'xla' is a fallback, warned once."""
    import warnings

    from pallas_kernels import _dispatch
    from pallas_kernels.topk import api as topk_api

    x = jnp.arange(10.0)
    monkeypatch.setattr(_dispatch, "default_backend_kind", lambda: "gpu")
    _dispatch._warn_once.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, i = topk(x, 3)
    np.testing.assert_array_equal(np.asarray(i), [9, 8, 7])
    with pytest.raises(RuntimeError, match="needs a 'tpu' device"):
        topk(x, 3, implementation="mosaic_tpu")

    monkeypatch.setattr(_dispatch, "default_backend_kind", lambda: "tpu")
    monkeypatch.delitem(topk_api._TOPK, "mosaic_tpu", raising=False)
    with pytest.warns(RuntimeWarning, match="'mosaic_tpu' unavailable \\(not registered"):
        _, i = topk(x, 3)
    np.testing.assert_array_equal(np.asarray(i), [9, 8, 7])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        topk(x, 3)  # second call: no warning
