"""TokenSelect chunked prefill (arXiv:2411.02886): select once per chunk, attend causally.

The prompt is processed in chunks (the authors use 512 tokens). For a chunk of C queries after
``kv_len`` past tokens: select the past tokens once with the chunk's mean query,

    q_bar = mean_i q_chunk[i],   (indices, valid) = select_tokens(q_bar, k, kv_len, ...),

then each chunk query i attends to the selected past tokens and to the chunk tokens j <= i:

    o_i = attention(q_i, {k[indices]} U {k_chunk[j] : j <= i, j < chunk_len}).

When the budget covers the past this is exactly dense causal attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsel.attention import _checks
from jaxsel.attention._common import (
    block_attention,
    chunk_rows,
    chunk_scores,
    chunk_values,
    compute_dtype,
    unchunk_rows,
)
from jaxsel.attention.select import select_tokens
from jaxsel.attention.sparse import attention_probs


def _chunk_mask(c: int, chunk_len: jax.Array | int | None) -> jax.Array:
    i = jnp.arange(c)
    mask = i[None, :] <= i[:, None]
    if chunk_len is not None:
        mask &= i[None, :] < chunk_len
    return mask


def chunk_query(q_chunk: jax.Array, chunk_len: jax.Array | int | None = None) -> jax.Array:
    """The mean ``[Hq, d]`` float32 of the first ``chunk_len`` rows of ``q_chunk [C, Hq, d]``
    (all rows when ``None``): the one query a prefill chunk selects with."""
    c = q_chunk.shape[0]
    rows = jnp.ones((c,), bool) if chunk_len is None else jnp.arange(c) < chunk_len
    w = rows.astype(jnp.float32) / jnp.maximum(jnp.sum(rows), 1)
    return jnp.einsum("c,chd->hd", w, q_chunk.astype(jnp.float32))


def prefill_select(
    q_chunk: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    vote_pool: int = 1,
    gqa_mapping: str = "group",
    chunk_len: jax.Array | int | None = None,
    implementation: str = "xla",
    seq_axis: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One selection of past tokens for a whole prefill chunk, with the chunk's mean query.

    Args:
      q_chunk: ``[C, Hq, d]`` the chunk's (scoring) queries.
      k: ``[N, Hkv, d]`` key cache; only its first ``kv_len`` tokens (the past, before the chunk)
        are candidates, so the chunk may already be written at ``kv_len..kv_len+C-1``.
      kv_len: number of past tokens.
      chunk_len: number of real rows of ``q_chunk`` (the rest is padding); ``None`` = all C.
      top_k, n_sink, n_local, scale, vote_pool, gqa_mapping, implementation, seq_axis: as
        :func:`select_tokens`.

    Returns:
      ``(indices, valid)`` over the past, as :func:`select_tokens`.
    """
    _checks.check_qk(q_chunk, k, q_name="q_chunk", q_layout="[C, Hq, d]")
    q_bar = chunk_query(q_chunk, chunk_len)
    return select_tokens(
        q_bar,
        k,
        kv_len,
        top_k=top_k,
        n_sink=n_sink,
        n_local=n_local,
        scale=scale,
        vote_pool=vote_pool,
        gqa_mapping=gqa_mapping,
        implementation=implementation,
        seq_axis=seq_axis,
    )


