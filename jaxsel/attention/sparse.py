"""Attention of one decode step over gathered tokens, and the dense reference.

``o_h = sum_{j in S} softmax_j(scale * q_h . k_{g(h)}[j]) v_{g(h)}[j]`` where S is the selected set
(:func:`sparse_attention`) or all valid tokens (:func:`dense_attention`). ``scale=None`` means
``1/sqrt(d)``. Products run in the cache dtype with f32 accumulation; softmax in f32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsel.attention import _checks
from jaxsel.attention._common import kv_head_of
from jaxsel.attention.temperature import adaptive_temperature_softmax
from pallas_kernels._xla_math import gathered_attention, head_scores, head_values, masked_softmax
from pallas_kernels.sparse_decode.api import sparse_decode_attention


def attention_probs(
    logits: jax.Array, mask: jax.Array, *, adaptive_temperature: bool = False
) -> jax.Array:
    """Masked softmax over the last axis, or its adaptive-temperature version (arXiv:2410.01104)."""
    if adaptive_temperature:
        return adaptive_temperature_softmax(logits, axis=-1, where=mask)
    return masked_softmax(logits, mask, axis=-1)


def sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    *,
    scale: float | None = None,
    gqa_mapping: str = "group",
    adaptive_temperature: bool = False,
    implementation: str = "xla",
) -> jax.Array:
    """Attention of each query head over the gathered tokens ``k[indices], v[indices]`` only.

    Args:
      q: ``[Hq, d]``.
      k, v: ``[N, Hkv, d]`` caches.
      indices: ``[B]`` int (one set shared by all heads, e.g. from :func:`select_tokens`) or
        ``[Hq, B]`` (one set per query head, e.g. from :func:`per_head_select`). Must lie in
        ``[0, N)``; entries with ``valid`` false may point anywhere in range and get zero weight.
      valid: bool, shape of ``indices``.
      scale: logit scale, ``None`` for ``1/sqrt(d)``.
      gqa_mapping: "group" or "modulo" (see :func:`token_scores`).
      adaptive_temperature: use :func:`adaptive_temperature_softmax` instead of softmax.
      implementation: ``"xla"`` (this function) or ``"pallas"``
        (:func:`pallas_kernels.sparse_decode_attention`, flash-decoding over the set; shared
        ``[B]`` indices and plain softmax only); other names are passed to it as is.

    Returns:
      ``[Hq, d]`` in ``result_type(q, v)``; zeros for a head with no valid entry.
    """
    hq, _, d = _checks.check_qk(q, k)
    _checks.check_kv(k, v)
    _checks.check_indices(indices, valid, hq)
    _checks.check_gqa_mapping(gqa_mapping)
    if implementation != "xla":
        if indices.ndim != 1 or adaptive_temperature:
            raise ValueError(
                f"implementation={implementation!r} supports shared [B] indices and plain softmax "
                f"only, got indices.shape={indices.shape}, {adaptive_temperature=}"
            )
        out = sparse_decode_attention(
            q,
            k,
            v,
            indices,
            valid,
            scale=scale,
            gqa_mapping=gqa_mapping,
            implementation=None if implementation == "pallas" else implementation,
        )
        return out.astype(jnp.result_type(q.dtype, v.dtype))
    scale = _checks.resolve_scale(scale, d)
    if indices.ndim == 1:
        return gathered_attention(
            q, k, v, indices, valid, scale=scale, gqa_mapping=gqa_mapping,
            probs=lambda s, mask: attention_probs(s, mask, adaptive_temperature=adaptive_temperature),
        )  # fmt: skip
    # Per-head sets; invalid entries' values are zeroed as gathered_attention does (0 * NaN).
    valid = valid.astype(bool)
    kvh = jnp.asarray(kv_head_of(hq, k.shape[1], gqa_mapping))[:, None]
    kk, vv = k[indices, kvh], v[indices, kvh]  # [Hq, B, d]
    vv = jnp.where(valid[:, :, None], vv, jnp.zeros((), v.dtype))
    s = jnp.einsum("hd,hbd->hb", q.astype(kk.dtype), kk, preferred_element_type=jnp.float32)
    p = attention_probs(s * scale, valid, adaptive_temperature=adaptive_temperature)
    o = jnp.einsum("hb,hbd->hd", p.astype(vv.dtype), vv, preferred_element_type=jnp.float32)
    return o.astype(jnp.result_type(q.dtype, v.dtype))


def dense_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_len: jax.Array | int,
    *,
    scale: float | None = None,
    gqa_mapping: str = "group",
    adaptive_temperature: bool = False,
) -> jax.Array:
    """Reference decode attention of ``q [Hq, d]`` over the ``kv_len`` valid tokens of ``k, v``.

    Padding slots (``>= kv_len``) get zero weight; their values must be finite (a zero-initialised
    cache is), since masking all of ``v`` would cost a pass over the cache.

    Returns ``[Hq, d]`` in ``result_type(q, v)``; zeros when ``kv_len == 0``.
    """
    _checks.check_qk(q, k)
    _checks.check_kv(k, v)
    kv_len = _checks.check_kv_len(kv_len, k.shape[0])
    _checks.check_gqa_mapping(gqa_mapping)
    out_dtype = jnp.result_type(q.dtype, v.dtype)
    scale = _checks.resolve_scale(scale, q.shape[-1])
    s = head_scores(q, k, gqa_mapping) * scale
    mask = jnp.broadcast_to(jnp.arange(k.shape[0])[None, :] < kv_len, s.shape)
    p = attention_probs(s, mask, adaptive_temperature=adaptive_temperature)
    return head_values(p, v, gqa_mapping).astype(out_dtype)


def adaptive_temperature_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_len: jax.Array | int,
    *,
    scale: float | None = None,
    gqa_mapping: str = "group",
) -> jax.Array:
    """:func:`dense_attention` with adaptive-temperature softmax (arXiv:2410.01104).

    For the sparse variant pass ``adaptive_temperature=True`` to :func:`sparse_attention`.
    """
    return dense_attention(
        q, k, v, kv_len, scale=scale, gqa_mapping=gqa_mapping, adaptive_temperature=True
    )
