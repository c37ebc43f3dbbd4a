"""Bad input raises a ValueError naming the argument and the shapes/values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.attention import (
    cached_select,
    dense_attention,
    prefill_select,
    select_tokens,
    soft_vote,
    sparse_attention,
    token_scores,
)

q = jnp.zeros((8, 16))
k = jnp.zeros((64, 2, 16))
v = jnp.zeros((64, 2, 16))
B = dict(top_k=8, n_sink=4, n_local=4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: select_tokens(q[None], k, 10, **B), r"q must have rank 2 .*\(1, 8, 16\)"),
        (lambda: select_tokens(q, k[0], 10, **B), r"k must have rank 3 .*\(2, 16\)"),
        (lambda: select_tokens(jnp.zeros((7, 16)), k, 10, **B), r"Hq=7 .* multiple .*Hkv=2"),
        (lambda: select_tokens(jnp.zeros((8, 8)), k, 10, **B), r"head dims differ"),
        (lambda: select_tokens(q, k, 10, top_k=-1, n_sink=4, n_local=4), r"top_k must be >= 0"),
        (lambda: select_tokens(q, k, 10, top_k=60, n_sink=4, n_local=4), r"budget .* 68 .*N=64"),
        (lambda: select_tokens(q, k, 10.0, **B), r"kv_len must be an integer"),
        (lambda: select_tokens(q, k, jnp.float32(10), **B), r"kv_len must be an integer"),
        (lambda: select_tokens(q, k, jnp.array([3, 4]), **B), r"kv_len must be a scalar"),
        (lambda: select_tokens(q, k, 65, **B), r"kv_len=65 must lie in \[0, N=64\]"),
        (lambda: select_tokens(q, k, True, **B), r"kv_len must be an integer scalar"),
        (lambda: select_tokens(q, k, 10, top_k=2.0, n_sink=4, n_local=4), r"top_k must be"),
        (lambda: select_tokens(q, k, 10, vote_pool=0, **B), r"vote_pool"),
        (lambda: select_tokens(q, k, 10, gqa_mapping="x", **B), r"gqa_mapping"),
        (lambda: token_scores(q, k[:, :1, :8], 3), r"head dims differ"),
        (lambda: soft_vote(jnp.zeros((2, 5)), jnp.ones(4, bool)), r"mask must have shape"),
        (lambda: sparse_attention(q, k, v[:, :1], jnp.arange(3), jnp.ones(3, bool)), r"k and v"),
        (lambda: sparse_attention(q, k, v, jnp.arange(3), jnp.ones(4, bool)), r"valid must have"),
        (
            lambda: sparse_attention(q, k, v, jnp.zeros((4, 3), int), jnp.ones((4, 3), bool)),
            r"Hq=8",
        ),
        (
            lambda: sparse_attention(q, k, v, jnp.zeros(3), jnp.ones(3, bool)),
            r"indices must be integer",
        ),
        (lambda: dense_attention(q, k, v, 1.5), r"kv_len must be an integer"),
        (lambda: prefill_select(q, k, 10, **B), r"q_chunk must have rank 3"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_traced_kv_len_out_of_range_is_clipped():
    # a traced kv_len cannot be checked; values beyond N behave like N, never index out of range
    kk = jnp.asarray(np.random.default_rng(0).normal(size=k.shape), jnp.float32)
    qq = jnp.ones_like(q)
    for bad, good in ((99, 64), (-5, 0)):
        got = select_tokens(qq, kk, jnp.int32(bad), **B)
        want = select_tokens(qq, kk, good, **B)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_cached_select_checks_like_select_tokens():
    from jaxsel.attention import SelectionCacheState

    state = SelectionCacheState.init(q, **B)
    with pytest.raises(ValueError, match="budget"):
        cached_select(state, q, k, 10, top_k=70, n_sink=4, n_local=4)
    with pytest.raises(ValueError, match="q must have rank 2"):
        SelectionCacheState.init(q[0], **B)
