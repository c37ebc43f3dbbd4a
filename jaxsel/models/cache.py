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
import numpy as np

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


def sequence_partition_spec(axis: str = "seq") -> jax.sharding.PartitionSpec:
    """PartitionSpec that shards a cache array ``[B, L, N, Hkv, d]`` along its sequence (slot)
    axis: shard i holds slots ``[i N/P, (i + 1) N/P)``. Decode then runs the sequence-sharded
    attention of :mod:`jaxsel.attention.sequence` under ``shard_map``."""
    return jax.sharding.PartitionSpec(None, None, axis, None, None)


def _mesh_axes(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple | list) else (entry,)


def sharded_sequence_axis(cache_sharding: Any, config: DecoderConfig, cache_len: int) -> str | None:
    """Checks a ``NamedSharding`` of the ``[B, L, N, Hkv, d]`` cache and returns the mesh axis the
    SEQUENCE is sharded over (None if it is not).

    Raises:
      ValueError: a spec that is not 5-D; heads sharded over more devices than KV heads divide
        (a GQA group would be split across devices); a sequence axis that does not divide
        ``cache_len``; the sequence sharded over several mesh axes or together with the batch,
        layer or head axes (not supported).
    """
    if cache_sharding is None:
        return None
    spec, mesh = getattr(cache_sharding, "spec", None), getattr(cache_sharding, "mesh", None)
    if spec is None or mesh is None:
        raise ValueError(f"cache_sharding must be a NamedSharding, got {cache_sharding!r}")
    spec = tuple(spec) + (None,) * (5 - len(spec))
    if len(spec) != 5:
        raise ValueError(f"cache_sharding.spec must describe [B, L, N, Hkv, d], got {spec}")
    size = lambda axes: int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))
    heads = _mesh_axes(spec[3])
    if heads and config.num_kv_heads % size(heads):
        raise ValueError(
            f"cache_sharding splits the KV heads over {size(heads)} devices (mesh axes {heads}) "
            f"but num_kv_heads={config.num_kv_heads} is not a multiple: a GQA group of "
            f"{config.num_heads // config.num_kv_heads} query heads would be split"
        )
    seq = _mesh_axes(spec[2])
    if not seq:
        return None
    if len(seq) > 1 or any(_mesh_axes(spec[i]) for i in (0, 1, 3, 4)):
        raise ValueError(
            f"sequence sharding takes one mesh axis and no other sharded cache axis, got {spec}"
        )
    if cache_len % size(seq):
        raise ValueError(
            f"cache_len={cache_len} is not divisible by the {size(seq)} shards of mesh axis "
            f"{seq[0]!r}; pass a cache_len that is a multiple of {size(seq)}"
        )
    return seq[0]
