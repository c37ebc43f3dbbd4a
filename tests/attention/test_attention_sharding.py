"""KV cache sharded over heads on 4 virtual CPU devices: same selection and outputs as one device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _bounds import attention_diff_bound, vote_diff_bound
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
    bound = vote_diff_bound(q, k, cand)
    err = np.abs(np.asarray(local, np.float64).sum(0) - np.asarray(total))
    c = np.asarray(cand)
    np.testing.assert_array_less(err[c], bound[c])
    np.testing.assert_array_equal(err[~c], 0.0)  # non-candidates get no vote at all
    assert not np.allclose(np.asarray(local[0]) * 4, np.asarray(total), rtol=1e-2)


def _check(got, want, qkv):
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    bound = attention_diff_bound(*qkv, np.asarray(want[0]), np.asarray(want[1]))
    np.testing.assert_array_less(np.abs(np.asarray(got[2], np.float64) - want[2]), bound)
    assert got[2].sharding.spec == P("heads", None)
