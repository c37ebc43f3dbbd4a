"""Preallocated key/value cache of static length.

Layout ``[B, L, N, Hkv, d]``: batch first (the pure functions work on one sequence and are vmapped
over it), then layer, slot, KV head, head dim. Keys are stored WITHOUT RoPE so the attention policy
picks positions at attention time (original or compacted; see :mod:`jaxsel.models.policies`).

Batches of prompts of different lengths are RIGHT-padded: sequence b's token t lives in slot t, and
``length[b]`` counts its valid slots; slots ``>= length[b]`` are padding that attention never reads
and that the next decode step overwrites.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsel.models.config import DecoderConfig


class KVCache(NamedTuple):
    """k, v ``[B, L, N, Hkv, d]``; length ``[B]`` int32 (valid slots per sequence)."""

    k: jax.Array
    v: jax.Array
    length: jax.Array

    @property
    def capacity(self) -> int:
        return self.k.shape[2]


def init_cache(
    config: DecoderConfig, batch: int, cache_len: int, *, dtype: Any = jnp.float32
) -> KVCache:
    """An empty cache for ``batch`` sequences of at most ``cache_len`` tokens."""
    if batch < 1 or cache_len < 1:
        raise ValueError(f"batch and cache_len must be >= 1, got {batch=}, {cache_len=}")
    shape = (batch, config.num_layers, cache_len, config.num_kv_heads, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))


def heads_partition_spec(axis: str = "heads") -> jax.sharding.PartitionSpec:
    """PartitionSpec that shards a cache array ``[B, L, N, Hkv, d]`` over its KV-head axis."""
    return jax.sharding.PartitionSpec(None, None, None, axis, None)
