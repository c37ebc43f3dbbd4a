"""SAC losses as pure functions of a single transition (rlax style; vmap over a batch).

Soft Actor-Critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications",
arXiv 1812.05905) with ``n`` critics and clipped double-Q (Fujimoto et al. 2018):

- target   ``y = r + discount * (min_{i in S} Qbar_i(s', a') - alpha * log pi(a'|s'))``, ``a' ~ pi(s')``,
  where ``discount = gamma^m (1 - terminated)``: a time-limit truncation still bootstraps;
- critic   ``L_Q = 1/2 sum_i (Q_i(s, a) - sg(y))^2``;
- actor    ``L_pi = sg(alpha) log pi(a|s) - min_i Q_i(s, a)``, ``a ~ pi(s)`` reparameterised;
- alpha    ``L_alpha = -log_alpha * sg(log pi(a|s) + target_entropy)``, target entropy default ``-|A|``;
- Polyak   ``theta_bar <- (1 - tau) theta_bar + tau theta``.

Band-limited target (optional; Campo et al. 2020, "Band-limited Soft Actor Critic", arXiv 2006.11431):
the paper smooths the target critic over the action with a convolution filter and gives no code. We
implement it as a Monte-Carlo box/Gaussian filter: the target critic is averaged over ``K`` perturbed
next actions ``a'_k = clip(a' + sigma * scale * eps_k, low, high)``, ``eps_k ~ N(0, I)``, i.e.
``y = r + discount * (1/K sum_k min_{i in S} Qbar_i(s', a'_k) - alpha * log pi(a'|s'))``; the entropy
term uses the unperturbed ``a'``. :func:`soft_q_target` takes ``q_next`` of shape ``[K, n]`` for it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jaxsel.rl.sac._checks import check_rank, check_same_shape


def _masked_min(q: Array, mask: Array | None) -> Array:
    """``min_{i : mask_i} q_i`` over the last axis (all critics when ``mask`` is None)."""
    if mask is None:
        return jnp.min(q, axis=-1)
    if mask.shape != q.shape[-1:]:
        raise ValueError(f"critic_mask must have shape {q.shape[-1:]}, got {mask.shape=}")
    return jnp.min(jnp.where(mask, q, jnp.inf), axis=-1)


def soft_q_target(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    q_next: Array,
    log_prob_next: ArrayLike,
    *,
    alpha: ArrayLike,
    critic_mask: Array | None = None,
) -> Array:
    """Soft Bellman target ``y`` (scalar), with gradients stopped.

    Args:
      r_t: reward (or n-step discounted reward sum), scalar.
      discount_t: ``gamma^m * (1 - terminated)``, scalar; NOT zeroed by truncation.
      q_next: target critics at the next action, ``[n]``, or ``[K, n]`` for the band-limited target
        (the mean over ``K`` perturbed next actions is taken after the min over critics).
      log_prob_next: ``log pi(a'|s')``, scalar (or ``[K]``, then averaged).
      alpha: entropy temperature.
      critic_mask: boolean ``[n]``; the min runs over critics where it is True (REDQ-style subsets).
    """
    check_rank(0, r_t=r_t)
    check_rank(0, discount_t=discount_t)
    if q_next.ndim not in (1, 2):
        raise ValueError(f"q_next must be [n] or [K, n], got {q_next.shape=}")
    min_q = _masked_min(q_next, critic_mask)
    soft_v = jnp.mean(min_q) - alpha * jnp.mean(log_prob_next)
    return jax.lax.stop_gradient(r_t + discount_t * soft_v)


def critic_loss(q_tm1: Array, target: ArrayLike) -> Array:
    """``1/2 sum_i (q_tm1_i - sg(target))^2`` for ``n`` critics ``q_tm1`` ``[n]``, scalar ``target``."""
    check_rank(1, q_tm1=q_tm1)
    check_rank(0, target=target)
    return 0.5 * jnp.sum((q_tm1 - jax.lax.stop_gradient(target)) ** 2)


def actor_loss(
    log_prob: ArrayLike, q: Array, *, alpha: ArrayLike, critic_mask: Array | None = None
) -> Array:
    """``sg(alpha) * log pi(a|s) - min_i Q_i(s, a)`` (``q`` ``[n]``, a reparameterised action)."""
    check_rank(0, log_prob=log_prob)
    check_rank(1, q=q)
    return jax.lax.stop_gradient(alpha) * log_prob - _masked_min(q, critic_mask)


def temperature_loss(log_alpha: Array, log_prob: ArrayLike, *, target_entropy: ArrayLike) -> Array:
    """``-log_alpha * sg(log pi(a|s) + target_entropy)``: raises alpha when entropy is too low."""
    check_rank(0, log_alpha=log_alpha)
    check_rank(0, log_prob=log_prob)
    return -log_alpha * jax.lax.stop_gradient(log_prob + target_entropy)


def polyak_update(target: Any, online: Any, *, tau: ArrayLike) -> Any:
    """``(1 - tau) * target + tau * online`` leafwise (tau = 0.005 in SAC)."""
    return jax.tree.map(lambda t, o: (1 - tau) * t + tau * o, target, online)


def n_step_return(
    rewards: Array, terminated: Array, truncated: Array, *, gamma: ArrayLike
) -> tuple[Array, Array, Array]:
    """n-step return of a stored sequence of ``n`` consecutive transitions of one environment.

    The sequence is cut after the first transition whose episode ended (terminated or truncated):
    with ``m`` the number of transitions kept (``1 <= m <= n``),

        G = sum_{k < m} gamma^k r_k,   discount = gamma^m (1 - terminated_{m-1}),

    and the bootstrap observation is the stored next observation of transition ``m - 1``.

    Args:
      rewards, terminated, truncated: ``[n]``.
    Returns:
      ``(G, discount, m - 1)``: scalars; the last is the index of the bootstrap transition.
    """
    check_rank(1, rewards=rewards, terminated=terminated, truncated=truncated)
    check_same_shape(rewards=rewards, terminated=terminated, truncated=truncated)
    n = rewards.shape[0]
    done = jnp.logical_or(terminated, truncated)
    # alive_k: no episode end strictly before k, i.e. transition k belongs to the first episode.
    ended_before = jnp.concatenate([jnp.zeros((1,), bool), jnp.cumsum(done[:-1]) > 0])
    alive = ~ended_before
    powers = gamma ** jnp.arange(n, dtype=rewards.dtype)
    g = jnp.sum(jnp.where(alive, powers * rewards, 0.0))
    last = jnp.sum(alive.astype(jnp.int32)) - 1
    discount = gamma ** (last + 1).astype(rewards.dtype) * (
        1.0 - terminated[last].astype(rewards.dtype)
    )
    return g, discount, last


def perturb_actions(
    key: Array,
    action: Array,
    *,
    num_samples: int,
    sigma: ArrayLike,
    low: ArrayLike = -1.0,
    high: ArrayLike = 1.0,
) -> Array:
    """``K`` perturbed copies of ``action`` ``[A]`` for the band-limited target: ``[K, A]``.

    ``a_k = clip(a + sigma * (high - low) / 2 * eps_k, low, high)``, ``eps_k ~ N(0, I)``.
    """
    check_rank(1, action=action)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples=}")
    low = jnp.asarray(low, action.dtype)
    high = jnp.asarray(high, action.dtype)
    eps = jax.random.normal(key, (num_samples, *action.shape), action.dtype)
    return jnp.clip(action + sigma * (high - low) / 2 * eps, low, high)
