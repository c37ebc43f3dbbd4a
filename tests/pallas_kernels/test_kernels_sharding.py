"""KV cache sharded over heads on 4 virtual CPU devices: ``token_select(axis_name=...)`` sums the
votes with a collective and every shard selects what one device selects; the sparse decode
attention then runs per shard on its own heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels import sparse_decode_attention, token_select
from pallas_kernels.token_select import BlockSizes

KW = dict(top_k=24, n_sink=4, n_local=8)


@pytest.mark.parametrize(
    "implementation,interpret",
    [("xla", False), pytest.param("mosaic_tpu", True, marks=pytest.mark.slow)],
)
def test_head_sharded_equals_single_device(cpu_devices, implementation, interpret):
    mesh = Mesh(np.array(cpu_devices[:4]), ("heads",))
    rng = np.random.default_rng(0)
    hq, hkv, n, d = 16, 4, 256, 16
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in ((hq, d), (n, hkv, d), (n, hkv, d)))
    ops = dict(implementation=implementation, interpret=interpret)
    bs = BlockSizes(block_kv=128, block_vote=256) if implementation != "xla" else None

    def step(q, k, v, n_, axis_name=None):
        idx, ok = token_select(q, k, n_, axis_name=axis_name, block_sizes=bs, **KW, **ops)
        return idx, ok, sparse_decode_attention(q, k, v, idx, ok, **ops)

    kv = jnp.int32(200)
    want = jax.jit(step)(q, k, v, kv)
    sharded = jax.jit(
        jax.shard_map(
            lambda q, k, v, n_: step(q, k, v, n_, axis_name="heads"),
            mesh=mesh,
            in_specs=(P("heads", None), P(None, "heads", None), P(None, "heads", None), P()),
            out_specs=(P(), P(), P("heads", None)),
            # Pallas kernels (interpreted or not) need check_vma=False under shard_map in jax 0.10.
            check_vma=implementation == "xla",
        )
    )
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
    got = sharded(
        put(q, P("heads", None)), put(k, P(None, "heads", None)), put(v, P(None, "heads", None)), kv
    )
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    np.testing.assert_allclose(np.asarray(got[2]), np.asarray(want[2]), atol=1e-6)
    # Without the collective a shard would select from its own heads' votes only.
    alone = jax.jit(lambda q, k: token_select(q, k, kv, **KW, **ops, block_sizes=bs))(
        q[:4], k[:, :1]
    )
    assert not np.array_equal(np.asarray(alone[0]), np.asarray(want[0]))
