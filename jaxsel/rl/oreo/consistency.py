"""Answer selection over K samples: majority vote vs Soft Self-Consistency (pure, unbatched).

Soft Self-Consistency (Wang et al. 2024, "Soft Self-Consistency Improves Language Model
Agents", arXiv 2402.13212) replaces the count of exact matches by a continuous score of each
sample computed from its own token probabilities, and picks the highest-scoring sample:

    mean:      s_k = (1/T_k) sum_t p(y_t^k | y_<t^k, x)
    min:       s_k = min_t p(y_t^k | y_<t^k, x)
    mean_log:  s_k = (1/T_k) sum_t log p(y_t^k | y_<t^k, x)

    answer = answer(argmax_k s_k)

Answers are integer ids; ``-1`` marks an unparseable sample, which never wins unless every
sample is unparseable (then ``-1`` is returned).

:func:`soft_vote` is our likelihood-weighted majority vote, not the paper's rule: each answer
scores the sum of the Soft-SC scores of the samples that reach it,
``answer = argmax_a sum_k [answer_k = a] s_k``; with every ``s_k = 1`` it is majority vote.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

Aggregation = Literal["mean", "min", "mean_log"]

__all__ = ["majority_vote", "sample_scores", "soft_self_consistency", "soft_vote"]


def _check(answers: ArrayLike, logps: ArrayLike, mask: ArrayLike) -> tuple[Array, Array, Array]:
    a, lp, m = jnp.asarray(answers), jnp.asarray(logps), jnp.asarray(mask)
    if a.ndim != 1 or a.shape[0] == 0:
        raise ValueError(f"answers must be a non-empty [K] vector, got shape {a.shape}")
    if lp.ndim != 2 or lp.shape[0] != a.shape[0]:
        raise ValueError(f"logps must be [K={a.shape[0]}, T], got shape {lp.shape}")
    if m.shape != lp.shape:
        raise ValueError(f"mask must have the shape of logps {lp.shape}, got {m.shape}")
    return a, lp, m.astype(jnp.float32)


def majority_vote(answers: ArrayLike) -> Array:
    """Most frequent valid answer among ``[K]`` samples (ties: the earliest sample's answer)."""
    a = jnp.asarray(answers)
    if a.ndim != 1 or a.shape[0] == 0:
        raise ValueError(f"answers must be a non-empty [K] vector, got shape {a.shape}")
    valid = a >= 0
    counts = jnp.sum((a[:, None] == a[None, :]) & valid[None, :], axis=1)
    counts = jnp.where(valid, counts, -1)
    return a[jnp.argmax(counts)]


def sample_scores(logps: ArrayLike, mask: ArrayLike, *, aggregation: Aggregation = "mean") -> Array:
    """Soft-SC score of each sample, ``[K, T] -> [K]`` (see the module docstring)."""
    lp = jnp.asarray(logps, jnp.float32)
    m = jnp.asarray(mask).astype(jnp.float32)
    if lp.ndim != 2 or m.shape != lp.shape:
        raise ValueError(f"logps and mask must be equal [K, T] arrays, got {lp.shape}, {m.shape}")
    n = jnp.maximum(jnp.sum(m, -1), 1.0)
    if aggregation == "mean":
        return jnp.sum(jnp.exp(lp) * m, -1) / n
    if aggregation == "min":
        return jnp.min(jnp.where(m > 0, jnp.exp(lp), jnp.inf), -1)
    if aggregation == "mean_log":
        return jnp.sum(lp * m, -1) / n
    raise ValueError(f"aggregation must be 'mean', 'min' or 'mean_log', got {aggregation!r}")


def soft_self_consistency(
    answers: ArrayLike,
    logps: ArrayLike,
    mask: ArrayLike,
    *,
    aggregation: Aggregation = "mean",
) -> Array:
    """Soft Self-Consistency answer over ``K`` samples (arXiv 2402.13212).

    Args:
      answers: ``[K]`` integer answer of each sample, ``-1`` if unparseable.
      logps: ``[K, T]`` log-probs of each sample's tokens.
      mask: ``[K, T]`` 1 on the tokens to score.
      aggregation: ``"mean"`` / ``"min"`` token probability or ``"mean_log"``.

    Returns:
      the selected answer (scalar int).
    """
    a, lp, m = _check(answers, logps, mask)
    s = sample_scores(lp, m, aggregation=aggregation)
    s = jnp.where(a >= 0, s, -jnp.inf)
    return a[jnp.argmax(s)]


def soft_vote(
    answers: ArrayLike,
    logps: ArrayLike,
    mask: ArrayLike,
    *,
    aggregation: Aggregation = "mean",
) -> Array:
    """Likelihood-weighted vote: the answer whose samples' Soft-SC scores sum highest.

    ``mean_log`` scores are negative, so they are exponentiated (a per-token geometric-mean
    probability) before summing. Ties go to the earliest sample's answer.

    Args, returns: as :func:`soft_self_consistency`.
    """
    a, lp, m = _check(answers, logps, mask)
    s = sample_scores(lp, m, aggregation=aggregation)
    if aggregation == "mean_log":
        s = jnp.exp(s)
    valid = a >= 0
    total = jnp.sum(jnp.where((a[:, None] == a[None, :]) & valid[None, :], s[None, :], 0.0), 1)
    total = jnp.where(valid, total, -jnp.inf)
    return a[jnp.argmax(total)]
