"""pallas_kernels.sparse_decode_attention against NumPy, jaxsel.attention and across backends."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.sparse_decode import (
    BlockSizes,
    sparse_decode_attention,
    sparse_decode_attention_reference,
)


def numpy_attention(q, k, v, idx, valid, scale=None, modulo=False):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    hq, d = q.shape
    hkv = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    heads = np.arange(hq) % hkv if modulo else np.arange(hq) // (hq // hkv)
    idx, valid = np.asarray(idx), np.asarray(valid)
    out = np.zeros((hq, d))
    sel = idx[valid]
    if sel.size == 0:
        return out
    for h in range(hq):
        s = k[sel, heads[h]] @ q[h] * scale
        p = np.exp(s - s.max())
        out[h] = (p / p.sum()) @ v[sel, heads[h]]
    return out


def make(seed, n, hq, hkv, d, b, n_valid, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(s) for s in ((hq, d), (n, hkv, d), (n, hkv, d)))
    k[n - 1] = np.nan  # a padding slot with garbage: only reachable through an invalid entry
    v[n - 1] = np.nan
    idx = np.sort(rng.choice(n - 1, b, replace=False))
    idx[n_valid:] = n - 1
    cast = lambda a: jnp.asarray(a, dtype)
    return cast(q), cast(k), cast(v), jnp.asarray(idx, jnp.int32), jnp.arange(b) < n_valid


@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (8, 1)])
def test_reference_matches_numpy(hq, hkv):
    q, k, v, idx, ok = make(0, 200, hq, hkv, 16, 40, 33)
    got = jax.jit(sparse_decode_attention_reference)(q, k, v, idx, ok)
    np.testing.assert_allclose(np.asarray(got), numpy_attention(q, k, v, idx, ok), atol=1e-5)


def test_matches_jaxsel_attention():
    attention = pytest.importorskip("jaxsel.attention")
    q, k, v, idx, ok = make(1, 200, 8, 2, 16, 40, 31)
    for kw in ({}, {"scale": 0.3, "gqa_mapping": "modulo"}):
        want = attention.sparse_attention(q, k, v, idx, ok, **kw)
        got = sparse_decode_attention(q, k, v, idx, ok, implementation="xla", **kw)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_kernel_f32_groups_ragged_splits(kernel_backend):
    """B = 45 is not a multiple of the 16-token split; invalid entries point at NaN padding."""
    impl, interpret = kernel_backend
    bs = BlockSizes(block_b=16)
    for seed, (hq, hkv), mapping in (
        (2, (8, 2), "group"),
        (3, (8, 1), "modulo"),
        (4, (4, 4), "group"),
    ):
        q, k, v, idx, ok = make(seed, 120, hq, hkv, 16, 45, 38)
        got = sparse_decode_attention(
            q, k, v, idx, ok, gqa_mapping=mapping, implementation=impl, interpret=interpret,
            block_sizes=bs,
        )  # fmt: skip
        want = sparse_decode_attention_reference(q, k, v, idx, ok, gqa_mapping=mapping)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(
            np.asarray(got),
            numpy_attention(q, k, v, idx, ok, modulo=mapping == "modulo"),
            atol=1e-5,
        )


def test_kernel_bf16_vmap_empty_split(kernel_backend_tpu_first):
    """bf16 caches, vmapped over sequences; one sequence has no valid entry at all (zeros)."""
    impl, interpret = kernel_backend_tpu_first
    q, k, v, idx, ok = make(5, 100, 8, 2, 16, 24, 20, dtype=jnp.bfloat16)
    oks = jnp.stack([ok, jnp.zeros_like(ok)])
    fn = jax.vmap(
        lambda o: sparse_decode_attention(
            q, k, v, idx, o, implementation=impl, interpret=interpret, block_sizes=BlockSizes(8)
        )
    )
    got = np.asarray(fn(oks).astype(jnp.float32))
    want = np.asarray(
        jax.vmap(lambda o: sparse_decode_attention_reference(q, k, v, idx, o))(oks).astype(
            jnp.float32
        )
    )
    # bf16 output: the split kernel rounds unnormalised weights, the reference normalised ones.
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)
    assert (got[1] == 0).all()


def test_bad_input():
    q, k, v, idx, ok = make(6, 50, 8, 2, 8, 10, 10)
    with pytest.raises(ValueError, match="indices and valid"):
        sparse_decode_attention(q, k, v, idx[None], ok)
    with pytest.raises(ValueError, match="v must have"):
        sparse_decode_attention(q, k, v[:, :1], idx, ok)
    with pytest.raises(ValueError, match="block_b"):
        BlockSizes(block_b=12)
