"""RoPE helpers and TokenSelect's position modes."""

from __future__ import annotations

import _attention_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.attention import (
    apply_rope,
    gathered_positions,
    rope_causal_attention,
    rope_frequencies,
    rope_prefill_attention,
    rope_sparse_attention,
    rope_table,
    scoring_query,
    select_tokens,
)

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def test_apply_rope_matches_complex_rotation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 16)).astype(np.float32)
    pos = np.array([0, 1, 7, 100, 2047])
    inv = rope_frequencies(16, theta=500.0)
    got = np.asarray(jax.jit(lambda x, p: apply_rope(x, p, theta=500.0))(x, pos))
    for t in range(5):
        # Against the float64 rotation of the same float32 angle: only the sine/cosine and the
        # final products may err (a few units of float32 roundoff, at any position).
        want = ref.rope(x[t], pos[t], inv_freq=inv, f32_angle=True)
        tol = ref.rope_tolerance(x[t], pos[t], inv, freq_err=None)
        assert np.all(np.abs(got[t] - want) <= tol), (pos[t], np.max(np.abs(got[t] - want) / tol))
        # Against the exact float64 angle of the exact frequencies: the float32 angle itself is
        # off by up to 2 U32 |pos w| (frequency and product roundings), which dominates at
        # position 2047 (up to 2.4e-4 radians).
        want = ref.rope(x[t], pos[t], theta=500.0)
        tol = ref.rope_tolerance(x[t], pos[t], inv, freq_err=ref.U32)
        assert np.all(np.abs(got[t] - want) <= tol), (pos[t], np.max(np.abs(got[t] - want) / tol))
    # scalar position for [Hq, d]; batch prefix [B, T] for [B, T, H, d]
    inv10k = rope_frequencies(16)
    want = ref.rope(x[0], 7, inv_freq=inv10k, f32_angle=True)
    tol = ref.rope_tolerance(x[0], 7, inv10k, freq_err=None)
    assert np.all(np.abs(np.asarray(apply_rope(x[0], 7)) - want) <= tol)
    xb = np.stack([x, x])
    pb = np.stack([pos, pos + 1])
    gb = np.asarray(apply_rope(xb, pb))
    want = ref.rope(x[2], pos[2] + 1, inv_freq=inv10k, f32_angle=True)
    tol = ref.rope_tolerance(x[2], pos[2] + 1, inv10k, freq_err=None)
    assert np.all(np.abs(gb[1, 2] - want) <= tol)
    # relative property: <rope(q, m), rope(k, n)> depends on m - n only. Both dot products
    # approximate the same exact value; each rotated vector is within its tolerance vector t of
    # the exact one, so each dot is off by at most |t_q| |k| + |q| |t_k| (Cauchy-Schwarz).
    q, k = x[0, 0], x[1, 0]

    def dot_bound(m, n):
        tq = ref.rope_tolerance(q, m, inv10k, freq_err=ref.U32)
        tk = ref.rope_tolerance(k, n, inv10k, freq_err=ref.U32)
        return np.linalg.norm(tq) * np.linalg.norm(k) + np.linalg.norm(q) * np.linalg.norm(tk)

    a = np.dot(np.asarray(apply_rope(q, 50)), np.asarray(apply_rope(k, 40)))
    b = np.dot(np.asarray(apply_rope(q, 13)), np.asarray(apply_rope(k, 3)))
    assert abs(a - b) <= dot_bound(50, 40) + dot_bound(13, 3), (a, b)
    with pytest.raises(ValueError, match="prefix"):
        apply_rope(x, np.arange(3))


