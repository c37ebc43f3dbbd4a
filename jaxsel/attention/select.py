"""TokenSelect: query-aware token-level KV selection by per-head soft voting.

Wu et al., "TokenSelect: Efficient Long-Context Inference and Length Extrapolation for LLMs via
Dynamic Token-Level KV Cache Selection", arXiv:2411.02886.

One decode step, one layer, one sequence (batch with ``vmap``):

    s_h[j]  = scale * q_h . k_{g(h)}[j]                     (raw dot products by default, scale=1)
    p_h[j]  = softmax_{j in C}(s_h[j]),  C = {n_sink, ..., kv_len - n_local - 1}   (middle tokens)
    vote[j] = sum_h p_h[j]
    kept    = sinks {0..n_sink-1}  U  top_k(vote over C)  U  locals {kv_len-n_local..kv_len-1}

The per-head normalisation is the point: a head with one very sharp logit cannot outvote the others
(InfLLM summed raw logits instead; see :func:`jaxsel.attention.raw_logit_select`).

The functions here check their arguments and run :mod:`pallas_kernels._xla_math`, the one
implementation of this math, which the kernels' references and ``xla`` backends run too.

Output format, shared by every selector in this package (``B = n_sink + top_k + n_local``):

- ``indices [B] int32``, sorted ascending and unique over *all* B entries;
- ``valid [B] bool``; the valid entries come first.

When ``kv_len > B`` all entries are valid. When ``kv_len <= B`` the selection is dense: ``indices =
0..B-1`` and ``valid = indices < kv_len``, so every valid token appears exactly once. Invalid entries
therefore point at padding slots ``kv_len..B-1`` of the cache, which exist because ``B <= N``: a
gather never reads out of range, and the value read is harmless because every consumer masks it out
with ``valid`` (:func:`jaxsel.attention.sparse_attention` gives it zero weight).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsel.attention import _checks
from jaxsel.attention import _sequence_select as sequence
from pallas_kernels import _xla_math
from pallas_kernels.token_select.api import token_select
from pallas_kernels.token_select.reference import token_select_reference


def token_scores(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    scale: float = 1.0,
    gqa_mapping: str = "group",
) -> jax.Array:
    """Per-head scores of every cached token, ``s[h, j] = scale * q[h] . k[j, g(h)]``.

    Args:
      q: ``[Hq, d]`` query of the current step (for selection: the mean query of the step/chunk).
      k: ``[N, Hkv, d]`` key cache of static length N; Hq must be a multiple of Hkv.
      kv_len: integer scalar, number of valid tokens (may be traced); tokens ``>= kv_len`` are padding.
      scale: multiplies the dot products. 1.0 (the default) gives raw dot products, as the authors'
        selection code; pass ``1/sqrt(d)`` for attention logits.
      gqa_mapping: ``"group"`` maps query head h to KV head ``h // (Hq/Hkv)`` (standard GQA);
        ``"modulo"`` maps it to ``h % Hkv`` (what the authors' kernel does; for reproduction only).

    Returns:
      ``[Hq, N]`` float32, ``-inf`` at padding positions.
    """
    _checks.check_qk(q, k)
    kv_len = _checks.check_kv_len(kv_len, k.shape[0])
    _checks.check_gqa_mapping(gqa_mapping)
    return _xla_math.token_scores(q, k, kv_len, scale=scale, gqa_mapping=gqa_mapping)


def soft_vote(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-head softmax over the tokens where ``mask`` is true, summed over heads.

    ``vote[j] = sum_h exp(s[h, j]) / sum_{i: mask[i]} exp(s[h, i])`` for ``mask[j]``, else 0.

    Args:
      scores: ``[H, N]`` per-head scores (see :func:`token_scores`).
      mask: ``[N]`` or ``[H, N]`` bool, the candidate tokens.

    Returns:
      ``[N]`` float32 votes; each head contributes a distribution, so the votes sum to H (or to
      the number of heads with at least one finite candidate score).
    """
    _checks.check_rank(scores, 2, "scores", "[H, N]")
    if jnp.shape(mask) not in ((scores.shape[1],), scores.shape):
        raise ValueError(
            f"mask must have shape [N] or [H, N] matching scores.shape={scores.shape}, got "
            f"{jnp.shape(mask)}"
        )
    return _xla_math.soft_vote(scores, mask)


def middle_candidates(n: int, kv_len: jax.Array | int, *, n_sink: int, n_local: int) -> jax.Array:
    """``[N]`` bool: the middle tokens ``n_sink <= j < kv_len - n_local`` that selection ranks."""
    return _xla_math.middle_candidates(n, kv_len, n_sink=n_sink, n_local=n_local)


def pool_votes(votes: jax.Array, candidates: jax.Array, vote_pool: int) -> jax.Array:
    """Max-pools ``votes`` over a window of ``vote_pool`` neighbouring candidates (centred).

    ``pooled[j] = max_{i in [j - (p-1)//2, j + p//2], candidates[i]} votes[i]``; the authors'
    optional smoothing, which favours tokens next to strongly voted ones. ``vote_pool=1`` is the
    identity. Non-candidates never contribute.
    """
    return _xla_math.pool_votes(votes, candidates, vote_pool)


def select_from_votes(
    votes: jax.Array,
    kv_len: jax.Array | int,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    vote_pool: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Sinks + top-k middle tokens by ``votes`` + locals, for ``kv_len > n_sink + top_k + n_local``.

    Ties go to the lower index (``lax.top_k`` is stable). Non-finite candidate votes are ranked as
    the lowest finite value, so a candidate always outranks a non-candidate and NaN never wins.

    Args:
      votes: ``[N]`` float votes (only candidate entries are read).
      kv_len: integer scalar; must exceed the budget (the caller takes the dense branch otherwise).

    Returns:
      ``(indices [budget] int32 sorted ascending, valid [budget] bool, all true)``.
    """
    return _xla_math.select_from_votes(
        votes, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, vote_pool=vote_pool
    )


def select_tokens(
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
    seq_axis: str | None = None,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """TokenSelect: the tokens one decode step attends to (arXiv:2411.02886, Sec. 3).

    ``vote = soft_vote(token_scores(q, k), middle candidates)``; keeps the n_sink first tokens, the
    top_k middle tokens by vote (ties to the lower index) and the n_local last valid tokens. When
    ``kv_len <= n_sink + top_k + n_local`` every valid token is kept once (dense-equivalent).

    Args:
      q: ``[Hq, d]`` scoring query (the mean of the step's queries; see
        :func:`jaxsel.attention.scoring_query` for the RoPE rotation used with unrotated keys).
      k: ``[N, Hkv, d]`` key cache of static length N.
      kv_len: integer scalar (may be traced), number of valid tokens.
      top_k, n_sink, n_local: static budget parts; ``n_sink + top_k + n_local <= N``. The authors'
        defaults are 2048, 128, 512.
      scale: scoring scale (1.0: raw dot products, as the authors' code).
      vote_pool: size of the max-pooling window over neighbouring votes (1: off, the default).
      gqa_mapping: ``"group"`` (standard) or ``"modulo"`` (the authors' kernel).
      axis_name: when the heads are sharded (``shard_map`` over a mesh axis), the name of that axis:
        each shard votes with its own heads and the votes are summed with ``lax.psum``, so every
        shard selects the same tokens. Requires the "group" mapping with contiguous head shards,
        and every shard must pass it (the branches of the dense/sparse ``lax.cond`` must agree).
      seq_axis: when the cache is sharded along the SEQUENCE (``shard_map`` over a mesh axis,
        ``k`` this shard's ``[N/P, Hkv, d]`` contiguous tokens), the name of that axis:
        :func:`jaxsel.attention.sequence.sequence_select` (global log-sum-exp, local top-k
        proposals, exact merge). ``kv_len`` is then global and the indices too. XLA only.
      implementation: ``"xla"`` (plain JAX: :func:`pallas_kernels.token_select_reference`) or
        ``"pallas"`` (the fused kernels of :func:`pallas_kernels.token_select`, best backend for the device, which
        falls back to XLA where none runs); any other name is passed to it as is.

    Returns:
      ``(indices, valid)``, each ``[n_sink + top_k + n_local]``: int32 indices sorted ascending and
      unique, and a bool mask, false only for the padding entries of a dense selection (see the
      module docstring for how those are represented).
    """
    if seq_axis is not None:
        if axis_name is not None or implementation != "xla":
            raise ValueError(
                f"seq_axis={seq_axis!r} runs the XLA sequence-sharded selection alone; got "
                f"axis_name={axis_name!r}, implementation={implementation!r}"
            )
        return sequence.sequence_select(
            q, k, kv_len, axis_name=seq_axis, top_k=top_k, n_sink=n_sink, n_local=n_local,
            scale=scale, vote_pool=vote_pool, gqa_mapping=gqa_mapping,
        )  # fmt: skip
    kv_len, _ = _checks.check_select(
        q, k, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, vote_pool=vote_pool,
        gqa_mapping=gqa_mapping,
    )  # fmt: skip
    if implementation != "xla":
        return token_select(
            q,
            k,
            kv_len,
            top_k=top_k,
            n_sink=n_sink,
            n_local=n_local,
            scale=scale,
            vote_pool=vote_pool,
            gqa_mapping=gqa_mapping,
            axis_name=axis_name,
            implementation=None if implementation == "pallas" else implementation,
        )
    return token_select_reference(
        q, k, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, scale=scale,
        vote_pool=vote_pool, gqa_mapping=gqa_mapping, axis_name=axis_name,
    )  # fmt: skip
