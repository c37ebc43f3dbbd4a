"""Recursive rejection sampling over K drafts (SpecInfer's multi-step speculative sampling).

Miao et al., "SpecInfer: Accelerating Large Language Model Serving with Tree-based Speculative
Inference and Verification", ASPLOS 2024 (arXiv:2305.09781). With ``r_1 = p``, the drafts are tried
in order; draft ``i`` (``x_i ~ q_i``) is accepted with probability ``min(1, r_i(x_i) / q_i(x_i))``
and on rejection the running target becomes

    r_{i+1} = norm((r_i - q_i)^+);

if every draft is rejected the output is drawn from ``r_{K+1}``. Each step is a single-draft
speculative step of target ``r_i``, so the output is distributed as ``p``. The drafts may come from
different distributions (``q_i``, e.g. K independent draft chains). Since ``r_i`` does not depend on
which tokens were rejected,

    P(accept) = 1 - prod_i (1 - beta_i),   beta_i = sum_y min(r_i(y), q_i(y)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from jaxsel.speculative._common import (
    accept_probability,
    as_draft_rows,
    check_inputs,
    check_valid,
    residual,
    sample,
)


def recursive_rejection_select(
    key: Array,
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    draft_tokens: ArrayLike,
    *,
    valid: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """One token by SpecInfer's recursive rejection sampling.

    Args:
      key: PRNG key.
      target_probs: ``p``, ``[V]``.
      draft_probs: ``[V]`` (drafts i.i.d. from ``q``) or ``[K, V]`` (draft ``i`` from ``q_i``).
      draft_tokens: ``[K]`` int, drawn independently.
      valid: optional boolean ``[K]``; drafts where it is False are skipped (block decoding passes
        the chains that still agree with the accepted prefix).

    Returns:
      ``(token, accepted)``: the output token (distributed as ``p``) and whether a draft was
      accepted; when all were rejected the output differs from every tried draft.
    """
    p, q, tokens = check_inputs(target_probs, draft_probs, draft_tokens)
    k = tokens.shape[0]
    valid = check_valid(valid, k)
    u = jax.random.uniform(key, (k + 1,), dtype=p.dtype)

    def step(carry, i):
        r, index = carry
        x = tokens[i]
        trial = valid[i] & (index < 0)
        hit = trial & (u[i] * q[i, x] < r[x])
        r = jnp.where(trial & ~hit, residual(r, q[i]), r)
        return (r, jnp.where(hit, i, index)), None

    (r, index), _ = lax.scan(step, (p, jnp.int32(-1)), jnp.arange(k))
    fallback = sample(u[k], r)
    accepted = index >= 0
    return jnp.where(accepted, tokens[jnp.maximum(index, 0)], fallback), accepted


def recursive_rejection_law(
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    draft_tokens: ArrayLike,
    *,
    valid: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """Law of :func:`recursive_rejection_select` given the drafts: ``(P(out = y), P(out = y, accepted))``."""
    p, q, tokens = check_inputs(target_probs, draft_probs, draft_tokens)
    k, v = q.shape
    valid = check_valid(valid, k)

    def step(carry, i):
        r, stay, accept_law = carry
        x = tokens[i]
        a = jnp.where(valid[i], accept_probability(r[x], q[i, x]), 0.0)
        accept_law = accept_law.at[x].add(stay * a)
        r = jnp.where(valid[i], residual(r, q[i]), r)
        return (r, stay * (1.0 - a), accept_law), None

    init = (p, jnp.ones((), p.dtype), jnp.zeros((v,), p.dtype))
    (r, stay, accept_law), _ = lax.scan(step, init, jnp.arange(k))
    return accept_law + stay * r, accept_law


def recursive_rejection_acceptance(
    target_probs: ArrayLike, draft_probs: ArrayLike, *, num_drafts: int
) -> Array:
    """``P(accept) = 1 - prod_i (1 - sum_y min(r_i(y), q_i(y)))`` for ``K = num_drafts`` drafts."""
    p, q = as_draft_rows(target_probs, draft_probs, num_drafts)

    def step(carry, qi):
        r, reject = carry
        beta = jnp.sum(jnp.minimum(r, qi))
        return (residual(r, qi), reject * (1.0 - beta)), None

    (_, reject), _ = lax.scan(step, (p, jnp.ones((), p.dtype)), q)
    return 1.0 - reject
