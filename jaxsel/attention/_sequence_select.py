"""The selection half of :mod:`jaxsel.attention.sequence` (documented there): TokenSelect with
the keys sharded along the sequence over a mesh axis, inside ``shard_map``.

Kept apart from the attention half so that :func:`jaxsel.attention.select_tokens` can dispatch to
it without importing the RoPE and prefill modules (which import the selection).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsel.attention import _checks
from pallas_kernels import _xla_math

Selection = tuple[jax.Array, jax.Array]


def shard_offset(n_local: int, axis_name: str) -> jax.Array:
    """The global index of this shard's first token: ``axis_index(axis_name) * n_local``."""
    return lax.axis_index(axis_name).astype(jnp.int32) * n_local


def axis_size(axis_name: str) -> int:
    """The number of shards P along ``axis_name``; a clear error outside ``shard_map``."""
    if not isinstance(axis_name, str):
        raise ValueError(f"axis_name must be the name of a mesh axis (a str), got {axis_name!r}")
    try:
        return int(lax.axis_size(axis_name))
    except NameError as e:  # outside shard_map, or a name the mesh does not have
        raise ValueError(
            f"axis_name={axis_name!r} is not a mesh axis in scope: call the sequence-sharded "
            "functions inside jax.shard_map over a mesh with that axis"
        ) from e


def _check_sharded(q: Any, k: Any, axis_name: str) -> tuple[int, int]:
    """``(n_local, P)`` after checking the shapes; must run inside ``shard_map`` over the axis."""
    _checks.check_qk(q, k)
    return k.shape[0], axis_size(axis_name)


def global_logsumexp(x: jax.Array, axis_name: str) -> tuple[jax.Array, jax.Array]:
    """Per-row ``(m, Z)`` of the row-wise log-sum-exp of ``x [H, n]`` across the shards' columns.

    ``m = max`` over every shard's entries (0 where a row has none finite) and
    ``Z = sum exp(x - m)`` over every shard's entries, from ONE all-gather of ``[P, 2, H]``.
    """
    m = jnp.max(x, axis=-1)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    z = jnp.sum(jnp.exp(x - m_safe[:, None]), axis=-1)
    stats = lax.all_gather(jnp.stack([m, z]), axis_name)  # [P, 2, H]
    ms, zs = stats[:, 0], stats[:, 1]
    mg = jnp.max(ms, axis=0)
    mg = jnp.where(jnp.isfinite(mg), mg, 0.0)
    w = jnp.where(jnp.isfinite(ms), jnp.exp(ms - mg), 0.0)
    return mg, jnp.sum(zs * w, axis=0)


def sequence_soft_votes(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    axis_name: str,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    gqa_mapping: str = "group",
) -> tuple[jax.Array, jax.Array]:
    """This shard's ``(votes [n], candidates [n])``: TokenSelect's soft votes of its own tokens.

    ``vote[j] = sum_h exp(s_h[j] - m_h) / Z_h`` with the global ``(m, Z)`` of
    :func:`global_logsumexp` over all shards' middle candidates; 0 at non-candidates.
    """
    n, _ = _check_sharded(q, k, axis_name)
    pos = shard_offset(n, axis_name) + jnp.arange(n, dtype=jnp.int32)
    cand = (pos >= n_sink) & (pos < kv_len - n_local)
    s = _xla_math.head_scores(q, k, gqa_mapping) * jnp.float32(scale)
    x = jnp.where(cand[None, :], s, -jnp.inf)  # candidates lie below kv_len - n_local
    m, z = global_logsumexp(x, axis_name)
    p = jnp.exp(x - m[:, None]) / jnp.where(z > 0, z, 1.0)[:, None]
    return jnp.sum(p, axis=0), cand


