"""Decode with parameters and KV cache sharded over heads on 4 virtual CPU devices, and with the
KV cache sharded along the sequence over 2, 4 and 8."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsel.models import DecoderConfig, TokenSelect, generate, init_cache, init_params
from jaxsel.models.cache import heads_partition_spec, sequence_partition_spec
from jaxsel.models.decoder import heads_param_specs
from jaxsel.models.generate import (
    decode_jit,
    prefill,
    prefill_arguments,
    prefill_jit,
    prefill_resume_jit,
    start_generation,
    stream_generate,
)

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


# ----------------------------------------------------------------- sequence-sharded KV cache
TS = TokenSelect(n_sink=2, top_k=6, n_local=6)
SEQ_KW = dict(max_new_tokens=8, cache_len=72, prefill_chunk=8)
SEQ_PROMPTS = [np.arange(3, 60) % 53, np.arange(7, 40) % 53]


def _seq_sharding(devices, n):
    return NamedSharding(Mesh(np.array(devices[:n]), ("seq",)), sequence_partition_spec())


@pytest.fixture(scope="module")
def seq_params():
    return init_params(jax.random.key(1), CFG)


@pytest.mark.parametrize(
    ("policy", "n_shards"),
    [
        ("dense", 2),
        (TS, 2),
        (dataclasses.replace(TS, cache_threshold=0.5), 8),  # with the Selection Cache
        (dataclasses.replace(TS, position_mode="original", vote_pool=3), 4),
    ],
    ids=["dense-2", "tokenselect-2", "selection-cache-8", "original-pool3-4"],
)
def test_sequence_sharded_decode_matches_one_device(cpu_devices, seq_params, policy, n_shards):
    """Prefill and decode under shard_map with the cache split along the sequence: the same
    tokens (greedy) and Selection Cache hits as one device."""
    kw = dict(policy=policy, return_hit_rate=True, **SEQ_KW)
    single = generate(seq_params, CFG, SEQ_PROMPTS, **kw)
    sharding = _seq_sharding(cpu_devices, n_shards)
    got = generate(seq_params, CFG, SEQ_PROMPTS, cache_sharding=sharding, **kw)
    np.testing.assert_array_equal(got[0], single[0])
    np.testing.assert_array_equal(got[1], single[1])
    if policy != "dense":  # the selection changes the answer, so the test would see a wrong one
        dense = generate(seq_params, CFG, SEQ_PROMPTS, policy="dense", **SEQ_KW)
        assert not np.array_equal(dense, single[0])
    if getattr(policy, "cache_threshold", None) is not None:
        assert single[1].max() > 0  # the cache did hit


def test_sequence_sharded_cache_stays_split(cpu_devices, seq_params):
    sharding = _seq_sharding(cpu_devices, 4)
    policy, state = start_generation(
        seq_params, CFG, SEQ_PROMPTS, policy=TS, cache_sharding=sharding, **SEQ_KW
    )
    _, state = decode_jit(
        seq_params, state, jax.random.key(0), config=CFG, policy=policy, n_steps=2,
        cache_sharding=sharding,
    )  # fmt: skip
    assert state.k.sharding.is_equivalent_to(sharding, state.k.ndim)
    assert state.k.addressable_shards[0].data.shape[2] == SEQ_KW["cache_len"] // 4


def test_bad_cache_sharding_raises_clear_errors(cpu_devices, seq_params):
    run = lambda sharding, **kw: generate(
        seq_params, CFG, SEQ_PROMPTS, cache_sharding=sharding, **{"policy": TS, **SEQ_KW, **kw}
    )
    with pytest.raises(ValueError, match="cache_len=70 is not divisible by the 4 shards"):
        run(_seq_sharding(cpu_devices, 4), cache_len=70)
    with pytest.raises(ValueError, match="sequence sharding supports the dense and TokenSelect"):
        run(_seq_sharding(cpu_devices, 2), policy="quest")
    mesh8 = Mesh(np.array(cpu_devices[:8]), ("heads",))
    with pytest.raises(ValueError, match="num_kv_heads=4 is not a multiple: a GQA group"):
        run(NamedSharding(mesh8, heads_partition_spec()))
    mesh2d = Mesh(np.array(cpu_devices[:4]).reshape(2, 2), ("seq", "heads"))
    with pytest.raises(ValueError, match="sequence sharding takes one mesh axis"):
        run(NamedSharding(mesh2d, PartitionSpec(None, None, "seq", "heads", None)))


def test_sequence_sharded_prefill_fills_each_shard_without_gathering_the_cache(
    cpu_devices, seq_params
):
    """The prefill runs under shard_map too: the same cache as one device (to float32 rounding),
    and the compiled program never gathers the cache."""
    _, args, static = prefill_arguments(SEQ_PROMPTS, policy=TS, **SEQ_KW)
    sharding = _seq_sharding(cpu_devices, 4)
    single = prefill_jit(seq_params, *args, config=CFG, **static)
    lowered = prefill_jit.lower(seq_params, *args, config=CFG, cache_sharding=sharding, **static)
    sharded = prefill_jit(seq_params, *args, config=CFG, cache_sharding=sharding, **static)
    assert sharded.k.sharding.is_equivalent_to(sharding, sharded.k.ndim)
    np.testing.assert_allclose(np.asarray(sharded.k), np.asarray(single.k), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sharded.v), np.asarray(single.v), rtol=1e-5, atol=1e-5)
    assert not _gathers_the_cache(lowered.compile().as_text(), SEQ_KW["cache_len"], 4)


def _gathers_the_cache(hlo, cache_len, n_shards):
    """Whether a collective of the compiled program carries the cache: its length or a shard's
    among the result dims (what is gathered by design is [Hq]-sized statistics, top-k proposals
    and [C, Hq, d + 2] partials)."""
    shapes = re.findall(
        r"= \(?\w+\[([\d,]*)\][^=\n]*? (?:all-gather|all-reduce|collective-permute|all-to-all)", hlo
    )
    assert shapes, "no collective found: the regex or the program changed"
    dims = [{int(x) for x in shape.split(",") if x} for shape in shapes]
    return any({cache_len, cache_len // n_shards} & d for d in dims)


@pytest.mark.parametrize("policy", ["dense", TS])
def test_prefill_chunks_larger_than_a_shard(cpu_devices, seq_params, policy):
    """32-token prefill chunks over 8 shards of 9 slots: each chunk spans several shards."""
    kw = dict(SEQ_KW, prefill_chunk=32, policy=policy)
    single = generate(seq_params, CFG, SEQ_PROMPTS, **kw)
    got = generate(seq_params, CFG, SEQ_PROMPTS, cache_sharding=_seq_sharding(cpu_devices, 8), **kw)
    np.testing.assert_array_equal(got, single)


def test_resumed_prefill_and_streaming_keep_the_cache_split(cpu_devices, seq_params):
    """prefill_resume_jit on a sequence-sharded prefix equals the full sharded prefill and never
    gathers the cache; stream_generate decodes with the sharded loop."""
    sharding = _seq_sharding(cpu_devices, 4)
    kw = dict(max_new_tokens=4, cache_len=48, prefill_chunk=8, policy=TS)
    base = np.arange(3, 44) % 53  # 41 tokens + 4 new fit 48
    other = base.copy()
    other[29:] = (other[29:] * 7 + 1) % 53  # differs from token 29 on: chunk 3 of 8 tokens
    _, args_b, static = prefill_arguments([base], **kw)
    _, args_o, _ = prefill_arguments([other], **kw)
    prefix = prefill_jit(seq_params, *args_b, config=CFG, cache_sharding=sharding, **static)
    full = prefill_jit(seq_params, *args_o, config=CFG, cache_sharding=sharding, **static)
    resume = dict(config=CFG, cache_sharding=sharding, **static)
    first = jax.numpy.int32(29 // 8)
    resumed = prefill_resume_jit(seq_params, prefix, *args_o, first, **resume)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.k.sharding.is_equivalent_to(sharding, resumed.k.ndim)
    hlo = prefill_resume_jit.lower(seq_params, prefix, *args_o, first, **resume).compile()
    assert not _gathers_the_cache(hlo.as_text(), 48, 4)
    streamed = list(stream_generate(seq_params, CFG, other, cache_sharding=sharding, **kw))
    want = generate(seq_params, CFG, [other], **kw)[0]
    np.testing.assert_array_equal(streamed, want)
