"""Decode with parameters and KV cache sharded over heads on 4 virtual CPU devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding

from jaxsel.models import DecoderConfig, TokenSelect, generate, init_cache, init_params
from jaxsel.models.cache import heads_partition_spec
from jaxsel.models.decoder import heads_param_specs
from jaxsel.models.generate import prefill

CFG = DecoderConfig(
    vocab_size=53,
    hidden_size=32,
    intermediate_size=40,
    num_layers=2,
    num_heads=8,
    num_kv_heads=4,
    qkv_bias=True,
)


@pytest.mark.parametrize("policy", ["dense", TokenSelect(n_sink=2, top_k=6, n_local=6)])
def test_head_sharded_decode_matches_one_device(cpu_devices, policy):
    mesh = Mesh(np.array(cpu_devices[:4]), ("heads",))
    params = init_params(jax.random.key(1), CFG)
    prompts = [np.arange(3, 40) % 53, np.arange(7, 30) % 53]
    kw = dict(max_new_tokens=8, cache_len=48, prefill_chunk=8, policy=policy)
    single = generate(params, CFG, prompts, **kw)
    specs = heads_param_specs(params)
    sharded_params = jax.tree.map(
        lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), params, specs
    )
    assert sharded_params["layers"][0]["wk"].sharding.spec == specs["layers"][0]["wk"]
    cache_sharding = NamedSharding(mesh, heads_partition_spec())
    got = generate(sharded_params, CFG, prompts, cache_sharding=cache_sharding, **kw)
    np.testing.assert_array_equal(got, single)


def test_prefill_keeps_the_cache_sharded_over_heads(cpu_devices):
    mesh = Mesh(np.array(cpu_devices[:4]), ("heads",))
    params = init_params(jax.random.key(1), CFG)
    sharding = NamedSharding(mesh, heads_partition_spec())
    cache = init_cache(CFG, 2, 32)
    cache = cache._replace(k=jax.device_put(cache.k, sharding), v=jax.device_put(cache.v, sharding))
    tokens = jax.numpy.arange(40, dtype=jax.numpy.int32).reshape(2, 20)
    out = jax.jit(
        lambda p, c: prefill(
            p,
            CFG,
            tokens,
            jax.numpy.array([20, 15]),
            c,
            n_tokens=19,
            chunk=8,
            policy=TokenSelect(n_sink=2, top_k=4, n_local=4),
        )
    )(params, cache)
    assert out.k.sharding.is_equivalent_to(sharding, out.k.ndim)
    assert out.k.addressable_shards[0].data.shape[3] == CFG.num_kv_heads // 4
    np.testing.assert_array_equal(np.asarray(out.length), [19, 15])