def test_rope_frequencies_linear_and_llama3_closed_form():
    # Frequencies are the float64 values rounded once to float32: relative error <= U32.
    base = rope_frequencies(64, theta=10000.0)
    np.testing.assert_allclose(base, 1.0 / 10000.0 ** (np.arange(0, 64, 2) / 64), rtol=ref.U32)
    lin = rope_frequencies(64, theta=10000.0, scaling={"type": "linear", "factor": 4.0})
    np.testing.assert_allclose(lin, base / 4.0, rtol=ref.U32)
    l3 = rope_frequencies(128, theta=500000.0, scaling=LLAMA3)
    b3 = rope_frequencies(128, theta=500000.0)
    wavelen = 2 * np.pi / b3
    hi = wavelen < 8192 / 4.0  # short wavelengths kept
    lo = wavelen > 8192 / 1.0  # long ones divided by the factor
    np.testing.assert_allclose(l3[hi], b3[hi], rtol=ref.U32)
    np.testing.assert_allclose(l3[lo], b3[lo] / 8.0, rtol=ref.U32)
    mid = ~hi & ~lo
    assert mid.any() and np.all((l3[mid] < b3[mid]) & (l3[mid] > b3[mid] / 8.0))
    with pytest.raises(ValueError, match="unsupported rope scaling"):
        rope_frequencies(64, scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="even"):
        rope_frequencies(63)


@pytest.mark.slow  # imports transformers (~10 s); the closed-form llama3 test above runs by default
def test_rope_matches_hugging_face(torch):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cfg = transformers.LlamaConfig(
        hidden_size=128,
        num_attention_heads=2,
        max_position_embeddings=16384,
        rope_parameters={"rope_theta": 500000.0, **LLAMA3},
    )
    inv, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    # Ours are the exact frequencies rounded once (error <= U32); HF forms them in float32: a
    # vectorised pow (<= 2 ulp), a division, then the llama3 blend (about six roundings, each
    # <= U32 relative to a value of the frequency's size). 16 U32 bounds the sum of both.
    hf_freq_err = 16 * ref.U32
    ours_inv = rope_frequencies(64, theta=500000.0, scaling=LLAMA3)
    np.testing.assert_allclose(ours_inv, inv.numpy(), rtol=hf_freq_err)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 2, 6, 64)).astype(np.float32)  # [B, H, T, d] (HF layout)
    pos = torch.tensor([[0, 5, 99, 1000, 5000, 12000]])
    freqs = pos[:, :, None].float() * inv[None, None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    qh, _ = apply_rotary_pos_emb(torch.tensor(x), torch.tensor(x), emb.cos(), emb.sin())
    ours = apply_rope(np.transpose(x[0], (1, 0, 2)), pos[0].numpy(), theta=500000.0, scaling=LLAMA3)
    ours = np.transpose(np.asarray(ours), (1, 0, 2))  # [H, T, d]
    for t, p in enumerate(pos[0].tolist()):
        # Both are within their bound of the exact rotation (torch's sine/cosine assumed no worse
        # than TRIG_ERR), so they are within the sum of the two bounds of each other.
        tol = ref.rope_tolerance(x[0, :, t], p, ours_inv, freq_err=ref.U32)
        tol = tol + ref.rope_tolerance(x[0, :, t], p, ours_inv, freq_err=hf_freq_err)
        err = np.abs(ours[:, t] - qh[0, :, t].numpy())
        assert np.all(err <= tol), (p, float(np.max(err / tol)))


def rotated_dense(q, k, v, kv_len, positions, q_pos):
    kr = np.stack([ref.rope(k[j], p) for j, p in enumerate(positions)])
    return ref.attention(ref.rope(q, q_pos), kr, v, list(range(kv_len)))


def make(seed, n=64, hq=8, hkv=2, d=16):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(hq, d)).astype(np.float32),
        rng.normal(size=(n, hkv, d)).astype(np.float32),
        rng.normal(size=(n, hkv, d)).astype(np.float32),
    )


