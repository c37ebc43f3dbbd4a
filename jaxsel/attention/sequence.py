"""Sequence-sharded TokenSelect: the KV cache split along its sequence axis over a mesh axis.

A million-token cache does not fit one device; its tokens can be spread over P devices. Run these
functions inside ``jax.shard_map`` over a mesh axis ``axis_name`` of size P where each shard ``i``
holds the contiguous global tokens ``[i n, (i + 1) n)`` of an ``N = P n`` cache (``k, v
[n, Hkv, d]``); the query, ``kv_len`` and every output are replicated. One decode step of
TokenSelect (Wu et al., arXiv:2411.02886) then needs three small collectives:

1. **Global log-sum-exp.** Each shard scores its own keys, ``s_h[j] = scale q_h . k_{g(h)}[j]``,
   and over its middle candidates computes per head ``m_i = max_j s_h[j]`` and
   ``z_i = sum_j exp(s_h[j] - m_i)``. One all-gather of ``[P, 2, Hq]`` numbers gives every shard
   ``m = max_i m_i`` and ``Z = sum_i z_i exp(m_i - m)``, so the soft vote of its tokens is
   ``vote[j] = sum_h exp(s_h[j] - m_h) / Z_h``, the single-device vote.
2. **Exact global top-k.** Each shard ranks its candidates (optionally max-pooled over
   ``vote_pool`` neighbours, with a halo from the adjacent shards by ``ppermute``) and proposes
   its local top ``k' = min(top_k, n)`` with global indices; one all-gather of ``[P, 2, k']``
   (values, and indices bit-cast to float32), and the top-k of those ``P k'`` proposals is the
   global top-k: every token of the
   global top-k is in its own shard's top-k' (a shard contributes at most ``top_k``), and ties go
   to the lower global index because the proposals are laid out shard by shard, each in the order
   ``lax.top_k`` returns (value, then ascending index).
3. **Flash-decoding combine.** Each shard attends over the selected tokens it holds, giving per
   head a partial maximum ``m_i``, normaliser ``l_i`` and unnormalised output ``o_i``; one
   all-gather of ``[P, Hq, d + 2]`` numbers and
   ``o = sum_i exp(m_i - m) o_i / sum_i exp(m_i - m) l_i``.

Every shard computes the merged results from the same gathered numbers in the same order, so the
replicated outputs agree bit for bit across shards. Against one device (finite keys): the scores
agree up to the rounding of the dot products (XLA may block a shard's ``[n]`` product differently
from the whole ``[N]`` one), the maximum is then exact, and ``Z`` differs by the order of a
float32 sum (a few units in the last place, the same factor for all of a head's tokens), so the
selected indices are the single-device ones unless the k-th and (k+1)-th votes lie within that
rounding; tokens with equal votes (equal keys) tie identically. The attention output agrees to
float32 tolerance (the combine reorders a sum). A NaN key inside ``kv_len`` poisons every
normaliser, on one device as here, and the two answers then differ (both meaningless).

Bytes each shard receives per decode step and layer (float32 / int32 payloads):
``(P - 1) (2 Hq 4 + k' 8 + Hq (d + 2) 4)``, plus ``(vote_pool - 1) 4`` of halo with pooling
(:func:`collective_bytes`). Dense attention (:func:`sequence_rope_dense_attention`) needs only the combine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsel.attention import _checks
from jaxsel.attention._common import chunk_scores, chunk_values, ungroup_heads
from jaxsel.attention._sequence_select import (  # noqa: F401 (re-exported)
    Selection,
    _check_sharded,
    axis_size,
    global_logsumexp,
    merge_top_k,
    sequence_select,
    sequence_soft_votes,
    shard_offset,
)
from jaxsel.attention.positions import (
    POSITION_MODES,
    apply_rope,
    gathered_positions,
    prefill_positions,
    rope_causal_attention,
)
from jaxsel.attention.prefill import _chunk_mask


# ----------------------------------------------------------------------------- attention
def partial_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    scale: float,
    gqa_mapping: str = "group",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One shard's share of softmax attention over the keys where ``mask`` is true.

    ``q [Hq, d]`` with ``mask [M]``, or a chunk ``q [C, Hq, d]`` with ``mask [C, M]``;
    ``k, v [M, Hkv, d]``. Returns per query and head ``m = max_j s_j`` (``-inf`` if none),
    ``l = sum_j exp(s_j - m)`` and ``o = sum_j exp(s_j - m) v_j`` (f32; ``v`` is zeroed where no
    query may read it, so padding holding NaN cannot leak).
    """
    if q.ndim == 2:
        parts = partial_attention(q[None], k, v, mask[None], scale=scale, gqa_mapping=gqa_mapping)
        return tuple(x[0] for x in parts)
    s = chunk_scores(q, k, gqa_mapping) * jnp.float32(scale)  # [Hkv, G, C, M]
    s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1)
    e = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0)[..., None])
    vv = jnp.where(jnp.any(mask, axis=0)[:, None, None], v, jnp.zeros((), v.dtype))
    rows = lambda x: ungroup_heads(jnp.moveaxis(x, 2, 0)[..., None], gqa_mapping)[..., 0]
    return rows(m), rows(jnp.sum(e, axis=-1)), chunk_values(e, vv, gqa_mapping)


