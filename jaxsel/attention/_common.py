"""GQA head mapping and chunk (prefill) products (private).

The per-step products and the masked softmax are :mod:`pallas_kernels._xla_math`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels._xla_math import group_queries, head_scores, head_values, masked_softmax

__all__ = [
    "block_attention",
    "chunk_rows",
    "chunk_scores",
    "chunk_values",
    "compute_dtype",
    "group_queries",
    "head_scores",
    "head_values",
    "kv_head_of",
    "masked_softmax",
    "unchunk_rows",
    "ungroup_heads",
]


def kv_head_of(hq: int, hkv: int, gqa_mapping: str) -> np.ndarray:
    """``g(h)`` for every query head: ``h // (Hq/Hkv)`` ("group") or ``h % Hkv`` ("modulo")."""
    h = np.arange(hq)
    return h // (hq // hkv) if gqa_mapping == "group" else h % hkv


def compute_dtype(q: jax.Array, k: jax.Array) -> jnp.dtype:
    # Products run in the cache's dtype with f32 accumulation, so a bf16 cache is never copied to f32
    # (that copy would double the bytes a bandwidth-bound decode step moves).
    return jnp.dtype(k.dtype)


def ungroup_heads(o: jax.Array, gqa_mapping: str) -> jax.Array:
    """Inverse of :func:`group_queries`: ``[C, Hkv, G, d] -> [C, Hq, d]``."""
    c, hkv, g, d = o.shape
    if gqa_mapping == "group":
        return o.reshape(c, hkv * g, d)
    return o.swapaxes(1, 2).reshape(c, hkv * g, d)


def chunk_rows(q: jax.Array, hkv: int, gqa_mapping: str) -> jax.Array:
    """``q [C, Hq, d] -> [Hkv, G*C, d]``: each KV head's query rows, row ``r = i * C + c`` for its
    i-th query head and chunk query c (one GEMM operand per KV head)."""
    c, hq, d = q.shape
    return group_queries(q, hkv, gqa_mapping).transpose(1, 2, 0, 3).reshape(hkv, hq // hkv * c, d)


def unchunk_rows(x: jax.Array, c: int, gqa_mapping: str) -> jax.Array:
    """Inverse of :func:`chunk_rows` on per-row results: ``[Hkv, G*C, ...] -> [C, Hq, ...]``."""
    hkv, rows = x.shape[:2]
    x = x.reshape(hkv, rows // c, c, *x.shape[2:])
    return ungroup_heads(jnp.moveaxis(x, 2, 0), gqa_mapping)


def chunk_scores(q: jax.Array, k: jax.Array, gqa_mapping: str) -> jax.Array:
    """``s[k, g, c, m] = q[c, head(k, g)] . k[m, k]`` in f32: ``q [C, Hq, d]``, ``k [M, Hkv, d]``.

    One matrix product per KV head, ``[G*C, d] x [d, M]``, so a prefill chunk runs as GEMMs rather
    than C matrix-vector products; the batch (KV head) axis leads both operands, the layout
    XLA:CPU's dot runs fastest.
    """
    c, hq, _ = q.shape
    hkv = k.shape[1]
    qg = chunk_rows(q.astype(compute_dtype(q, k)), hkv, gqa_mapping)
    s = jnp.einsum("kqd,kmd->kqm", qg, k.swapaxes(0, 1), preferred_element_type=jnp.float32)
    return s.reshape(hkv, hq // hkv, c, k.shape[0])


def chunk_values(p: jax.Array, v: jax.Array, gqa_mapping: str) -> jax.Array:
    """``o[c, head(k, g)] = sum_m p[k, g, c, m] v[m, k]``: ``p [Hkv, G, C, M]`` -> ``[C, Hq, d]`` f32."""
    hkv, g, c, m = p.shape
    pc = p.astype(v.dtype).reshape(hkv, g * c, m)
    o = jnp.einsum("kqm,kmd->kqd", pc, v.swapaxes(0, 1), preferred_element_type=jnp.float32)
    return unchunk_rows(o, c, gqa_mapping)


def block_attention(
    qg: jax.Array,
    load_block: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    n_blocks: jax.Array | int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The flash-attention recurrence (online softmax; Milakov & Gimelshein 2018) over key blocks.

    For rows r of ``qg [Hkv, R, d]`` (scaled queries, grouped by KV head) and key blocks
    ``load_block(j) = (k_j [bk, Hkv, d], v_j [bk, Hkv, d], live_j [R, bk] bool)``, ``j < n_blocks``:

        m = max_{j, live} s,   l = sum_{j, live} exp(s - m),   acc = sum_{j, live} exp(s - m) v,

    with ``s = qg . k_j`` in f32 accumulation. Only one block of scores is alive at a time, so the
    softmax stays in cache instead of a materialised ``[Hkv, R, M]`` array (on XLA:CPU that array
    costs 2-3x the FLOPs' time). ``n_blocks`` static (a scan) or traced (a while loop).

    Returns:
      ``(m, l, acc)``: ``[Hkv, R]`` (the f32 minimum where no key was live), ``[Hkv, R]``,
      ``[Hkv, R, d]``, all float32; ``o = acc / l`` where ``l > 0``.
    """
    hkv, r, d = qg.shape
    lo = jnp.finfo(jnp.float32).min

    def block(j, carry):
        m, l, acc = carry
        kb, vb, live = load_block(j)
        s = jnp.einsum("kqd,kmd->kqm", qg, kb.swapaxes(0, 1), preferred_element_type=jnp.float32)
        s = jnp.where(live[None], s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = jnp.exp(s - m_new[..., None])
        corr = jnp.exp(m - m_new)
        pv = jnp.einsum(
            "kqm,kmd->kqd", p.astype(vb.dtype), vb.swapaxes(0, 1),
            preferred_element_type=jnp.float32,
        )  # fmt: skip
        return m_new, l * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + pv

    init = (
        jnp.full((hkv, r), lo, jnp.float32),
        jnp.zeros((hkv, r), jnp.float32),
        jnp.zeros((hkv, r, d), jnp.float32),
    )
    return jax.lax.fori_loop(0, n_blocks, block, init)
