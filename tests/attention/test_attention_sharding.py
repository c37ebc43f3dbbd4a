"""KV cache sharded over heads on 4 virtual CPU devices: same selection and outputs as one device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsel.attention import (
    middle_candidates,
    select_tokens,
    soft_vote,
    sparse_attention,
    token_scores,
)

B = dict(top_k=24, n_sink=4, n_local=8)

# Sharded and single-device programs compute the same float32 operations on different shapes, so
# XLA may order their sums differently; they agree to twice the rounding bound of one float32
# evaluation against exact arithmetic, derived below from the data (float64). u: unit roundoff.
U = 2.0**-24
EXP_ERR = 4 * U  # relative error of XLA's float32 exp (a few units at most)


def _softmax_rel_bound(q, kh, scale):
    """Per-row bound on the relative error of each float32 weight of softmax(scale * q . k).

    q [H, d], kh [H, M, d]: the M keys each head's row runs over. A dot product over d terms is
    off by at most d u sum_i |q_i k_i| (Higham's gamma_d); a weight moves by its own score's error
    plus at most the largest one (through the max and the normaliser); add the roundings of
    s - max (u |s - max|) and of exp, each in the weight and in the normaliser, of the M-term
    positive normaliser (M u) and of the division (u).
    """
    q, kh = np.asarray(q, np.float64), np.asarray(kh, np.float64)
    d, m = q.shape[-1], kh.shape[1]
    s = scale * np.einsum("hd,hmd->hm", q, kh)
    e_s = d * U * scale * np.einsum("hd,hmd->hm", np.abs(q), np.abs(kh))
    spread = s.max(-1) - s.min(-1)
    return 2 * e_s.max(-1) + 2 * U * spread + 2 * EXP_ERR + (m + 1) * U, s


def _heads_keys(k, rows, hq):
    """[Hq, len(rows), d]: the keys (group GQA mapping) of the given cache rows for each head."""
    k = np.asarray(k, np.float64)
    return k[rows][:, np.arange(hq) // (hq // k.shape[1])].transpose(1, 0, 2)


def _vote_diff_bound(q, k, cand):
    """Bound on |vote_a - vote_b| for two float32 evaluations of soft_vote(token_scores(q, k))."""
    cols = np.flatnonzero(np.asarray(cand))
    rel, s = _softmax_rel_bound(q, _heads_keys(k, cols, q.shape[0]), 1.0)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    vote = np.zeros(k.shape[0])
    bound = np.zeros(k.shape[0])
    vote[cols] = p.sum(0)
    # each head's weight, then the sum over H heads (H - 1 roundings of a positive sum)
    bound[cols] = (rel[:, None] * p).sum(0) + (q.shape[0] - 1) * U * vote[cols]
    return 2 * bound


def _attention_diff_bound(q, k, v, idx, valid):
    """Bound on |out_a - out_b| for two float32 evaluations of sparse_attention (default scale)."""
    hq, d = q.shape
    rows = np.asarray(idx)[np.asarray(valid)]
    rel, s = _softmax_rel_bound(q, _heads_keys(k, rows, hq), d**-0.5)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    absv = np.abs(_heads_keys(v, rows, hq))  # [Hq, B, d]
    # o = sum_j p_j v_j: the weights' error, then B products and B - 1 additions (gamma_B)
    return 2 * (rel[:, None] + len(rows) * U) * np.einsum("hb,hbd->hd", p, absv)


def step(q, k, v, kv_len, axis_name=None):
    idx, valid = select_tokens(q, k, kv_len, axis_name=axis_name, **B)
    return idx, valid, sparse_attention(q, k, v, idx, valid)


def test_head_sharded_selection_equals_single_device(cpu_devices):
    mesh = Mesh(np.array(cpu_devices[:4]), ("heads",))
    rng = np.random.default_rng(0)
    hq, hkv, n, d = 16, 4, 256, 16
    q = rng.normal(size=(hq, d)).astype(np.float32)
    k = rng.normal(size=(n, hkv, d)).astype(np.float32)
    v = rng.normal(size=(n, hkv, d)).astype(np.float32)
    single = jax.jit(step)
    sharded = jax.jit(
        jax.shard_map(
            lambda q, k, v, n_: step(q, k, v, n_, axis_name="heads"),
            mesh=mesh,
            in_specs=(P("heads", None), P(None, "heads", None), P(None, "heads", None), P()),
            out_specs=(P(), P(), P("heads", None)),
        )
    )
    qs = jax.device_put(q, NamedSharding(mesh, P("heads", None)))
    ks = jax.device_put(k, NamedSharding(mesh, P(None, "heads", None)))
    vs = jax.device_put(v, NamedSharding(mesh, P(None, "heads", None)))
    assert len(ks.sharding.device_set) == 4
    for kv_len in (200, 30):  # sparse, then dense (same compiled functions: kv_len is traced)
        kv = jnp.int32(kv_len)
        _check(sharded(qs, ks, vs, kv), single(q, k, v, kv), (q, k, v))
    # the collective matters: each shard's own heads would vote differently
    kv = jnp.int32(200)
    cand = middle_candidates(n, kv, n_sink=4, n_local=8)
    local = jax.jit(
        jax.shard_map(
            lambda q, k: soft_vote(token_scores(q, k, kv), cand)[None],
            mesh=mesh,
            in_specs=(P("heads", None), P(None, "heads", None)),
            out_specs=P("heads"),
        )
    )(qs, ks)
    total = soft_vote(token_scores(q, k, kv), cand)
    bound = _vote_diff_bound(q, k, cand)
    err = np.abs(np.asarray(local, np.float64).sum(0) - np.asarray(total))
    c = np.asarray(cand)
    np.testing.assert_array_less(err[c], bound[c])
    np.testing.assert_array_equal(err[~c], 0.0)  # non-candidates get no vote at all
    assert not np.allclose(np.asarray(local[0]) * 4, np.asarray(total), rtol=1e-2)


def _check(got, want, qkv):
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    bound = _attention_diff_bound(*qkv, np.asarray(want[0]), np.asarray(want[1]))
    np.testing.assert_array_less(np.abs(np.asarray(got[2], np.float64) - want[2]), bound)
    assert got[2].sharding.spec == P("heads", None)
