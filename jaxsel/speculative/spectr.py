"""SpecTr's k-sequential selection over K i.i.d. drafts.

Sun et al., "SpecTr: Fast Speculative Decoding via Optimal Transport", NeurIPS 2023
(arXiv:2310.15141). Draft ``i`` (``x_i ~ q`` i.i.d.) is tried in order and accepted with
probability ``min(1, p(x_i) / (rho q(x_i)))`` for a ``rho in [1, K]``. With

    alpha(y) = min(p(y) / rho, q(y)),   beta = sum_y alpha(y),   c = (1 - (1 - beta)^K) / beta,

the accepted output has law ``c alpha``; if all K drafts are rejected (probability ``(1-beta)^K``)
the output is drawn from

    p_res = (p - c alpha) / (1 - beta)^K,

so the output is distributed as ``p`` whenever ``c <= rho`` (which keeps ``p_res >= 0``). The
acceptance ``1 - (1 - beta(rho))^K`` falls as ``rho`` grows, and ``f(rho) = rho beta(rho) - 1 +
(1 - beta(rho))^K`` rises from ``f(1) <= 0`` to ``f(K) >= 0``; the scheme uses the root ``rho*`` of
``f`` (SpecTr's choice), found by bisection and taken from the feasible side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from jaxsel.speculative._common import (
    accept_probability,
    check_inputs,
    check_num_drafts,
    check_probs,
    check_valid,
    normalize_or,
    sample,
)

_BISECTION_STEPS = 60


def k_sequential_rho(
    target_probs: ArrayLike, draft_probs: ArrayLike, num_drafts: ArrayLike
) -> Array:
    """The smallest ``rho in [1, K]`` with ``rho beta(rho) >= 1 - (1 - beta(rho))^K``.

    ``num_drafts`` may be traced (the number of valid drafts in block decoding); ``K <= 1`` gives
    ``rho = 1`` (single-draft speculative sampling).
    """
    p = jnp.asarray(target_probs)
    q = jnp.asarray(draft_probs)
    k = jnp.maximum(jnp.asarray(num_drafts, p.dtype), 1.0)

    def f(rho):
        # rho beta - 1 written as -sum (p - rho q)^+, which keeps f(rho) >= 0 exact when p == q.
        beta = jnp.sum(jnp.minimum(p / rho, q))
        return (1.0 - beta) ** k - jnp.sum(jnp.maximum(p - rho * q, 0.0))

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        ok = f(mid) >= 0
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    _, hi = lax.fori_loop(0, _BISECTION_STEPS, body, (jnp.ones((), p.dtype), k))
    return hi


def _spectr_parts(p: Array, q: Array, n: Array) -> tuple[Array, Array, Array]:
    """``(rho, accept scale 1/rho, residual law)`` for ``n`` trials of the i.i.d. draft ``q``."""
    rho = k_sequential_rho(p, q, n)
    alpha = jnp.minimum(p / rho, q)
    beta = jnp.sum(alpha)
    n = n.astype(p.dtype)
    reach_all = 1.0 - (1.0 - beta) ** n
    c = jnp.where(beta > 0, reach_all / jnp.where(beta > 0, beta, 1.0), n)
    res = normalize_or(jnp.maximum(p - c * alpha, 0.0), p)
    return rho, 1.0 / rho, res


def k_sequential_select(
    key: Array,
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    draft_tokens: ArrayLike,
    *,
    valid: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """One token by SpecTr's k-sequential selection.

    Args:
      key: PRNG key.
      target_probs: ``p``, ``[V]``.
      draft_probs: ``q``, ``[V]``: the drafts must be i.i.d. from one distribution.
      draft_tokens: ``[K]`` int.
      valid: optional boolean ``[K]``; only valid drafts count (``K`` is their number).

    Returns:
      ``(token, accepted)``: the output token (distributed as ``p``) and whether a draft was
      accepted (False: the output came from the residual).
    """
    p, q, tokens = check_inputs(target_probs, draft_probs, draft_tokens, per_draft=False)
    k = tokens.shape[0]
    valid = check_valid(valid, k)
    _, scale, res = _spectr_parts(p, q[0], jnp.sum(valid))
    u = jax.random.uniform(key, (k + 1,), dtype=p.dtype)
    hits = valid & (u[:k] * q[0, tokens] < scale * p[tokens])
    accepted = jnp.any(hits)
    fallback = sample(u[k], res)
    return jnp.where(accepted, tokens[jnp.argmax(hits)], fallback), accepted


def k_sequential_law(
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    draft_tokens: ArrayLike,
    *,
    valid: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """Law of :func:`k_sequential_select` given the drafts: ``(P(out = y), P(out = y, accepted))``."""
    p, q, tokens = check_inputs(target_probs, draft_probs, draft_tokens, per_draft=False)
    k, v = q.shape
    valid = check_valid(valid, k)
    _, scale, res = _spectr_parts(p, q[0], jnp.sum(valid))
    a = jnp.where(valid, accept_probability(scale * p[tokens], q[0, tokens]), 0.0)
    # P(first acceptance at i) = a_i prod_{j<i} (1 - a_j).
    stay = jnp.cumprod(jnp.concatenate([jnp.ones((1,), p.dtype), 1.0 - a]))
    accept_law = jnp.zeros((v,), p.dtype).at[tokens].add(a * stay[:-1])
    return accept_law + stay[-1] * res, accept_law


def k_sequential_acceptance(
    target_probs: ArrayLike, draft_probs: ArrayLike, *, num_drafts: int
) -> Array:
    """``P(accept) = 1 - (1 - beta(rho*))^K`` for ``K = num_drafts`` i.i.d. drafts from ``q [V]``."""
    num_drafts = check_num_drafts(num_drafts)
    p = jnp.asarray(target_probs)
    q = jnp.asarray(draft_probs)
    check_probs("target_probs", p, ndim=(1,))
    check_probs("draft_probs", q, ndim=(1,))
    if q.shape != p.shape:
        raise ValueError(f"draft_probs must have shape {p.shape} like target_probs, got {q.shape=}")
    rho = k_sequential_rho(p, q, num_drafts)
    beta = jnp.sum(jnp.minimum(p / rho, q))
    return 1.0 - (1.0 - beta) ** num_drafts