def combine_partials(m: jax.Array, l: jax.Array, o: jax.Array, axis_name: str) -> jax.Array:
    """Flash-decoding combine of every shard's :func:`partial_attention` (``m, l [..., Hq]``,
    ``o [..., Hq, d]``): ONE all-gather of ``[P, ..., Hq, d + 2]``, then
    ``sum_i exp(m_i - m) o_i / sum_i exp(m_i - m) l_i`` (0 for a head with no key anywhere).
    Every shard returns the same f32 result."""
    st = lax.all_gather(jnp.concatenate([m[..., None], l[..., None], o], axis=-1), axis_name)
    ms, ls, os_ = st[..., 0], st[..., 1], st[..., 2:]
    mg = jnp.max(ms, axis=0)
    mg = jnp.where(jnp.isfinite(mg), mg, 0.0)
    w = jnp.where(jnp.isfinite(ms), jnp.exp(ms - mg), 0.0)
    den = jnp.sum(ls * w, axis=0)
    return jnp.sum(os_ * w[..., None], axis=0) / jnp.where(den > 0, den, 1.0)[..., None]


def _owned(indices: jax.Array, valid: jax.Array, n: int, axis_name: str) -> tuple[Any, Any]:
    """This shard's local row of each global index (clipped) and whether it holds it."""
    local = indices.astype(jnp.int32) - shard_offset(n, axis_name)
    mine = valid.astype(bool) & (local >= 0) & (local < n)
    return jnp.clip(local, 0, n - 1), mine


def sequence_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    *,
    axis_name: str,
    scale: float | None = None,
    gqa_mapping: str = "group",
) -> jax.Array:
    """:func:`jaxsel.attention.sparse_attention` with ``k, v [n, Hkv, d]`` sharded along the
    sequence: each shard attends over the selected tokens it holds, then
    :func:`combine_partials`. ``indices, valid [B]`` are global and replicated.

    Returns ``[Hq, d]`` in ``result_type(q, v)``, replicated.
    """
    n, _ = _check_sharded(q, k, axis_name)
    _checks.check_kv(k, v)
    _checks.check_indices(indices, valid)
    scale = _checks.resolve_scale(scale, q.shape[-1])
    local, mine = _owned(indices, valid, n, axis_name)
    parts = partial_attention(q, k[local], v[local], mine, scale=scale, gqa_mapping=gqa_mapping)
    return combine_partials(*parts, axis_name).astype(jnp.result_type(q.dtype, v.dtype))


def sequence_rope_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    kv_len: jax.Array | int,
    *,
    axis_name: str,
    position_mode: str = "compact",
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
    scale: float | None = None,
    gqa_mapping: str = "group",
) -> jax.Array:
    """:func:`jaxsel.attention.rope_sparse_attention` (unrotated keys, RoPE after the gather) with
    the cache sharded along the sequence. The positions come from the global selection, so both
    ``"compact"`` and ``"original"`` modes give the single-device logits."""
    n, _ = _check_sharded(q, k, axis_name)
    _checks.check_kv(k, v)
    _checks.check_indices(indices, valid)
    if position_mode not in POSITION_MODES:
        raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {position_mode!r}")
    kpos, qpos = gathered_positions(indices, valid, kv_len, position_mode=position_mode)
    local, mine = _owned(indices, valid, n, axis_name)
    kr = apply_rope(k[local], kpos, theta=theta, scaling=scaling)
    qr = apply_rope(q, qpos, theta=theta, scaling=scaling)
    scale = _checks.resolve_scale(scale, q.shape[-1])
    parts = partial_attention(qr, kr, v[local], mine, scale=scale, gqa_mapping=gqa_mapping)
    return combine_partials(*parts, axis_name).astype(jnp.result_type(q.dtype, v.dtype))


