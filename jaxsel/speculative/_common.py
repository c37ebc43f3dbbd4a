"""Shared pieces of the token-level selection schemes: argument checks, the single-draft
speculative step, residual distributions, and the draft-selection rule of the importance schemes.

Every scheme is written for one decoding position (rlax style); callers ``vmap`` over a batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

# Probabilities supplied as concrete arrays are checked to this tolerance.
_PROB_ATOL = 1e-4


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_probs(name: str, x: Array, *, ndim: tuple[int, ...]) -> None:
    """Rank and dtype of a probability array at trace time; values too when ``x`` is concrete."""
    if x.ndim not in ndim:
        want = " or ".join(f"{d}-d" for d in ndim)
        raise ValueError(
            f"{name} must be {want} (a distribution over the vocabulary), got {x.shape=}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype=}")
    if x.shape[-1] < 1:
        raise ValueError(f"{name} needs a vocabulary of at least one token, got {x.shape=}")
    if _is_concrete(x):
        v = np.asarray(x, np.float64)
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError(f"{name} must be finite and non-negative, got min {np.min(v)}")
        sums = v.sum(-1)
        if np.any(np.abs(sums - 1.0) > _PROB_ATOL):
            raise ValueError(f"{name} must sum to 1 over the last axis, got sums {sums}")


def check_inputs(
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    draft_tokens: ArrayLike,
    *,
    per_draft: bool = True,
    num_drafts: int | None = None,
) -> tuple[Array, Array, Array]:
    """Check a scheme's arguments; returns ``(p [V], q [K, V], tokens [K])``.

    ``draft_probs`` may be ``[V]`` (drafts i.i.d.) or, where ``per_draft``, ``[K, V]`` (draft ``i``
    from ``q_i``). ``num_drafts`` pins ``K`` for schemes defined for one ``K`` only.
    """
    p = jnp.asarray(target_probs)
    q = jnp.asarray(draft_probs)
    tokens = jnp.asarray(draft_tokens)
    check_probs("target_probs", p, ndim=(1,))
    check_probs("draft_probs", q, ndim=(1, 2) if per_draft else (1,))
    if tokens.ndim != 1 or tokens.shape[0] < 1:
        raise ValueError(f"draft_tokens must be 1-d [K] with K >= 1, got {tokens.shape=}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"draft_tokens must have an integer dtype, got {tokens.dtype=}")
    k, v = tokens.shape[0], p.shape[0]
    if q.shape[-1] != v:
        raise ValueError(f"draft_probs must have {v} tokens like target_probs, got {q.shape=}")
    if q.ndim == 2 and q.shape[0] != k:
        raise ValueError(
            f"draft_probs [K, V] must have K = {k} rows (one per draft token), got {q.shape=}"
        )
    if num_drafts is not None and k != num_drafts:
        raise ValueError(f"draft_tokens must hold exactly {num_drafts} drafts, got {tokens.shape=}")
    if _is_concrete(tokens):
        t = np.asarray(tokens)
        if np.any(t < 0) or np.any(t >= v):
            raise ValueError(f"draft_tokens must lie in [0, {v}), got {t}")
    q = jnp.broadcast_to(q, (k, v)) if q.ndim == 1 else q
    dtype = jnp.result_type(p.dtype, q.dtype)
    return p.astype(dtype), q.astype(dtype), tokens.astype(jnp.int32)


def check_valid(valid: ArrayLike | None, num_drafts: int) -> Array:
    """The draft mask as a boolean ``[K]`` (all True when None)."""
    if valid is None:
        return jnp.ones((num_drafts,), bool)
    valid = jnp.asarray(valid)
    if valid.shape != (num_drafts,):
        raise ValueError(
            f"valid must have shape ({num_drafts},) like draft_tokens, got {valid.shape=}"
        )
    if valid.dtype != jnp.bool_:
        raise TypeError(f"valid must be boolean, got {valid.dtype=}")
    return valid


def check_num_drafts(num_drafts: int) -> int:
    if not isinstance(num_drafts, int | np.integer) or num_drafts < 1:
        raise ValueError(f"num_drafts must be a positive int, got {num_drafts=}")
    return int(num_drafts)


def as_draft_rows(
    target_probs: ArrayLike, draft_probs: ArrayLike, num_drafts: int
) -> tuple[Array, Array]:
    """``(p [V], q [K, V])`` for the acceptance functions (no draft tokens to check against)."""
    num_drafts = check_num_drafts(num_drafts)
    p = jnp.asarray(target_probs)
    q = jnp.asarray(draft_probs)
    check_probs("target_probs", p, ndim=(1,))
    check_probs("draft_probs", q, ndim=(1, 2))
    if q.shape[-1] != p.shape[0]:
        raise ValueError(
            f"draft_probs must have {p.shape[0]} tokens like target_probs, got {q.shape=}"
        )
    if q.ndim == 2 and q.shape[0] != num_drafts:
        raise ValueError(f"draft_probs [K, V] must have K = {num_drafts=} rows, got {q.shape=}")
    q = jnp.broadcast_to(q, (num_drafts, p.shape[0])) if q.ndim == 1 else q
    dtype = jnp.result_type(p.dtype, q.dtype)
    return p.astype(dtype), q.astype(dtype)


def draft_rows(draft_probs: ArrayLike, num_drafts: int) -> Array:
    """``draft_probs`` (``[V]`` or ``[K, V]``) checked and broadcast to ``[K, V]``."""
    num_drafts = check_num_drafts(num_drafts)
    q = jnp.asarray(draft_probs)
    check_probs("draft_probs", q, ndim=(1, 2))
    if q.ndim == 2 and q.shape[0] != num_drafts:
        raise ValueError(f"draft_probs [K, V] must have K = {num_drafts=} rows, got {q.shape=}")
    return jnp.broadcast_to(q, (num_drafts, q.shape[-1]))


def accept_probability(target: Array, proposal: Array) -> Array:
    """``min(1, p / q)``, with ``p > 0`` read as sure acceptance where ``q = 0``.

    It is exactly ``P(u * q < p)`` for ``u ~ U[0, 1)``, the test the samplers draw.
    """
    safe = jnp.where(proposal > 0, proposal, 1.0)
    return jnp.where(
        proposal > 0, jnp.minimum(1.0, target / safe), (target > 0).astype(target.dtype)
    )


def normalize_or(x: Array, fallback: Array) -> Array:
    """``x / sum(x)``, or ``fallback`` where ``x`` has no mass (a branch taken with probability 0)."""
    total = jnp.sum(x, axis=-1, keepdims=True)
    return jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), fallback)


def residual(target: Array, proposal: Array) -> Array:
    """The single-draft residual ``norm((p - q)^+)`` (Leviathan et al. 2023, Chen et al. 2023)."""
    return normalize_or(jnp.maximum(target - proposal, 0.0), target)


def sample(u: Array, probs: Array) -> Array:
    """One token from ``probs`` by inversion of the CDF at the uniform ``u`` (int32).

    One uniform per draw, not one per token as with Gumbel-max, and never a zero-probability token.
    """
    cdf = jnp.cumsum(probs)
    index = jnp.sum(cdf <= u * cdf[-1]).astype(jnp.int32)
    # Rounding can put u * total at the very top: fall back to the last token with mass.
    last = jnp.max(jnp.where(probs > 0, jnp.arange(probs.shape[0], dtype=jnp.int32), 0))
    return jnp.minimum(index, last)


def verify(key: Array, target: Array, proposal: Array, token: Array) -> tuple[Array, Array]:
    """Single-draft speculative sampling of one ``token ~ proposal`` against ``target``.

    Accept ``token`` with probability ``min(1, p(x)/q(x))``, else draw from ``norm((p - q)^+)``; the
    output is distributed as ``p``. Returns ``(output token, accepted)``.
    """
    u = jax.random.uniform(key, (2,), dtype=target.dtype)
    accepted = u[0] * proposal[token] < target[token]
    fallback = sample(u[1], residual(target, proposal))
    return jnp.where(accepted, token, fallback), accepted


def verify_law(target: Array, proposal: Array, token: Array) -> tuple[Array, Array]:
    """Law of :func:`verify` given the token: ``(P(out = y) [V], P(out = y, accepted) [V])``."""
    a = accept_probability(target[token], proposal[token])
    accept_law = jax.nn.one_hot(token, target.shape[0], dtype=target.dtype) * a
    return accept_law + (1.0 - a) * residual(target, proposal), accept_law


def selection_probs(weights: Array, valid: Array) -> Array:
    """The importance-sampling selection rule ``P(select draft i) = w_i / sum_{j valid} w_j``.

    Over valid drafts only; uniform over them when their weights are all zero; all zero when no
    draft is valid.
    """
    w = jnp.where(valid, weights, 0.0)
    total = jnp.sum(w)
    n_valid = jnp.sum(valid).astype(w.dtype)
    uniform = valid.astype(w.dtype) / jnp.maximum(n_valid, 1.0)
    return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), uniform)


def two_step(
    key: Array, target: Array, intermediate: Array, draft_tokens: Array, select: Array
) -> tuple[Array, Array]:
    """Canonical two-step scheme: pick draft ``i ~ select``, then :func:`verify` it against the
    target with the intermediate law ``p_I`` as proposal. Returns ``(token, accepted)``."""
    u = jax.random.uniform(key, (3,), dtype=target.dtype)
    any_valid = jnp.sum(select) > 0
    i = jnp.where(any_valid, sample(u[0], select), 0)
    x = draft_tokens[i]
    accepted = any_valid & (u[1] * intermediate[x] < target[x])
    # With no valid draft p_I = 0, so the residual is the target itself.
    fallback = sample(u[2], residual(target, intermediate))
    return jnp.where(accepted, x, fallback), accepted


def two_step_law(
    target: Array, intermediate: Array, draft_tokens: Array, select: Array
) -> tuple[Array, Array]:
    """Law of :func:`two_step` given the drafts: ``(P(out = y), P(out = y, accepted))``."""
    v = target.shape[0]
    a = accept_probability(target[draft_tokens], intermediate[draft_tokens]) * select
    accept_law = jnp.zeros((v,), target.dtype).at[draft_tokens].add(a)
    return accept_law + (1.0 - jnp.sum(a)) * residual(target, intermediate), accept_law
