"""GQA head mapping and masked softmax, shared by scoring and attention (private)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def kv_head_of(hq: int, hkv: int, gqa_mapping: str) -> np.ndarray:
    """``g(h)`` for every query head: ``h // (Hq/Hkv)`` ("group") or ``h % Hkv`` ("modulo")."""
    h = np.arange(hq)
    return h // (hq // hkv) if gqa_mapping == "group" else h % hkv


def compute_dtype(q: jax.Array, k: jax.Array) -> jnp.dtype:
    # Products run in the cache's dtype with f32 accumulation, so a bf16 cache is never copied to f32
    # (that copy would double the bytes a bandwidth-bound decode step moves).
    return jnp.dtype(k.dtype)


def head_scores(q: jax.Array, k: jax.Array, gqa_mapping: str) -> jax.Array:
    """``s[h, j] = q[h] . k[j, g(h)]`` in f32: ``q [Hq, d]``, ``k [M, Hkv, d]`` -> ``[Hq, M]``.

    Each KV head is read once for all the query heads mapped to it (no repeated K in memory), as
    one batched dot in the cache's dtype with f32 accumulation. (A fused multiply-reduce
    formulation used on CPU before gave wrong scores under ``jit(vmap)`` over a batch of one on
    XLA:CPU with jax 0.10.2 -- errors of order 40 at Hq=9, Hkv=3 -- and was no faster than this dot;
    ``tests/attention/test_select.py`` keeps the batch-of-one case.)
    """
    hq, d = q.shape
    m, hkv, _ = k.shape
    g = hq // hkv
    qc = q.astype(compute_dtype(q, k))
    if gqa_mapping == "group":
        s = jnp.einsum("kgd,nkd->kgn", qc.reshape(hkv, g, d), k, preferred_element_type=jnp.float32)
    else:  # head h = i * Hkv + kv_head
        s = jnp.einsum("gkd,nkd->gkn", qc.reshape(g, hkv, d), k, preferred_element_type=jnp.float32)
    return s.reshape(hq, m)


def head_values(p: jax.Array, v: jax.Array, gqa_mapping: str) -> jax.Array:
    """``o[h] = sum_j p[h, j] v[j, g(h)]``: ``p [Hq, M]`` (f32), ``v [M, Hkv, d]`` -> ``[Hq, d]`` f32."""
    hq, m = p.shape
    _, hkv, d = v.shape
    g = hq // hkv
    pc = p.astype(v.dtype)
    if gqa_mapping == "group":
        o = jnp.einsum("kgn,nkd->kgd", pc.reshape(hkv, g, m), v, preferred_element_type=jnp.float32)
    else:
        o = jnp.einsum("gkn,nkd->gkd", pc.reshape(g, hkv, m), v, preferred_element_type=jnp.float32)
    return o.reshape(hq, d)


def group_queries(q: jax.Array, hkv: int, gqa_mapping: str) -> jax.Array:
    """``q [C, Hq, d] -> [C, Hkv, G, d]`` so that ``[:, k, g]`` is a query head of KV head k."""
    c, hq, d = q.shape
    g = hq // hkv
    if gqa_mapping == "group":
        return q.reshape(c, hkv, g, d)
    return q.reshape(c, g, hkv, d).swapaxes(1, 2)  # head h = i * Hkv + kv_head


def ungroup_heads(o: jax.Array, gqa_mapping: str) -> jax.Array:
    """Inverse of :func:`group_queries`: ``[C, Hkv, G, d] -> [C, Hq, d]``."""
    c, hkv, g, d = o.shape
    if gqa_mapping == "group":
        return o.reshape(c, hkv * g, d)
    return o.swapaxes(1, 2).reshape(c, hkv * g, d)


def chunk_scores(q: jax.Array, k: jax.Array, gqa_mapping: str) -> jax.Array:
    """``s[k, g, c, m] = q[c, head(k, g)] . k[m, k]`` in f32: ``q [C, Hq, d]``, ``k [M, Hkv, d]``.

    One matrix product per KV head, ``[G*C, d] x [d, M]``, so a prefill chunk runs as GEMMs rather
    than C matrix-vector products; the batch (KV head) axis leads both operands, the layout
    XLA:CPU's dot runs fastest.
    """
    c, hq, d = q.shape
    hkv = k.shape[1]
    qg = group_queries(q.astype(compute_dtype(q, k)), hkv, gqa_mapping)
    qg = qg.transpose(1, 2, 0, 3).reshape(hkv, (hq // hkv) * c, d)
    s = jnp.einsum("kqd,kmd->kqm", qg, k.swapaxes(0, 1), preferred_element_type=jnp.float32)
    return s.reshape(hkv, hq // hkv, c, k.shape[0])


def chunk_values(p: jax.Array, v: jax.Array, gqa_mapping: str) -> jax.Array:
    """``o[c, head(k, g)] = sum_m p[k, g, c, m] v[m, k]``: ``p [Hkv, G, C, M]`` -> ``[C, Hq, d]`` f32."""
    hkv, g, c, m = p.shape
    pc = p.astype(v.dtype).reshape(hkv, g * c, m)
    o = jnp.einsum("kqm,kmd->kqd", pc, v.swapaxes(0, 1), preferred_element_type=jnp.float32)
    return ungroup_heads(o.reshape(hkv, g, c, -1).transpose(2, 0, 1, 3), gqa_mapping)


def masked_softmax(logits: jax.Array, mask: jax.Array | None, axis: int = -1) -> jax.Array:
    """Softmax over the entries where ``mask`` is true; 0 elsewhere; an all-masked row gives zeros.

    Stays finite for any finite or -inf logits (the max is subtracted; an empty row divides by 1).
    """
    logits = logits.astype(jnp.float32)
    x = logits if mask is None else jnp.where(mask, logits, -jnp.inf)
    m = jnp.max(x, axis=axis, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(x - m)
    z = jnp.sum(e, axis=axis, keepdims=True)
    return e / jnp.where(z > 0, z, 1.0)
