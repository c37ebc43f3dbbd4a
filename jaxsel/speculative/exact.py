"""Exact output laws of the selection schemes by enumerating every draft tuple (small V and K).

A scheme's ``*_law`` function gives the output law given the drafts, with its own randomness
summed out; averaging it over all ``V^K`` draft tuples, weighted by ``prod_i q_i(x_i)``, gives the
scheme's output law and acceptance exactly. The tests use it to prove the laws equal the target.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from jaxsel.speculative._common import check_num_drafts, draft_rows

LawFn = Callable[..., tuple[Array, Array]]


def draft_tuples(vocab_size: int, num_drafts: int) -> np.ndarray:
    """Every draft tuple, ``[V^K, K]`` int32, in lexicographic order."""
    num_drafts = check_num_drafts(num_drafts)
    return np.indices((vocab_size,) * num_drafts).reshape(num_drafts, -1).T.astype(np.int32)


def exact_law(
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    *,
    law_fn: LawFn,
    num_drafts: int,
    **law_kwargs,
) -> tuple[Array, Array, Array]:
    """``(P(out = y) [V], P(out = y, accepted) [V], P(out in drafts))`` of a scheme, exactly.

    ``law_fn(target_probs, draft_probs, draft_tokens, **law_kwargs)`` is one of the ``*_law``
    functions; ``draft_probs`` is ``[V]`` (i.i.d. drafts) or ``[K, V]``. ``P(out in drafts)`` is the
    acceptance in the sense of the optimal LP (the output equals some draft token).

    Example:
      >>> law, accept_law, hit = exact_law(p, q, law_fn=recursive_rejection_law, num_drafts=2)
      >>> # law == p up to rounding; accept_law.sum() == recursive_rejection_acceptance(p, q, num_drafts=2)
    """
    q = draft_rows(draft_probs, num_drafts)
    v = q.shape[1]
    tuples = jnp.asarray(draft_tuples(v, num_drafts))
    weight = jnp.prod(q[jnp.arange(num_drafts)[None, :], tuples], axis=1)
    laws, accept_laws = jax.vmap(lambda t: law_fn(target_probs, draft_probs, t, **law_kwargs))(
        tuples
    )
    in_drafts = jnp.any(tuples[:, :, None] == jnp.arange(v)[None, None, :], axis=1)
    hit = jnp.sum(weight * jnp.sum(jnp.where(in_drafts, laws, 0.0), axis=1))
    return weight @ laws, weight @ accept_laws, hit
