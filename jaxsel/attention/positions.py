"""Rotary position embeddings and TokenSelect's position handling for length extrapolation.

RoPE (Su et al., arXiv:2104.09864) in the rotate-half layout of Llama / Hugging Face: for a vector
``x = [x1, x2]`` (halves of d) at position m, with inverse frequencies ``w_i = theta^(-2i/d)``,

    rope(x, m) = x * cos(m w') + rotate_half(x) * sin(m w'),   rotate_half(x) = [-x2, x1],

where ``w' = [w, w]``. Llama-3 ("llama3") and linear rope scaling rescale ``w`` as in HF configs.

TokenSelect (arXiv:2411.02886) caches K *without* RoPE and rotates the gathered tokens at attention
time, either at their original positions (``position_mode="original"``: exact standard RoPE) or at
compacted positions ``0..n_valid-1`` (``"compact"``, the authors' choice: relative distances never
exceed the budget, so a model extrapolates beyond its training length). For scoring, the query is
rotated to position ``n_local`` against the unrotated keys, as the authors' code does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsel.attention import _checks
from jaxsel.attention._common import block_attention, chunk_rows, compute_dtype, unchunk_rows
from jaxsel.attention.prefill import chunk_attention
from jaxsel.attention.sparse import sparse_attention

POSITION_MODES = ("original", "compact")


def rope_frequencies(
    head_dim: int, *, theta: float = 10000.0, scaling: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Inverse frequencies ``w [head_dim // 2]`` (float32), with optional HF-style rope scaling.

    Args:
      head_dim: even rotary dimension d.
      theta: RoPE base.
      scaling: ``None`` or a Hugging Face ``rope_scaling`` dict: ``{"rope_type": "linear",
        "factor": f}`` (``w / f``) or ``{"rope_type": "llama3", "factor", "low_freq_factor",
        "high_freq_factor", "original_max_position_embeddings"}`` (Llama 3.1: low frequencies
        divided by ``factor``, high ones kept, a smooth blend between). ``"type"`` is accepted for
        ``"rope_type"``; ``"default"`` means none.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim=}")
    # Computed in float64 and rounded to float32 once, so every machine gets the same correctly
    # rounded frequencies (NumPy's and torch's float32 `pow` are vectorised per CPU and can be 1-2
    # ulp off, which made the frequencies differ between machines in the last bit).
    inv = 1.0 / (float(theta) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling is None:
        return inv.astype(np.float32)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv.astype(np.float32)
    if kind == "linear":
        return (inv / float(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        # Long wavelengths (low frequency) are interpolated by `factor`, short ones kept; between
        # the two thresholds the frequency is a linear blend in old_len / wavelen.
        smooth = np.clip((old_len / wavelen - low) / (high - low), 0.0, 1.0)
        scaled = (1 - smooth) * inv / factor + smooth * inv
        return scaled.astype(np.float32)
    raise ValueError(
        f"unsupported rope scaling {kind!r} in scaling={dict(scaling)}; "
        "supported: None, 'default', 'linear', 'llama3'"
    )


RopeTable = tuple[jax.Array, jax.Array]


def rope_table(
    n: int, head_dim: int, *, theta: float = 10000.0, scaling: Mapping[str, Any] | None = None
) -> RopeTable:
    """``(cos, sin)``, each ``[n, head_dim // 2]`` float32: RoPE's angles ``m w_i`` for positions
    ``m < n``, computed as :func:`apply_rope` computes them (so reading them is exact).

    A decoder computes one table per forward and every layer reads it: rotating a long cache's keys
    otherwise evaluates ``n * d`` sines and cosines per layer, which on CPU costs as much as the
    attention products.
    """
    inv = jnp.asarray(rope_frequencies(head_dim, theta=theta, scaling=scaling))
    ang = jnp.arange(n, dtype=jnp.float32)[:, None] * inv
    return jnp.cos(ang), jnp.sin(ang)


def rotate_half(x: jax.Array) -> jax.Array:
    """``[x1, x2] -> [-x2, x1]`` over the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(
    x: jax.Array,
    positions: jax.Array | int,
    *,
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
    table: RopeTable | None = None,
) -> jax.Array:
    """Rotates ``x [..., d]`` by RoPE at ``positions`` (rotate-half layout, Llama/HF convention).

    Args:
      x: ``[..., d]``, e.g. ``[T, H, d]`` or ``[Hq, d]``.
      positions: integer or float array whose shape is a *prefix* of ``x.shape[:-1]`` (a scalar for
        one token, ``[T]`` for ``x [T, H, d]``, ``[B, T]`` for ``x [B, T, H, d]``); it is broadcast
        over the remaining axes.
      theta, scaling: see :func:`rope_frequencies`.
      table: ``(cos, sin)`` from :func:`rope_table` for these ``theta, scaling``: the angles'
        cosines and sines are read from it (integer ``positions`` inside it) instead of computed.
        The same numbers, without the transcendental functions that dominate a long cache's
        rotation.

    Returns:
      Same shape and dtype as ``x``; angles and products in f32.
    """
    d = x.shape[-1]
    positions = jnp.asarray(positions)
    lead = x.shape[:-1]
    if positions.shape != lead[: positions.ndim]:
        raise ValueError(
            f"positions.shape={positions.shape} must be a prefix of x.shape[:-1]={lead} "
            f"(x.shape={x.shape})"
        )
    bcast = positions.shape + (1,) * (len(lead) - positions.ndim) + (d // 2,)
    if table is not None:
        cos, sin = (t[positions].reshape(bcast) for t in table)
    else:
        inv = jnp.asarray(rope_frequencies(d, theta=theta, scaling=scaling))
        pos = positions.astype(jnp.float32).reshape(bcast[:-1])
        ang = pos[..., None] * inv  # [..., d/2]: each angle's sine and cosine are computed once
        cos, sin = jnp.cos(ang), jnp.sin(ang)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def scoring_query(
    q: jax.Array,
    *,
    n_local: int,
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
) -> jax.Array:
    """The selection query of the authors' code: ``q [..., Hq, d]`` rotated to position n_local.

    Scored against unrotated cached keys, this is a query ``n_local`` tokens away from every key, the
    typical distance of a selected token from the local window.
    """
    return apply_rope(q, jnp.asarray(n_local, jnp.int32), theta=theta, scaling=scaling)


def gathered_positions(
    indices: jax.Array,
    valid: jax.Array,
    kv_len: jax.Array | int,
    *,
    position_mode: str = "compact",
) -> tuple[jax.Array, jax.Array]:
    """RoPE positions for gathered keys ``[B]`` and for the current query (the last valid token).

    - ``"original"``: keys at ``indices``, query at ``kv_len - 1``.
    - ``"compact"``: keys at ``0..B-1`` (valid entries come first and are sorted, so the valid ones
      get ``0..n_valid-1`` in order), query at ``n_valid - 1``.
    """
    if position_mode not in POSITION_MODES:
        raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {position_mode!r}")
    if position_mode == "original":
        return indices.astype(jnp.int32), jnp.asarray(kv_len, jnp.int32) - 1
    n_valid = jnp.sum(valid.astype(jnp.int32), axis=-1)
    return jnp.broadcast_to(
        jnp.arange(indices.shape[-1], dtype=jnp.int32), indices.shape
    ), n_valid - 1


def rope_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    kv_len: jax.Array | int,
    *,
    position_mode: str = "compact",
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
    rope_table: RopeTable | None = None,
    scale: float | None = None,
    gqa_mapping: str = "group",
    adaptive_temperature: bool = False,
) -> jax.Array:
    """:func:`sparse_attention` over a cache of *unrotated* keys, RoPE applied after the gather.

    Args:
      q: ``[Hq, d]`` unrotated query of the current token (token ``kv_len - 1``, already cached).
      k, v: ``[N, Hkv, d]``; ``k`` without RoPE.
      indices, valid: a shared ``[B]`` selection (e.g. :func:`select_tokens`).
      kv_len: number of valid cached tokens.
      position_mode: ``"original"`` (exactly standard RoPE attention over the gathered tokens) or
        ``"compact"`` (positions 0..n_valid-1, the authors' length extrapolation).
      rope_table: :func:`rope_table` covering every position used (the same result, faster).

    Returns:
      ``[Hq, d]``.
    """
    _checks.check_rank(indices, 1, "indices", "[B] (shared selection)")
    kpos, qpos = gathered_positions(indices, valid, kv_len, position_mode=position_mode)
    kr = apply_rope(k[indices], kpos, theta=theta, scaling=scaling, table=rope_table)
    qr = apply_rope(q, qpos, theta=theta, scaling=scaling, table=rope_table)
    # The rotated keys are already gathered: attend over them in order.
    b = indices.shape[0]
    return sparse_attention(
        qr,
        kr,
        v[indices],
        jnp.arange(b, dtype=jnp.int32),
        valid,
        scale=scale,
        gqa_mapping=gqa_mapping,
        adaptive_temperature=adaptive_temperature,
    )


def prefill_positions(
    indices: jax.Array, valid: jax.Array, kv_len: jax.Array | int, c: int, position_mode: str
) -> tuple[jax.Array, jax.Array]:
    """RoPE positions of a prefill chunk's gathered past keys ``[B]`` and its ``c`` tokens: in
    ``"original"`` mode the keys at ``indices`` and chunk token i at ``kv_len + i``; in
    ``"compact"`` mode the keys at ``0..B-1`` and chunk token i at ``n_valid + i``."""
    if position_mode not in POSITION_MODES:
        raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {position_mode!r}")
    if position_mode == "original":
        kpos, start = indices.astype(jnp.int32), jnp.asarray(kv_len, jnp.int32)
    else:
        kpos = jnp.arange(indices.shape[0], dtype=jnp.int32)
        start = jnp.sum(valid.astype(jnp.int32))
    return kpos, start + jnp.arange(c, dtype=jnp.int32)


def rope_prefill_attention(
    q_chunk: jax.Array,
    k_chunk: jax.Array,
    v_chunk: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    kv_len: jax.Array | int,
    *,
    position_mode: str = "compact",
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
    rope_table: RopeTable | None = None,
    scale: float | None = None,
    chunk_len: jax.Array | int | None = None,
    gqa_mapping: str = "group",
    adaptive_temperature: bool = False,
) -> jax.Array:
    """:func:`jaxsel.attention.chunk_attention` with RoPE applied after the gather.

    The chunk's tokens follow the ``kv_len`` past tokens: in ``"original"`` mode past keys sit at
    ``indices`` and chunk token i at ``kv_len + i``; in ``"compact"`` mode past keys at
    ``0..n_valid-1`` and chunk token i at ``n_valid + i``. ``q_chunk``, ``k_chunk`` and ``k`` are
    unrotated. ``rope_table``: :func:`rope_table` covering every position used (faster, the same
    result).
    """
    _checks.check_rank(indices, 1, "indices", "[B] (shared selection)")
    kpos, cpos = prefill_positions(indices, valid, kv_len, q_chunk.shape[0], position_mode)
    rot = lambda x, p: apply_rope(x, p, theta=theta, scaling=scaling, table=rope_table)
    return chunk_attention(
        rot(q_chunk, cpos),
        rot(k_chunk, cpos),
        v_chunk,
        rot(k[indices], kpos),
        v[indices],
        valid,
        scale=scale,
        chunk_len=chunk_len,
        gqa_mapping=gqa_mapping,
        adaptive_temperature=adaptive_temperature,
    )


def rope_causal_attention(
    q_chunk: jax.Array,
    k: jax.Array,
    v: jax.Array,
    start: jax.Array | int,
    *,
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
    rope_table: RopeTable | None = None,
    scale: float | None = None,
    gqa_mapping: str = "group",
    block_kv: int = 512,
    k_offset: jax.Array | int = 0,
    return_partial: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
    """Dense causal attention of C new queries over a cache of unrotated keys, block by block.

    Query i of the chunk sits at position ``start + i`` and attends to the cached tokens
    ``0 .. start + i`` (the chunk already written at ``start ..``), all at their original RoPE
    positions:

        o_i = sum_{j <= start + i} softmax_j(scale * R(start + i) q_i . R(j) k_j) v_j.

    The keys are visited in blocks of ``block_kv`` with an online softmax (running max and sum,
    Milakov & Gimelshein 2018; the flash-attention recurrence), and only the blocks that hold live
    tokens are visited (a loop of ``ceil((start + C) / block_kv)`` trips, ``start`` traced), so the
    cost is that of causal attention over the live prefix, not over the cache's static length.
    Each block's keys are rotated as they are read.

    Args:
      q_chunk: ``[C, Hq, d]`` unrotated queries.
      k, v: ``[N, Hkv, d]`` cache (keys without RoPE) holding at least ``start + C`` tokens.
      start: number of tokens before the chunk: a Python int (static: the block loop is a scan,
        differentiable) or a traced integer scalar (a while loop over the live blocks only).
      theta, scaling: RoPE (see :func:`rope_frequencies`).
      rope_table: :func:`rope_table` of at least ``start + C`` positions for the same RoPE: the
        blocks' rotations read it (the same result, without per-layer sines and cosines).
      scale: logit scale, ``None`` for ``1/sqrt(d)``.
      block_kv: keys per block (static; capped at N).
      k_offset: global position of ``k[0]`` (a shard of a sequence-sharded cache: only its keys
        at positions ``<= start + i`` are visited).
      return_partial: return the unnormalised flash-attention state instead, per query and head
        ``(m, l, acc)``: ``[C, Hq]`` running max (the f32 minimum where no key was live), ``[C,
        Hq]`` sum and ``[C, Hq, d]`` accumulator, for
        :func:`jaxsel.attention.sequence.combine_partials`.

    Returns:
      ``[C, Hq, d]`` float32 (or the partial state).
    """
    _checks.check_qk(q_chunk, k, q_name="q_chunk", q_layout="[C, Hq, d]")
    _checks.check_kv(k, v)
    _checks.check_gqa_mapping(gqa_mapping)
    _checks.check_positive_int(block_kv, "block_kv")
    c, hq, d = q_chunk.shape
    n, hkv, _ = k.shape
    static_offset = isinstance(k_offset, int | np.integer)
    if c > n and static_offset and int(k_offset) == 0:  # (a shard may hold fewer than C keys)
        raise ValueError(f"q_chunk has C={c} queries, more than the cache holds (N={n})")
    g = hq // hkv
    bk = min(block_kv, n)
    scale = _checks.resolve_scale(scale, d)
    static_start = isinstance(start, int | np.integer)
    start = int(start) if static_start else jnp.asarray(start, jnp.int32)
    q_pos = start + jnp.arange(c, dtype=jnp.int32)
    rot = lambda x, p: apply_rope(x, p, theta=theta, scaling=scaling, table=rope_table)
    qr = (rot(q_chunk, q_pos).astype(jnp.float32) * scale).astype(compute_dtype(q_chunk, k))
    qg = chunk_rows(qr, hkv, gqa_mapping)
    q_pos_rows = jnp.tile(q_pos, g)  # row r = (head g, query c) of qg

    def load_block(j):
        # The last block is shifted back to fit the cache; tokens an earlier block already
        # covered are masked out of it.
        b0 = jnp.minimum(j * bk, n - bk)
        k_row = b0 + jnp.arange(bk, dtype=jnp.int32)
        k_pos = k_offset + k_row
        kb = rot(jax.lax.dynamic_slice_in_dim(k, b0, bk, axis=0), k_pos)
        vb = jax.lax.dynamic_slice_in_dim(v, b0, bk, axis=0)
        live = (k_row[None, :] >= j * bk) & (k_pos[None, :] <= q_pos_rows[:, None])
        return kb, vb, live

    # A static start gives a static trip count: fori_loop lowers to a scan, which reverse-mode
    # differentiation supports (a traced one lowers to a while loop, which it does not).
    if static_offset and int(k_offset) == 0:
        n_blocks = (start + c + bk - 1) // bk
    else:  # the blocks of this shard that hold live tokens (a traced trip count)
        live_rows = jnp.clip(start + c - jnp.asarray(k_offset, jnp.int32), 0, n)
        n_blocks = (live_rows + bk - 1) // bk
    m, l, acc = block_attention(qg, load_block, n_blocks)
    rows = lambda x: unchunk_rows(x, c, gqa_mapping)
    if return_partial:
        return rows(m[..., None])[..., 0], rows(l[..., None])[..., 0], rows(acc)
    return rows(acc / l[..., None])
