"""Plain-JAX reference of TokenSelect selection (same contract as ``jaxsel.attention.select_tokens``).

One decode step, one layer, one sequence (arXiv:2411.02886, Sec. 3):

    s_h[j]  = scale * q_h . k_{g(h)}[j]
    p_h[j]  = exp(s_h[j] - m_h) / sum_{i in C} exp(s_h[i] - m_h),  m_h = max_{i in C} s_h[i]
    vote[j] = sum_h p_h[j]                 for j in C = {n_sink, ..., kv_len - n_local - 1}
    kept    = {0..n_sink-1} U top_k(vote over C) U {kv_len-n_local..kv_len-1}

Output ``(indices [B] int32 ascending, valid [B] bool)``, ``B = n_sink + top_k + n_local``. When
``kv_len <= B`` the answer is dense: ``indices = 0..B-1``, ``valid = indices < kv_len``. The math is
:mod:`pallas_kernels._xla_math`, which ``jaxsel.attention`` runs too.
"""

from __future__ import annotations

import jax
from jax import lax

from pallas_kernels import _checks, _xla_math


def soft_votes_reference(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    gqa_mapping: str = "group",
) -> jax.Array:
    """``[N]`` f32 votes, 0 outside the middle candidates (products in k's dtype, f32 accumulation)."""
    _checks.check_qk(q, k)
    return _xla_math.soft_votes(
        q, k, kv_len, n_sink=n_sink, n_local=n_local, scale=scale, gqa_mapping=gqa_mapping
    )


def token_select_reference(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    vote_pool: int = 1,
    gqa_mapping: str = "group",
    axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """TokenSelect in plain JAX: soft votes, ``lax.top_k`` (ties to the lower index), assembly.

    Args:
      q: ``[Hq, d]`` scoring query; k: ``[N, Hkv, d]`` key cache; kv_len: valid tokens (int scalar).
      top_k, n_sink, n_local: static budget parts, ``n_sink + top_k + n_local <= N``.
      scale: scoring scale (1.0: raw dot products, as the authors' code).
      vote_pool: max-pool window over neighbouring votes (1: off).
      gqa_mapping: "group" (``h // G``) or "modulo" (``h % Hkv``, the authors' kernel).
      axis_name: mesh axis over which the heads are sharded; votes are ``psum``-ed across it.

    Returns:
      ``(indices [B] int32 ascending, valid [B] bool)``.
    """
    kv_len, _ = _checks.check_select(
        q, k, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, vote_pool=vote_pool,
        gqa_mapping=gqa_mapping,
    )  # fmt: skip

    def votes_fn(kv: jax.Array | int) -> jax.Array:
        v = _xla_math.soft_votes(
            q, k, kv, n_sink=n_sink, n_local=n_local, scale=scale, gqa_mapping=gqa_mapping
        )
        return v if axis_name is None else lax.psum(v, axis_name)

    return _xla_math.select_by_votes(
        votes_fn, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, vote_pool=vote_pool
    )