def test_original_mode_equals_standard_rope_attention_when_dense():
    q, k, v = make(2)
    kv_len = 20
    idx, valid = select_tokens(q, k, kv_len, top_k=8, n_sink=4, n_local=12)
    want = rotated_dense(q, k, v, kv_len, np.arange(64), kv_len - 1)
    for mode in ("original", "compact"):  # dense: compact positions are the original ones
        got = rope_sparse_attention(q, k, v, idx, valid, kv_len, position_mode=mode)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_compact_and_original_modes_when_sparse():
    q, k, v = make(3)
    kv_len = 60
    idx, valid = select_tokens(scoring_query(q, n_local=4), k, kv_len, top_k=6, n_sink=2, n_local=4)
    ii = np.asarray(idx)
    kpos, qpos = gathered_positions(idx, valid, kv_len, position_mode="compact")
    assert np.asarray(kpos).tolist() == list(range(12)) and int(qpos) == 11
    got_c = np.asarray(rope_sparse_attention(q, k, v, idx, valid, kv_len, position_mode="compact"))
    kr = np.stack([ref.rope(k[j], p) for p, j in enumerate(ii)])
    want_c = ref.attention(ref.rope(q, 11), kr, v[ii], list(range(12)))
    np.testing.assert_allclose(got_c, want_c, atol=1e-4, rtol=1e-4)
    got_o = np.asarray(rope_sparse_attention(q, k, v, idx, valid, kv_len, position_mode="original"))
    kr = np.stack([ref.rope(k[j], j) for j in ii])
    want_o = ref.attention(ref.rope(q, kv_len - 1), kr, v[ii], list(range(12)))
    np.testing.assert_allclose(got_o, want_o, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="position_mode"):
        rope_sparse_attention(q, k, v, idx, valid, kv_len, position_mode="absolute")


def test_scoring_query_is_rotation_to_n_local():
    q, _, _ = make(4)
    np.testing.assert_allclose(
        np.asarray(scoring_query(q, n_local=512)), ref.rope(q, 512), atol=1e-4, rtol=1e-4
    )
    # vmappable over a batch of queries with a leading axis
    qb = jnp.stack([q, 2 * q])
    out = jax.vmap(lambda x: scoring_query(x, n_local=3))(qb)
    np.testing.assert_allclose(np.asarray(out[1]), 2 * ref.rope(q, 3), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scaling", [None, LLAMA3])
def test_rope_table_gives_the_same_rotations_and_attention(scaling):
    """Reading a :func:`rope_table` instead of computing sines and cosines changes nothing: the
    table holds the same float32 angles' values, for apply_rope and the three RoPE attentions."""
    n, hq, hkv, d, c = 96, 6, 2, 16, 8
    rng = np.random.default_rng(3)
    k = rng.normal(size=(n, hkv, d)).astype(np.float32)
    v = rng.normal(size=(n, hkv, d)).astype(np.float32)
    q = rng.normal(size=(c, hq, d)).astype(np.float32)
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    kw = dict(theta=500.0, scaling=scaling)
    table = jax.jit(lambda: rope_table(n, d, **kw))()
    pos = jnp.array([0, 1, 17, 95])
    plain = jax.jit(lambda x: apply_rope(x, pos, **kw))(k[:4])
    read = jax.jit(lambda x, t: apply_rope(x, pos, **kw, table=t))(k[:4], table)
    np.testing.assert_allclose(np.asarray(read), np.asarray(plain), rtol=1e-6, atol=1e-6)

    start = 70
    causal = lambda q, k, v, t: rope_causal_attention(q, k, v, start, **kw, rope_table=t)
    np.testing.assert_allclose(
        np.asarray(jax.jit(causal)(q, k, v, table)),
        np.asarray(jax.jit(lambda q, k, v: causal(q, k, v, None))(q, k, v)),
        rtol=1e-5,
        atol=1e-6,
    )
    idx, valid = select_tokens(q[0], k, start, top_k=10, n_sink=2, n_local=4)
    for mode in ("compact", "original"):
        sparse = lambda t, mode=mode: rope_sparse_attention(
            q[0], k, v, idx, valid, start, position_mode=mode, **kw, rope_table=t
        )
        np.testing.assert_allclose(
            np.asarray(jax.jit(sparse)(table)), np.asarray(sparse(None)), rtol=1e-5, atol=1e-6
        )
        pre = lambda t, mode=mode: rope_prefill_attention(
            q, k[start : start + c], v[start : start + c], k, v, idx, valid, start,
            position_mode=mode, **kw, rope_table=t,
        )  # fmt: skip
        np.testing.assert_allclose(
            np.asarray(jax.jit(pre)(table)), np.asarray(pre(None)), rtol=1e-5, atol=1e-6
        )
