"""Single-draft speculative sampling (K = 1).

Leviathan et al., "Fast Inference from Transformers via Speculative Decoding", ICML 2023
(arXiv:2211.17192); Chen et al., "Accelerating Large Language Model Decoding with Speculative
Sampling" (arXiv:2302.01318). A drafted ``x ~ q`` is kept with probability ``min(1, p(x)/q(x))``;
otherwise the output is drawn from ``norm((p - q)^+)``. The output is distributed as ``p`` and

    P(accept) = sum_y min(p(y), q(y)) = 1 - TV(p, q),

the largest acceptance any scheme with one draft can reach.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jaxsel.speculative._common import as_draft_rows, check_inputs, verify, verify_law


def speculative_select(
    key: Array, target_probs: ArrayLike, draft_probs: ArrayLike, draft_tokens: ArrayLike
) -> tuple[Array, Array]:
    """One token by single-draft speculative sampling.

    Args:
      key: PRNG key.
      target_probs: ``p``, ``[V]``.
      draft_probs: ``q``, ``[V]`` or ``[1, V]``; the draft token was drawn from it.
      draft_tokens: ``[1]`` int, the drafted token.

    Returns:
      ``(token, accepted)``: the output token (int32 scalar, distributed as ``p``) and whether it
      is the accepted draft (False: it came from the residual).

    Example:
      >>> token, accepted = speculative_select(key, p, q, jnp.array([x]))
    """
    p, q, tokens = check_inputs(target_probs, draft_probs, draft_tokens, num_drafts=1)
    return verify(key, p, q[0], tokens[0])


def speculative_law(
    target_probs: ArrayLike, draft_probs: ArrayLike, draft_tokens: ArrayLike
) -> tuple[Array, Array]:
    """Law of :func:`speculative_select` given the draft: ``(P(out = y), P(out = y, accepted))``, each ``[V]``."""
    p, q, tokens = check_inputs(target_probs, draft_probs, draft_tokens, num_drafts=1)
    return verify_law(p, q[0], tokens[0])


def speculative_acceptance(target_probs: ArrayLike, draft_probs: ArrayLike) -> Array:
    """``P(accept) = sum_y min(p(y), q(y))`` for ``p [V]``, ``q [V]``."""
    p, q = as_draft_rows(target_probs, draft_probs, 1)
    return jnp.sum(jnp.minimum(p, q[0]))
