"""KV cache sharded along the SEQUENCE over 2, 4 and 8 virtual CPU devices
(:mod:`jaxsel.attention.sequence`): the same selected indices as one device, ties included, and
the attention output to a float32 rounding bound derived from the data."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _bounds import EXP_ERR, U, attention_diff_bound, vote_diff_bound, votes64
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxsel.attention import (
    SelectionCacheState,
    cached_select,
    middle_candidates,
    prefill_select,
    rope_causal_attention,
    rope_prefill_attention,
    rope_sparse_attention,
    select_tokens,
    sequence_rope_causal_attention,
    sequence_rope_dense_attention,
    sequence_rope_prefill_attention,
    sequence_rope_sparse_attention,
    sequence_select,
    sequence_sparse_attention,
    sparse_attention,
)
from jaxsel.attention.sequence import collective_bytes

HQ, HKV, N, D = 8, 2, 512, 16
BUDGET = dict(n_sink=4, n_local=8)


def _data(seed=0, dtype=np.float32, n_planted=160):
    """Random q, k, v where the query heads share a component and ``n_planted`` tokens spread over
    the whole cache carry a graded multiple of it, so the votes near any top-k boundary below
    ``n_planted`` are well separated (see :func:`_assert_separated`); the rest is noise."""
    rng = np.random.default_rng(seed)
    q = (rng.normal(size=D) + 0.5 * rng.normal(size=(HQ, D))).astype(np.float32)
    k = 0.3 * rng.normal(size=(N, HKV, D))
    v = rng.normal(size=(N, HKV, D))
    planted = rng.choice(np.arange(4, N), size=n_planted, replace=False)
    grades = rng.permutation(np.linspace(0.5, 3.0, n_planted))
    direction = q.mean(0) / np.linalg.norm(q.mean(0))  # every head leans on it (either mapping)
    k[planted] += grades[:, None, None] * direction
    return q, k.astype(dtype), v.astype(dtype)


def _sharded_step(devices, n_shards, *, top_k, vote_pool=1, gqa_mapping="group"):
    mesh = Mesh(np.array(devices[:n_shards]), ("seq",))

    def step(q, k, v, kv_len):
        kw = dict(top_k=top_k, vote_pool=vote_pool, gqa_mapping=gqa_mapping, **BUDGET)
        idx, valid = sequence_select(q, k, kv_len, axis_name="seq", **kw)
        out = sequence_sparse_attention(
            q, k, v, idx, valid, axis_name="seq", gqa_mapping=gqa_mapping
        )
        return idx, valid, out

    return jax.jit(
        jax.shard_map(
            step,
            mesh=mesh,
            in_specs=(P(), P("seq"), P("seq"), P()),
            out_specs=(P(), P(), P()),
            check_vma=False,
        )
    )


def _single_step(q, k, v, kv_len, top_k, vote_pool, gqa_mapping):
    idx, valid = select_tokens(
        q, k, kv_len, top_k=top_k, vote_pool=vote_pool, gqa_mapping=gqa_mapping, **BUDGET
    )
    return idx, valid, sparse_attention(q, k, v, idx, valid, gqa_mapping=gqa_mapping)


_single = jax.jit(_single_step, static_argnames=("top_k", "vote_pool", "gqa_mapping"))


def _assert_separated(q, k, kv_len, *, top_k, vote_pool, gqa_mapping, n_shards):
    """The precondition of exact equality, checked in float64: every ranked vote is either equal
    to the k-th largest (a tie, broken by index in both programs) or further from it than the two
    float32 evaluations can move it (the sharded normaliser adds a rescaling by exp and P terms)."""
    cand = np.asarray(middle_candidates(N, kv_len, n_local=BUDGET["n_local"], n_sink=4))
    votes = votes64(q, k, cand, gqa_mapping)
    extra = EXP_ERR + (n_shards + 1) * U
    bound = vote_diff_bound(q, k, cand, gqa_mapping, extra_rel=extra)
    left, right = (vote_pool - 1) // 2, vote_pool // 2

    def pooled(x):
        padded = np.pad(np.where(cand, x, -np.inf), (left, right), constant_values=-np.inf)
        return np.lib.stride_tricks.sliding_window_view(padded, vote_pool).max(-1)[cand]

    ranked, slack = pooled(votes), pooled(bound)
    order = np.argsort(-ranked, kind="stable")
    kth, kth_slack = ranked[order[top_k - 1]], slack[order[top_k - 1]]
    near = np.abs(ranked - kth) <= slack + kth_slack
    assert np.all(ranked[near] == kth), "test data too close to a tie for an exact comparison"


CASES = [  # (n_shards, top_k, vote_pool, gqa_mapping)
    (2, 40, 1, "group"),
    (4, 40, 1, "modulo"),
    (8, 40, 1, "group"),
    (8, 100, 1, "group"),  # top_k above the 64 tokens of a shard: each proposes all of its own
    (2, 40, 4, "modulo"),  # pooling: a halo of 1 left / 2 right from the neighbouring shards
    (8, 40, 3, "group"),
]


@pytest.mark.parametrize(("n_shards", "top_k", "vote_pool", "gqa_mapping"), CASES)
def test_sequence_sharded_selection_equals_single_device(
    cpu_devices, n_shards, top_k, vote_pool, gqa_mapping
):
    q, k, v = _data()
    sharded = _sharded_step(
        cpu_devices, n_shards, top_k=top_k, vote_pool=vote_pool, gqa_mapping=gqa_mapping
    )
    for kv_len in (500, 300, 40):  # sparse, sparse, dense (kv_len is traced: one compilation)
        if kv_len > top_k + 12:
            _assert_separated(
                q, k, kv_len, top_k=top_k, vote_pool=vote_pool, gqa_mapping=gqa_mapping,
                n_shards=n_shards,
            )  # fmt: skip
        got = sharded(q, k, v, jnp.int32(kv_len))
        want = _single(q, k, v, jnp.int32(kv_len), top_k, vote_pool, gqa_mapping)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        extra = EXP_ERR + (n_shards + 2) * U  # the combine's rescaling and its P-term sums
        bound = attention_diff_bound(q, k, v, *map(np.asarray, want[:2]), gqa_mapping, extra)
        np.testing.assert_array_less(np.abs(np.asarray(got[2], np.float64) - want[2]), bound)


def test_ties_across_shards_go_to_the_lower_index(cpu_devices):
    """Keys repeat with period 3, so every vote is one of three values and the top-k boundary
    cuts through a tie group spread over all shards: both programs keep its lowest indices."""
    q, k, v = _data(1)
    k = np.tile(k[:3], (N // 3 + 1, 1, 1))[:N]
    top_k = 100
    got = _sharded_step(cpu_devices, 8, top_k=top_k)(q, k, v, jnp.int32(N))
    want = _single(q, k, v, jnp.int32(N), top_k, 1, "group")
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    middle = np.asarray(got[0])[4 : 4 + top_k]
    assert len(np.unique(middle // (N // 8))) > 1  # the kept tokens come from several shards
    # within the winning residue class, the kept ones are a prefix (the lowest indices)
    for r in np.unique(middle % 3):
        kept = middle[middle % 3 == r]
        first = np.arange(len(kept)) * 3 + kept[0]
        np.testing.assert_array_equal(kept, first)


def test_bf16_cache_and_large_logits_stay_finite_and_equal(cpu_devices):
    q, k, v = _data(2, dtype=jnp.bfloat16)
    q = q * 1e3  # very sharp per-head distributions
    got = _sharded_step(cpu_devices, 4, top_k=40)(q, k, v, jnp.int32(N))
    want = _single(q, k, v, jnp.int32(N), 40, 1, "group")
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    assert got[2].dtype == jnp.float32 and np.all(np.isfinite(np.asarray(got[2])))
    np.testing.assert_allclose(np.asarray(got[2]), np.asarray(want[2]), rtol=1e-2, atol=1e-2)


def test_selection_cache_on_a_sequence_sharded_cache(cpu_devices):
    """cached_select(seq_axis=...) hits and misses as on one device and returns its indices."""
    mesh = Mesh(np.array(cpu_devices[:4]), ("seq",))
    q, k, _ = _data(3)
    kw = dict(top_k=40, threshold=0.9, **BUDGET)

    def run(select, q_seq):
        st = SelectionCacheState.init(q_seq[0], top_k=40, **BUDGET)
        outs = []
        for t, qt in enumerate(q_seq):
            idx, _, st, hit = select(st, qt, 400 + t)
            outs.append((np.asarray(idx), bool(hit)))
        return outs

    rng = np.random.default_rng(4)
    q_seq = [q + 0.05 * t * rng.normal(size=q.shape).astype(np.float32) for t in range(3)]
    q_seq.append(-q)  # a query that moved: a miss
    single = jax.jit(lambda st, qt, n: cached_select(st, qt, k, jnp.int32(n), **kw))
    sharded_fn = jax.jit(
        jax.shard_map(
            lambda st, qt, kk, n: cached_select(st, qt, kk, n, seq_axis="seq", **kw),
            mesh=mesh,
            in_specs=(P(), P(), P("seq"), P()),
            out_specs=P(),
            check_vma=False,
        )
    )
    sharded = lambda st, qt, n: sharded_fn(st, qt, k, jnp.int32(n))
    want, got = run(single, q_seq), run(sharded, q_seq)
    assert [h for _, h in want] == [False, True, True, False]
    for (gi, gh), (wi, wh) in zip(got, want, strict=True):
        np.testing.assert_array_equal(gi, wi)
        assert gh == wh


def test_bad_input_raises_clear_errors(cpu_devices):
    q, k, _ = _data()
    with pytest.raises(ValueError, match="not a mesh axis in scope"):
        sequence_select(q, k, 100, axis_name="seq", top_k=8, **BUDGET)
    mesh = Mesh(np.array(cpu_devices[:8]), ("seq",))

    def call(fn):
        return jax.shard_map(
            fn, mesh=mesh, in_specs=(P(), P("seq")), out_specs=P(), check_vma=False
        )(q, k)

    with pytest.raises(ValueError, match="halo wider than a shard of 64 tokens"):
        call(
            lambda q, k: sequence_select(
                q, k, 500, axis_name="seq", top_k=8, vote_pool=130, **BUDGET
            )[0]
        )
    with pytest.raises(
        ValueError, match=r"larger than the global cache length N = 8 shards x 64 tokens = 512"
    ):
        call(lambda q, k: sequence_select(q, k, 500, axis_name="seq", top_k=600, **BUDGET)[0])
    with pytest.raises(ValueError, match=r"kv_len=600 must lie in \[0, N=512\]"):
        call(lambda q, k: sequence_select(q, k, 600, axis_name="seq", top_k=8, **BUDGET)[0])
    with pytest.raises(ValueError, match="runs the XLA sequence-sharded selection alone"):
        call(
            lambda q, k: select_tokens(
                q, k, 500, top_k=8, seq_axis="seq", implementation="pallas", **BUDGET
            )[0]
        )


# --------------------------------------------------- the RoPE variants the decoder runs, directly
ROPE = dict(theta=10000.0, scaling=None)


def _shard_rows(devices, n_shards, fn, n_sharded):
    """``fn`` under shard_map whose outputs come back one row per shard (``P("seq")``), so a
    disagreement between shards is visible instead of hidden behind ``out_specs=P()``."""
    mesh = Mesh(np.array(devices[:n_shards]), ("seq",))
    specs = (P("seq"),) * n_sharded
    return jax.jit(
        jax.shard_map(
            lambda *a: jax.tree.map(lambda x: x[None], fn(*a)),
            mesh=mesh,
            in_specs=(P(),) + specs + (P(),) * 3,
            out_specs=P("seq"),
            check_vma=False,
        )
    )


def _assert_rows_agree_and_match(rows, want, atol):
    rows = [np.asarray(r) for r in jax.tree.leaves(rows)]
    for r, w in zip(rows, jax.tree.leaves(want), strict=True):
        assert np.all(r == r[:1]), "the shards disagree on a replicated output"
        np.testing.assert_allclose(r[0], np.asarray(w), rtol=0, atol=atol)


# Outputs are softmax-weighted means of at most N standard-normal value rows (|v| < 5), summed in
# another order: |difference| <= 2 N u max|v| ~ 3e-4 for N = 512, u = 2^-24, far below any bug.
ATOL = 2 * N * 2.0**-24 * 5


@pytest.mark.parametrize("position_mode", ["compact", "original"])
def test_rope_sparse_and_dense_decode_attention_match_one_device(cpu_devices, position_mode):
    q, k, v = _data(5)
    kv_len = 450
    idx, valid = select_tokens(q, k, kv_len, top_k=40, **BUDGET)

    def step(q, k, v, idx, valid, n):
        sparse = sequence_rope_sparse_attention(
            q, k, v, idx, valid, n, axis_name="seq", position_mode=position_mode, **ROPE
        )
        return sparse, sequence_rope_dense_attention(q, k, v, n, axis_name="seq", **ROPE)

    rows = _shard_rows(cpu_devices, 8, step, 2)(q, k, v, idx, valid, jnp.int32(kv_len))
    qd = q[None]
    dense = jax.jit(lambda q, k, v: rope_causal_attention(q, k, v, kv_len - 1, **ROPE)[0])(qd, k, v)
    want = (
        rope_sparse_attention(q, k, v, idx, valid, kv_len, position_mode=position_mode, **ROPE),
        dense,
    )
    _assert_rows_agree_and_match(rows, want, ATOL)


@pytest.mark.parametrize("chunk_len", [None, 7])
def test_rope_prefill_and_causal_chunk_attention_match_one_device(cpu_devices, chunk_len):
    """A 12-token chunk at 250..261 straddles shards 3 and 4 (64 tokens each of 8); the chunk's
    own keys count once (on shard 0), the selected past wherever it lives."""
    _, k, v = _data(6)
    start, c = 250, 12
    rng = np.random.default_rng(7)
    qc = rng.normal(size=(c, HQ, D)).astype(np.float32)
    idx, valid = prefill_select(qc, k, start, top_k=40, chunk_len=chunk_len, **BUDGET)
    kc, vc = k[start : start + c], v[start : start + c]

    def step(qc, k, v, idx, valid, s):
        pre = sequence_rope_prefill_attention(
            qc, kc, vc, k, v, idx, valid, s, axis_name="seq", chunk_len=chunk_len, **ROPE
        )
        return pre, sequence_rope_causal_attention(qc, k, v, s, axis_name="seq", **ROPE)

    mesh_fn = _shard_rows(cpu_devices, 8, step, 2)
    rows = mesh_fn(qc, k, v, idx, valid, jnp.int32(start))
    want = (
        rope_prefill_attention(qc, kc, vc, k, v, idx, valid, start, chunk_len=chunk_len, **ROPE),
        rope_causal_attention(qc, k, v, start, **ROPE),
    )
    _assert_rows_agree_and_match(rows, want, ATOL)


def test_three_all_gathers_carry_the_bytes_collective_bytes_counts(cpu_devices):
    """The compiled decode step (selection + attention) holds exactly three all-gathers (the
    log-sum-exp, the packed top-k proposals, the combine) whose per-shard receive volume is
    collective_bytes'."""
    q, k, v = _data()
    p, top_k = 4, 40
    text = _sharded_step(cpu_devices, p, top_k=top_k).lower(q, k, v, jnp.int32(500))
    hlo = text.compile().as_text()
    found = re.findall(
        r"= (\w+)\[([\d,]*)\][^=\n]*? (all-gather|all-reduce|collective-permute)\(", hlo
    )
    assert [kind for *_, kind in found] == ["all-gather"] * 3, found
    width = {"f32": 4, "s32": 4}
    result = sum(width[t] * int(np.prod([int(x) for x in dims.split(",")])) for t, dims, _ in found)
    want = collective_bytes(
        n_shards=p, num_heads=HQ, head_dim=D, top_k=top_k, n_local_tokens=N // p
    )
    assert result * (p - 1) // p == want["total"]
