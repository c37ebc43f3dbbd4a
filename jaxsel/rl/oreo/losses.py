"""OREO soft-Bellman losses, implicit rewards and the DPO baseline (pure, unbatched).

OREO (Wang et al. 2024, "Offline Reinforcement Learning for LLM Multi-Step Reasoning",
arXiv 2412.16145) treats generation as a token-level MDP with a sparse terminal reward ``R``.
Under KL-regularised RL the optimal policy and soft value satisfy the soft Bellman equation

    V(s_t) - V(s_{t+1}) = r_t - beta * log(pi / pi_ref)(a_t | s_t),

and with ``r_t = 0`` before the end and ``V(s_T) = R`` it telescopes into a path consistency

    V(s_t) = R - beta * sum_{i >= t} log(pi / pi_ref)(a_i | s_i).

Every function here takes ONE response: per-token log-probabilities of the taken actions under
the policy and the reference, ``[T]``; values ``V(s_t)`` of the state *before* action ``a_t``
(read at the position whose logits predict ``a_t``), ``[T]``; a scalar reward; and a ``[T]``
mask that is 1 on response tokens and 0 on padding. Callers batch with ``jax.vmap``. The value
and policy losses take the same arrays in the same order: ``(logp, ref_logp, values, reward[,
step_starts], mask)``.

Shapes, ranks and lengths are checked at trace time (``ValueError`` naming the argument). A mask
that selects no token is only detected eagerly (on concrete arrays): under ``jit`` / ``vmap`` its
value is unknown, and such a response contributes a loss of 0 (:func:`masked_mean`).

The stop-gradients follow the paper (Eq. 8, 9) and the authors' code (jwhj/OREO,
``pcl_trainer.py``): the critic sees the policy log-ratios as constants; the actor sees the value
as a constant and, at position ``t``, only its own log-ratio ``log(pi/pi_ref)(a_t|s_t)`` (or, at
step level, the log-ratios of the tokens of the step that starts at ``t``) carries gradient,
while the sum beyond it is held fixed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "dpo_loss",
    "implicit_rewards",
    "kl_regularizer",
    "masked_mean",
    "oreo_policy_loss",
    "oreo_step_policy_loss",
    "oreo_step_value_loss",
    "oreo_value_loss",
    "reverse_cumsum",
    "step_next_start",
    "token_kl",
]


# ----------------------------------------------------------------------------------------------
# validation


def _is_concrete(x: Array) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_seq(name: str, x: ArrayLike, length: int | None = None) -> Array:
    x = jnp.asarray(x)
    if x.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D per-token array [T] (unbatched; vmap over the batch), "
            f"got shape {x.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (T=0): a response needs at least one token")
    if length is not None and x.shape[0] != length:
        raise ValueError(
            f"{name} has length {x.shape[0]} but the other per-token arrays have length {length}"
        )
    return x


def _check_mask(mask: ArrayLike | None, length: int, name: str = "mask") -> Array:
    if mask is None:
        return jnp.ones((length,), jnp.float32)
    m = jnp.asarray(mask)
    if m.shape != (length,):
        raise ValueError(
            f"{name} must have shape ({length},) like the per-token arrays, got {m.shape}"
        )
    # eager-only: a traced mask's values are unknown (module docstring)
    if _is_concrete(m) and not bool(jnp.any(m > 0)):
        raise ValueError(f"{name} selects no token: the response is empty")
    return m.astype(jnp.float32)


def _check_scalar(name: str, x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if x.ndim != 0:
        raise ValueError(f"{name} must be a scalar per response, got shape {x.shape}")
    return x


def _check_tokens(
    logp: ArrayLike, ref_logp: ArrayLike, mask: ArrayLike | None, *extra: tuple[str, ArrayLike]
) -> tuple[Array, ...]:
    logp = _check_seq("logp", logp)
    t = logp.shape[0]
    ref_logp = _check_seq("ref_logp", ref_logp, t)
    others = tuple(_check_seq(n, v, t) for n, v in extra)
    m = _check_mask(mask, t)
    return (logp, ref_logp, *others, m)


# ----------------------------------------------------------------------------------------------
# small pure helpers


def masked_mean(x: Array, mask: Array) -> Array:
    """``sum(x * mask) / max(sum(mask), 1)``: the mean over the selected positions (0 if none)."""
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def reverse_cumsum(x: Array) -> Array:
    """``out[t] = sum_{i >= t} x[i]`` for a 1-D array."""
    return jnp.flip(jnp.cumsum(jnp.flip(x, -1), -1), -1)


def step_next_start(step_starts: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """Index of the next step start strictly after each position (``T`` where there is none).

    Args:
      step_starts: ``[T]`` bool, True at the first token of each reasoning step.
      mask: optional ``[T]`` response mask; starts on padding are ignored.

    Returns:
      ``[T]`` int32 ``n`` with ``n[t] = min{j > t : step_starts[j]}`` or ``T``.
    """
    s = jnp.asarray(step_starts).astype(bool)
    t = s.shape[0]
    if mask is not None:
        s = s & (jnp.asarray(mask) > 0)
    idx = jnp.where(s, jnp.arange(t), t)
    # shift left by one, then a reverse running minimum gives the first start after t
    shifted = jnp.concatenate([idx[1:], jnp.array([t], idx.dtype)])
    return jax.lax.cummin(shifted, reverse=True).astype(jnp.int32)


def implicit_rewards(
    logp: ArrayLike, ref_logp: ArrayLike, mask: ArrayLike | None = None, *, beta: float
) -> Array:
    """Implicit token rewards ``beta * log(pi / pi_ref)(a_t | s_t)`` (Rafailov et al. 2024,
    "From r to Q*", arXiv 2404.12358), zero on padding.

    Args:
      logp, ref_logp: ``[T]`` log-probs of the taken tokens under the policy and the reference.
      mask: ``[T]`` 1 on response tokens (default all ones).
      beta: KL coefficient.

    Returns:
      ``[T]`` per-token rewards.
    """
    logp, ref_logp, m = _check_tokens(logp, ref_logp, mask)
    return beta * (logp - ref_logp) * m


# ----------------------------------------------------------------------------------------------
# token-level OREO


def oreo_value_loss(
    logp: ArrayLike,
    ref_logp: ArrayLike,
    values: ArrayLike,
    reward: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    beta: float,
) -> Array:
    """OREO value (critic) loss, Eq. 8 of arXiv 2412.16145.

        L_V = mean_t ( V(s_t) - R + beta * sum_{i >= t} log(pi/pi_ref)(a_i | s_i) )^2

    The mean runs over response tokens (``mask``); the policy log-ratios are held fixed
    (``stop_gradient``), so only ``values`` receives gradient.

    Args:
      logp, ref_logp: ``[T]`` log-probs of the taken tokens under pi and pi_ref.
      values: ``[T]`` ``V(s_t)``, the value of the state before token ``t``.
      reward: scalar terminal reward ``R`` (0/1 in the paper).
      mask: ``[T]`` response mask (default all ones).
      beta: KL coefficient (paper: 0.03).

    Returns:
      scalar loss.
    """
    logp, ref_logp, values, m = _check_tokens(logp, ref_logp, mask, ("values", values))
    reward = _check_scalar("reward", reward)
    ratio = jax.lax.stop_gradient((logp - ref_logp) * m)
    future = beta * reverse_cumsum(ratio)
    err = values - reward + future
    return masked_mean(jnp.square(err), m)


def oreo_policy_loss(
    logp: ArrayLike,
    ref_logp: ArrayLike,
    values: ArrayLike,
    reward: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    beta: float,
) -> Array:
    """OREO policy (actor) loss without the KL term, Eq. 9 of arXiv 2412.16145.

        L_pi = mean_t ( V(s_t) - R + beta * log(pi/pi_ref)(a_t | s_t)
                        + sg[ beta * sum_{i > t} log(pi/pi_ref)(a_i | s_i) ] )^2

    ``V`` is held fixed; only the log-ratio of token ``t`` carries gradient in term ``t``.
    Add ``alpha * kl_regularizer(...)`` (paper: alpha = 0.01 token level) for the full Eq. 9.

    Args:
      logp, ref_logp: ``[T]`` log-probs of the taken tokens under pi and pi_ref
        (gradient flows through ``logp``).
      values: ``[T]`` ``V(s_t)`` (treated as a constant).
      reward: scalar terminal reward ``R``.
      mask: ``[T]`` response mask.
      beta: KL coefficient.

    Returns:
      scalar loss.
    """
    logp, ref_logp, values, m = _check_tokens(logp, ref_logp, mask, ("values", values))
    reward = _check_scalar("reward", reward)
    ratio = (logp - ref_logp) * m
    # sum_{i>t} = sum_{i>=t} - ratio_t, evaluated on constants
    beyond = jax.lax.stop_gradient(reverse_cumsum(ratio) - ratio)
    err = jax.lax.stop_gradient(values) - reward + beta * (ratio + beyond)
    return masked_mean(jnp.square(err), m)


def token_kl(policy_logits: ArrayLike, ref_logits: ArrayLike) -> Array:
    """Full-vocabulary ``KL(pi(.|s_t) || pi_ref(.|s_t))`` per position, ``[T, V] -> [T]``."""
    p = jnp.asarray(policy_logits)
    q = jnp.asarray(ref_logits)
    if p.ndim != 2 or p.shape != q.shape:
        raise ValueError(
            f"policy_logits and ref_logits must both be [T, vocab] with equal shapes, "
            f"got {p.shape} and {q.shape}"
        )
    logp = jax.nn.log_softmax(p.astype(jnp.float32), axis=-1)
    logq = jax.nn.log_softmax(q.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def kl_regularizer(
    policy_logits: ArrayLike, ref_logits: ArrayLike, mask: ArrayLike | None = None
) -> Array:
    """``mean_t KL(pi(.|s_t) || pi_ref(.|s_t))`` over response positions (the alpha term of Eq. 9).

    Args:
      policy_logits, ref_logits: ``[T, vocab]`` next-token logits at the response positions.
      mask: ``[T]`` response mask.
    """
    kl = token_kl(policy_logits, ref_logits)
    m = _check_mask(mask, kl.shape[0])
    return masked_mean(kl, m)


# ----------------------------------------------------------------------------------------------
# step-level OREO


def _check_steps(step_starts: ArrayLike, length: int) -> Array:
    s = jnp.asarray(step_starts)
    if s.shape != (length,):
        raise ValueError(
            f"step_starts must have shape ({length},) like the per-token arrays, got {s.shape}"
        )
    return s.astype(bool)


def oreo_step_value_loss(
    logp: ArrayLike,
    ref_logp: ArrayLike,
    values: ArrayLike,
    reward: ArrayLike,
    step_starts: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    beta: float,
) -> Array:
    """Step-level OREO value loss: Eq. 8 with one state per reasoning step.

        L_V = mean_{k} ( V(s_{t_k}) - R + beta * sum_{i >= t_k} log(pi/pi_ref)(a_i | s_i) )^2

    where ``t_k`` are the first tokens of the steps (``step_starts``). With every token a step
    this equals :func:`oreo_value_loss`.

    Args:
      logp, ref_logp: ``[T]`` log-probs of the taken tokens.
      values: ``[T]``; only entries at step starts are used.
      reward: scalar terminal reward.
      step_starts: ``[T]`` bool, True at the first token of each step.
      mask: ``[T]`` response mask.
      beta: KL coefficient.
    """
    logp, ref_logp, values, m = _check_tokens(logp, ref_logp, mask, ("values", values))
    reward = _check_scalar("reward", reward)
    s = _check_steps(step_starts, logp.shape[0])
    ratio = jax.lax.stop_gradient((logp - ref_logp) * m)
    err = values - reward + beta * reverse_cumsum(ratio)
    return masked_mean(jnp.square(err), m * s)


def oreo_step_policy_loss(
    logp: ArrayLike,
    ref_logp: ArrayLike,
    values: ArrayLike,
    reward: ArrayLike,
    step_starts: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    beta: float,
) -> Array:
    """Step-level OREO policy loss: Eq. 9 where an action is a whole reasoning step.

        L_pi = mean_k ( V(s_{t_k}) - R + beta * sum_{t_k <= i < t_{k+1}} log(pi/pi_ref)(a_i|s_i)
                        + sg[ beta * sum_{i >= t_{k+1}} log(pi/pi_ref)(a_i|s_i) ] )^2

    The log-ratios of the tokens of step ``k`` carry gradient; later steps and ``V`` are held
    fixed. With every token a step this equals :func:`oreo_policy_loss`.
    """
    logp, ref_logp, values, m = _check_tokens(logp, ref_logp, mask, ("values", values))
    reward = _check_scalar("reward", reward)
    s = _check_steps(step_starts, logp.shape[0])
    ratio = (logp - ref_logp) * m
    cum = reverse_cumsum(ratio)
    nxt = step_next_start(s, m)
    cum_next = jnp.concatenate([cum, jnp.zeros((1,), cum.dtype)])[nxt]
    own = cum - cum_next  # this step's tokens, with gradient
    err = jax.lax.stop_gradient(values) - reward + beta * (own + jax.lax.stop_gradient(cum_next))
    return masked_mean(jnp.square(err), m * s)


# ----------------------------------------------------------------------------------------------
# DPO baseline


def dpo_loss(
    logp_chosen: ArrayLike,
    ref_logp_chosen: ArrayLike,
    logp_rejected: ArrayLike,
    ref_logp_rejected: ArrayLike,
    mask_chosen: ArrayLike | None = None,
    mask_rejected: ArrayLike | None = None,
    *,
    beta: float,
) -> Array:
    """DPO loss for one preference pair (Rafailov et al. 2023, arXiv 2305.18290).

        L = -log sigmoid( beta * [ sum_t log(pi/pi_ref)(y_w) - sum_t log(pi/pi_ref)(y_l) ] )

    i.e. the difference of the summed implicit token rewards of :func:`implicit_rewards`.
    Chosen and rejected responses may have different lengths.
    """
    lc, rc, mc = _check_tokens(logp_chosen, ref_logp_chosen, mask_chosen)
    lr = _check_seq("logp_rejected", logp_rejected)
    rr = _check_seq("ref_logp_rejected", ref_logp_rejected, lr.shape[0])
    mr = _check_mask(mask_rejected, lr.shape[0], "mask_rejected")
    margin = jnp.sum((lc - rc) * mc) - jnp.sum((lr - rr) * mr)
    return -jax.nn.log_sigmoid(beta * margin)