def sequence_rope_dense_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_len: jax.Array | int,
    *,
    axis_name: str,
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
    scale: float | None = None,
    gqa_mapping: str = "group",
) -> jax.Array:
    """Dense decode attention of the query at position ``kv_len - 1`` over all ``kv_len`` cached
    (unrotated) keys, sharded along the sequence: :func:`sequence_rope_causal_attention` of a
    one-token chunk (each shard attends over its own live keys, then :func:`combine_partials`)."""
    out = sequence_rope_causal_attention(
        q[None], k, v, jnp.asarray(kv_len, jnp.int32) - 1, axis_name=axis_name, theta=theta,
        scaling=scaling, scale=scale, gqa_mapping=gqa_mapping,
    )  # fmt: skip
    return out[0].astype(jnp.result_type(q.dtype, v.dtype))


def sequence_rope_causal_attention(
    q_chunk: jax.Array,
    k: jax.Array,
    v: jax.Array,
    start: jax.Array | int,
    *,
    axis_name: str,
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
    scale: float | None = None,
    gqa_mapping: str = "group",
    block_kv: int = 512,
) -> jax.Array:
    """:func:`jaxsel.attention.rope_causal_attention` (a prefill chunk at ``start..start+C-1``,
    written into the cache, over every token up to itself) with the cache sharded along the
    sequence: each shard runs the blocked online softmax over its own live keys, then
    :func:`combine_partials`. ``[C, Hq, d]`` f32, replicated."""
    n, _ = _check_sharded(q_chunk[0], k, axis_name)
    parts = rope_causal_attention(
        q_chunk, k, v, start, theta=theta, scaling=scaling, scale=scale,
        gqa_mapping=gqa_mapping, block_kv=block_kv, k_offset=shard_offset(n, axis_name),
        return_partial=True,
    )  # fmt: skip
    return combine_partials(*parts, axis_name)


def sequence_rope_prefill_attention(
    q_chunk: jax.Array,
    k_chunk: jax.Array,
    v_chunk: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    kv_len: jax.Array | int,
    *,
    axis_name: str,
    position_mode: str = "compact",
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
    scale: float | None = None,
    chunk_len: jax.Array | int | None = None,
    gqa_mapping: str = "group",
) -> jax.Array:
    """:func:`jaxsel.attention.rope_prefill_attention` with the cache sharded along the sequence.

    The chunk attends over the selected past tokens (global ``indices``, each read by the shard
    that holds it) and causally over itself; the chunk's own keys (replicated) are counted on
    shard 0 only, so one :func:`combine_partials` gives the single-device softmax. Positions as
    :func:`rope_prefill_attention`. ``[C, Hq, d]`` in ``result_type(q_chunk, v_chunk)``.
    """
    n, _ = _check_sharded(q_chunk[0], k, axis_name)
    _checks.check_kv(k, v)
    _checks.check_indices(indices, valid)
    c = q_chunk.shape[0]
    kpos, cpos = prefill_positions(indices, valid, kv_len, c, position_mode)
    rot = lambda x, p: apply_rope(x, p, theta=theta, scaling=scaling)
    local, mine = _owned(indices, valid, n, axis_name)
    kk = jnp.concatenate([rot(k[local], kpos), rot(k_chunk, cpos).astype(k.dtype)])
    vv = jnp.concatenate([v[local], v_chunk.astype(v.dtype)])
    own_chunk = _chunk_mask(c, chunk_len) & (lax.axis_index(axis_name) == 0)
    mask = jnp.concatenate([jnp.broadcast_to(mine, (c, mine.shape[0])), own_chunk], axis=1)
    scale = _checks.resolve_scale(scale, q_chunk.shape[-1])
    parts = partial_attention(
        rot(q_chunk, cpos), kk, vv, mask, scale=scale, gqa_mapping=gqa_mapping
    )
    out = combine_partials(*parts, axis_name)
    return out.astype(jnp.result_type(q_chunk.dtype, v_chunk.dtype))


def collective_bytes(
    *, n_shards: int, num_heads: int, head_dim: int, top_k: int, n_local_tokens: int,
    vote_pool: int = 1,
) -> dict[str, int]:  # fmt: skip
    """Analytic bytes each shard RECEIVES per decode step and layer (f32 / int32 payloads), by
    collective: the log-sum-exp gather, the top-k merge, the attention combine and the halo."""
    p, kp = n_shards, min(top_k, n_local_tokens)
    out = {
        "logsumexp": (p - 1) * 2 * num_heads * 4 if top_k else 0,
        "topk_merge": (p - 1) * kp * 8 if top_k else 0,
        "combine": (p - 1) * num_heads * (head_dim + 2) * 4,
        "halo": ((vote_pool - 1) // 2 + vote_pool // 2) * 4 if p > 1 and top_k else 0,
    }
    out["total"] = sum(out.values())
    return out