def _pool_with_halo(x: jax.Array, vote_pool: int, axis_name: str, p: int) -> jax.Array:
    """Centred max-pool of ``x [n]`` (``-inf`` off candidates) over ``vote_pool`` global
    neighbours: the adjacent shards send their edge entries (``ppermute``), ``-inf`` past the ends."""
    left, right = (vote_pool - 1) // 2, vote_pool // 2
    i = lax.axis_index(axis_name)
    parts = []
    if left:
        prev = x[x.shape[0] - left :]
        if p > 1:
            prev = lax.ppermute(prev, axis_name, [(j, j + 1) for j in range(p - 1)])
        parts.append(jnp.where(i > 0, prev, -jnp.inf))
    parts.append(x)
    if right:
        nxt = x[:right]
        if p > 1:
            nxt = lax.ppermute(nxt, axis_name, [(j + 1, j) for j in range(p - 1)])
        parts.append(jnp.where(i < p - 1, nxt, -jnp.inf))
    ext = jnp.concatenate(parts)
    return lax.reduce_window(ext, -jnp.inf, lax.max, (vote_pool,), (1,), "VALID")


def merge_top_k(values: jax.Array, indices: jax.Array, top_k: int, axis_name: str) -> jax.Array:
    """The global top-k indices (ascending) from each shard's proposals ``values [k']`` (f32) and
    ``indices [k']`` (int32, global), in ``lax.top_k`` order: ONE all-gather of ``[P, 2, k']``
    (the indices travel bit-cast to float32, so values and indices share a collective)."""
    packed = jnp.stack([values, lax.bitcast_convert_type(indices.astype(jnp.int32), jnp.float32)])
    both = lax.all_gather(packed, axis_name)  # [P, 2, k']
    all_v = both[:, 0].reshape(-1)
    all_i = lax.bitcast_convert_type(both[:, 1], jnp.int32).reshape(-1)
    _, pos = lax.top_k(all_v, top_k)
    return jnp.sort(all_i[pos])


def sequence_select(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    axis_name: str,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    vote_pool: int = 1,
    gqa_mapping: str = "group",
) -> Selection:
    """:func:`jaxsel.attention.select_tokens` with the keys sharded along the sequence.

    Call inside ``shard_map`` over ``axis_name``; see the module docstring for the algorithm.

    Args:
      q: ``[Hq, d]`` scoring query (replicated).
      k: ``[n, Hkv, d]`` this shard's keys, global tokens ``[i n, (i + 1) n)``.
      kv_len: number of valid tokens of the whole cache (replicated; may be traced).
      axis_name: the mesh axis the sequence is sharded over.
      top_k, n_sink, n_local, scale, vote_pool, gqa_mapping: as :func:`select_tokens`; the budget
        must fit the global length ``N = P n`` and a pooling halo one shard.

    Returns:
      ``(indices, valid)`` over the GLOBAL cache, replicated, equal to the single-device selection
      (see the module docstring for the rounding caveat).
    """
    n, p = _check_sharded(q, k, axis_name)
    kv_len = _checks.check_kv_len(kv_len, n * p)
    budget = _checks.check_budget(top_k=top_k, n_sink=n_sink, n_local=n_local, n=None)
    if budget > n * p:
        raise ValueError(
            f"budget n_sink + top_k + n_local = {budget} is larger than the global cache length "
            f"N = {p} shards x {n} tokens = {n * p}"
        )
    _checks.check_positive_int(vote_pool, "vote_pool")
    _checks.check_gqa_mapping(gqa_mapping)
    if vote_pool // 2 > n:
        raise ValueError(f"vote_pool={vote_pool} needs a halo wider than a shard of {n} tokens")

    def sparse() -> Selection:
        middle = None
        if top_k > 0:
            votes, cand = sequence_soft_votes(
                q, k, kv_len, axis_name=axis_name, n_sink=n_sink, n_local=n_local,
                scale=scale, gqa_mapping=gqa_mapping,
            )  # fmt: skip
            lo, hi = jnp.finfo(jnp.float32).min, jnp.finfo(jnp.float32).max
            v = jnp.where(cand, jnp.nan_to_num(votes, nan=lo, posinf=hi, neginf=lo), -jnp.inf)
            if vote_pool > 1:
                v = jnp.where(cand, _pool_with_halo(v, vote_pool, axis_name, p), -jnp.inf)
            vals, local = lax.top_k(v, min(top_k, n))
            middle = merge_top_k(vals, local + shard_offset(n, axis_name), top_k, axis_name)
        return _xla_math.assemble(middle, kv_len, n_sink=n_sink, n_local=n_local)

    return _xla_math.budgeted(kv_len, budget, sparse)
