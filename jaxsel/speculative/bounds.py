"""Acceptance limits for K i.i.d. drafts: the subset bound, tight for two drafts.

Khisti et al., "Multi-Draft Speculative Sampling: Canonical Architectures and Theoretical Limits",
ICLR 2025 (arXiv:2410.18234). For any scheme whose output is distributed as ``p`` and any token set
``S``, an accepted output lies in ``S`` with probability at most ``p(S)``, and lies outside ``S`` only
if some draft does, so

    P(accept) <= min_S [ p(S) + 1 - q(S)^K ].

For ``K = 2`` identical drafts the paper shows the bound is the optimal acceptance (its Theorem 3,
written there as ``p(S) + q(S^c)^2 + 2 q(S) q(S^c)``), and that the optimum equals one iff
``p(S) >= q(S)^2`` for every ``S`` (its Theorem 2). For ``K = 1`` it is ``1 - TV(p, q)``.

The minimizing ``S`` is a strict lower level set of ``p/q`` (exchange argument: ``q(S)^K`` is
strictly convex in ``q(S)``, so a token with ratio below ``K q(S)^{K-1}`` is worth adding and one
above it worth removing), so sorting by ``p/q`` and scanning prefixes finds it in ``O(V log V)``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jaxsel.speculative._common import as_draft_rows


def _subset_gap(target_probs: ArrayLike, draft_probs: ArrayLike, num_drafts: int) -> Array:
    """``max_S (q(S)^K - p(S))^+`` over prefixes of the tokens sorted by ``p/q``."""
    if jnp.ndim(draft_probs) != 1:
        raise ValueError(
            f"draft_probs must be 1-d [V] (identical drafts), got {jnp.shape(draft_probs)}"
        )
    p, q = as_draft_rows(target_probs, draft_probs, num_drafts)
    q = q[0]
    ratio = jnp.where(q > 0, p / jnp.where(q > 0, q, 1.0), jnp.inf)
    order = jnp.argsort(ratio)
    gaps = jnp.cumsum(q[order]) ** num_drafts - jnp.cumsum(p[order])
    return jnp.maximum(jnp.max(gaps), 0.0)


def acceptance_upper_bound(
    target_probs: ArrayLike, draft_probs: ArrayLike, *, num_drafts: int
) -> Array:
    """``min_S [p(S) + 1 - q(S)^K]``: an upper bound on any exact scheme's acceptance with K i.i.d.
    drafts from ``q [V]``; the optimum for ``K <= 2``."""
    return 1.0 - _subset_gap(target_probs, draft_probs, num_drafts)


def optimal_acceptance_two_drafts(target_probs: ArrayLike, draft_probs: ArrayLike) -> Array:
    """The optimal acceptance for two i.i.d. drafts (Theorem 3 of Khisti et al.):

    P*(accept) = min_S [ p(S) + q(S^c)^2 + 2 q(S) q(S^c) ] = min_S [ p(S) + 1 - q(S)^2 ].
    """
    return acceptance_upper_bound(target_probs, draft_probs, num_drafts=2)


def acceptance_one_two_drafts(
    target_probs: ArrayLike, draft_probs: ArrayLike, *, atol: float = 1e-6
) -> Array:
    """Whether two i.i.d. drafts can be accepted surely (Theorem 2 of Khisti et al.):
    ``p(S) >= q(S)^2`` for every token set ``S``, checked to ``atol``."""
    return _subset_gap(target_probs, draft_probs, 2) <= atol
