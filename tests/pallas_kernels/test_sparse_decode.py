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


U32 = 2.0**-24  # float32 unit roundoff
U_BF16 = 2.0**-8  # bfloat16 unit roundoff (8 significant bits)
EXP_ERR = 4 * U32  # relative error of XLA's float32 exp (a few units at most)


def rounding_bound(q, k, v, idx, valid, scale=None, modulo=False, weight_u=0.0):
    """Per-element bound on |out - exact| for one float32 evaluation of sparse attention.

    A score q . k over d terms is off by at most d u sum_i |q_i k_i| (Higham's gamma_d), plus u |s|
    for the scale; a softmax weight moves by its own score's error plus the largest one (through
    the max and the normaliser), plus the roundings of s - max (u |s - max|) and of exp, each in
    the weight and in the normaliser, of the B-term normaliser (B u) and of the division (u).
    ``weight_u``: the weights are also rounded to a narrower type before p @ v (bf16: 2**-8),
    which moves the weights and their normaliser. o = sum_j p_j v_j then errs by
    rel (sum_j p_j |v_j| + |o|) plus B u sum_j p_j |v_j| (B products and B - 1 additions).
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    hq, d = q.shape
    hkv = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    heads = np.arange(hq) % hkv if modulo else np.arange(hq) // (hq // hkv)
    sel = np.asarray(idx)[np.asarray(valid)]
    kh, vh = k[sel][:, heads].transpose(1, 0, 2), v[sel][:, heads].transpose(1, 0, 2)
    s = scale * np.einsum("hd,hbd->hb", q, kh)
    e_s = d * U32 * scale * np.einsum("hd,hbd->hb", np.abs(q), np.abs(kh)) + U32 * np.abs(s)
    b = len(sel)
    rel = 2 * e_s.max(-1) + 2 * U32 * np.ptp(s, -1) + 2 * EXP_ERR + (b + 1) * U32 + weight_u
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pv = np.einsum("hb,hbd->hd", p, np.abs(vh))
    o = np.abs(np.einsum("hb,hbd->hd", p, vh))
    return rel[:, None] * (pv + o) + b * U32 * pv


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
        # two float32 evaluations (different op orders): twice one's rounding bound
        modulo = kw.get("gqa_mapping") == "modulo"
        bound = 2 * rounding_bound(q, k, v, idx, ok, kw.get("scale"), modulo)
        err = np.abs(np.asarray(got, np.float64) - np.asarray(want))
        np.testing.assert_array_less(err, bound)


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
    # bf16 output: the split kernel rounds unnormalised weights to bf16, the reference normalised
    # ones, so each errs by the bound with weight_u = U_BF16; each output is then rounded to bf16
    # (U_BF16 |out| each), which can put two values within that bound one bf16 unit apart.
    bound = 2 * rounding_bound(q, k, v, idx, ok, weight_u=U_BF16)
    bound += U_BF16 * (np.abs(got[0]) + np.abs(want[0]))
    np.testing.assert_array_less(np.abs(got[0].astype(np.float64) - want[0]), bound)
    assert (got[1] == 0).all() and (want[1] == 0).all()


def test_bad_input():
    q, k, v, idx, ok = make(6, 50, 8, 2, 8, 10, 10)
    with pytest.raises(ValueError, match="indices and valid"):
        sparse_decode_attention(q, k, v, idx[None], ok)
    with pytest.raises(ValueError, match="v must have"):
        sparse_decode_attention(q, k, v[:, :1], idx, ok)
    with pytest.raises(ValueError, match="block_b"):
        BlockSizes(block_b=12)