def chunk_attention(
    q_chunk: jax.Array,
    k_chunk: jax.Array,
    v_chunk: jax.Array,
    k_past: jax.Array,
    v_past: jax.Array,
    past_valid: jax.Array,
    *,
    scale: float | None = None,
    chunk_len: jax.Array | int | None = None,
    gqa_mapping: str = "group",
    adaptive_temperature: bool = False,
    block_kv: int = 512,
) -> jax.Array:
    """Causal attention of a chunk over given past tokens plus itself.

    Args:
      q_chunk: ``[C, Hq, d]``; ``k_chunk``, ``v_chunk``: ``[C, Hkv, d]``.
      k_past, v_past: ``[B, Hkv, d]`` the past tokens every chunk query sees (already gathered and,
        with RoPE, already rotated); ``past_valid [B]`` bool masks them.
      chunk_len: real rows of the chunk (keys ``>= chunk_len`` are masked); ``None`` = all C.
      block_kv: keys per block of the online softmax (the softmax path; the adaptive
        temperature, which needs each row's entropy, materialises the ``[C, B + C]`` scores).

    Returns:
      ``[C, Hq, d]`` in ``result_type(q_chunk, v_chunk)``.
    """
    _checks.check_qk(q_chunk, k_chunk, q_name="q_chunk", q_layout="[C, Hq, d]")
    _checks.check_kv(k_chunk, v_chunk)
    _checks.check_kv(k_past, v_past)
    _checks.check_gqa_mapping(gqa_mapping)
    _checks.check_positive_int(block_kv, "block_kv")
    c = q_chunk.shape[0]
    if k_chunk.shape[0] != c:
        raise ValueError(
            f"q_chunk.shape={q_chunk.shape} and k_chunk.shape={k_chunk.shape} differ in C"
        )
    if past_valid.shape != k_past.shape[:1]:
        raise ValueError(f"past_valid.shape={past_valid.shape} must be [B]={k_past.shape[:1]}")
    scale = _checks.resolve_scale(scale, q_chunk.shape[-1])
    kk = jnp.concatenate([k_past, k_chunk.astype(k_past.dtype)], axis=0)
    vv = jnp.concatenate([v_past, v_chunk.astype(v_past.dtype)], axis=0)
    if not adaptive_temperature:
        return _blocked_chunk_attention(
            q_chunk, kk, vv, past_valid, scale=scale, chunk_len=chunk_len,
            gqa_mapping=gqa_mapping, block_kv=block_kv,
        ).astype(jnp.result_type(q_chunk.dtype, v_chunk.dtype))  # fmt: skip
    # The adaptive temperature needs each row's whole softmax (its entropy): materialise it.
    mask = jnp.concatenate(
        [
            jnp.broadcast_to(past_valid.astype(bool), (c, k_past.shape[0])),
            _chunk_mask(c, chunk_len),
        ],
        axis=1,
    )  # [C, B + C]

    s = chunk_scores(q_chunk, kk, gqa_mapping) * scale  # [Hkv, G, C, B + C]
    p = attention_probs(
        s, jnp.broadcast_to(mask, s.shape), adaptive_temperature=adaptive_temperature
    )
    o = chunk_values(p, vv, gqa_mapping)
    return o.astype(jnp.result_type(q_chunk.dtype, v_chunk.dtype))


def _blocked_chunk_attention(
    q_chunk, kk, vv, past_valid, *, scale, chunk_len, gqa_mapping, block_kv
):
    """:func:`chunk_attention` (softmax) over ``kk = [past; chunk]`` in key blocks of at most
    ``block_kv``.

    Key m is live for chunk query i when it is a valid past token (``m < B``) or a real chunk token
    at or before i (``m - B <= i``, ``m - B < chunk_len``). A query with no live key gets 0.
    """
    c, hq, _ = q_chunk.shape
    m_keys, hkv, _ = kk.shape
    g = hq // hkv
    b = m_keys - c
    n_blocks = -(-m_keys // block_kv)
    bk = -(-m_keys // n_blocks)  # even blocks: the shifted last one recomputes < n_blocks keys
    qs = (q_chunk.astype(jnp.float32) * scale).astype(compute_dtype(q_chunk, kk))
    qg = chunk_rows(qs, hkv, gqa_mapping)
    q_rows = jnp.tile(jnp.arange(c, dtype=jnp.int32), g)  # row r = (head g, query c) of qg
    in_chunk = jnp.ones((c,), bool) if chunk_len is None else jnp.arange(c) < chunk_len
    key_ok = jnp.concatenate([past_valid.astype(bool), in_chunk])
    key_order = jnp.concatenate(
        [jnp.full((b,), -1, jnp.int32), jnp.arange(c, dtype=jnp.int32)]
    )  # -1: a past token, seen by every query; i: chunk token i

    def load_block(j):
        b0 = jnp.minimum(j * bk, m_keys - bk)  # the last block shifted back; overlap masked
        rows = b0 + jnp.arange(bk, dtype=jnp.int32)
        ok = jax.lax.dynamic_slice_in_dim(key_ok, b0, bk) & (rows >= j * bk)
        order = jax.lax.dynamic_slice_in_dim(key_order, b0, bk)
        live = ok[None, :] & (order[None, :] <= q_rows[:, None])
        kb = jax.lax.dynamic_slice_in_dim(kk, b0, bk, axis=0)
        vb = jax.lax.dynamic_slice_in_dim(vv, b0, bk, axis=0)
        return kb, vb, live

    _, l, acc = block_attention(qg, load_block, n_blocks)
    o = acc / jnp.where(l > 0, l, 1.0)[..., None]
    return unchunk_rows(o, c, gqa_mapping)


def prefill_attention(
    q_chunk: jax.Array,
    k_chunk: jax.Array,
    v_chunk: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    *,
    scale: float | None = None,
    chunk_len: jax.Array | int | None = None,
    gqa_mapping: str = "group",
    adaptive_temperature: bool = False,
) -> jax.Array:
    """:func:`chunk_attention` over the past tokens ``k[indices], v[indices]`` (no RoPE here; see
    :func:`jaxsel.attention.rope_prefill_attention` for a cache of unrotated keys)."""
    _checks.check_rank(indices, 1, "indices", "[B]")
    return chunk_attention(
        q_chunk,
        k_chunk,
        v_chunk,
        k[indices],
        v[indices],
        valid,
        scale=scale,
        chunk_len=chunk_len,
        gqa_mapping=gqa_mapping,
        adaptive_temperature=adaptive_temperature,
    )
