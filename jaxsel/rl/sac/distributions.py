"""Tanh-squashed diagonal Gaussian policy distribution (SAC, Haarnoja et al. 2018, appendix C).

An action is ``a = bias + scale * tanh(u)`` with ``u ~ N(mean, diag(std^2))``, ``scale = (high - low)
/ 2`` and ``bias = (high + low) / 2``. By the change of variables,

    log pi(a) = sum_j [ log N(u_j; mean_j, std_j) - log(1 - tanh(u_j)^2) - log scale_j ],

and ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2 u))`` is evaluated in that form because it stays
finite for large ``|u|`` where ``1 - tanh(u)^2`` underflows to 0 (the form used by SpinningUp, rlax).

All functions are unbatched: ``mean``, ``log_std`` and ``u`` have shape ``[A]``; vmap over a batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jaxsel.rl.sac._checks import check_rank, check_same_shape

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def tanh_log_det_jacobian(u: Array) -> Array:
    """``log |d tanh(u) / du| = 2 (log 2 - u - softplus(-2 u))``, elementwise, shape of ``u``."""
    return 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))


def _scale_bias(low: ArrayLike, high: ArrayLike, dim: int, dtype) -> tuple[Array, Array]:
    low = jnp.broadcast_to(jnp.asarray(low, dtype), (dim,))
    high = jnp.broadcast_to(jnp.asarray(high, dtype), (dim,))
    return (high - low) / 2, (high + low) / 2


def squash_action(u: Array, *, low: ArrayLike = -1.0, high: ArrayLike = 1.0) -> Array:
    """``bias + scale * tanh(u)``: pre-tanh ``u`` ``[A]`` to an action in ``[low, high]`` ``[A]``."""
    check_rank(1, u=u)
    scale, bias = _scale_bias(low, high, u.shape[-1], u.dtype)
    return bias + scale * jnp.tanh(u)


def tanh_gaussian_log_prob(
    u: Array, mean: Array, log_std: Array, *, low: ArrayLike = -1.0, high: ArrayLike = 1.0
) -> Array:
    """Log-density of the squashed action ``squash_action(u)`` under the tanh-Gaussian policy.

    Args:
      u: pre-tanh sample, ``[A]``.
      mean, log_std: Gaussian parameters, ``[A]``.
      low, high: action bounds (scalars or ``[A]``); contribute ``-sum log((high - low) / 2)``.

    Returns:
      scalar ``log pi(a)`` (density with respect to Lebesgue measure on the action box).
    """
    check_rank(1, u=u, mean=mean, log_std=log_std)
    check_same_shape(u=u, mean=mean, log_std=log_std)
    scale, _ = _scale_bias(low, high, u.shape[-1], u.dtype)
    z = (u - mean) * jnp.exp(-log_std)
    gauss = -0.5 * z**2 - log_std - _LOG_SQRT_2PI
    return jnp.sum(gauss - tanh_log_det_jacobian(u) - jnp.log(scale))


def tanh_gaussian_from_noise(
    eps: Array, mean: Array, log_std: Array, *, low: ArrayLike = -1.0, high: ArrayLike = 1.0
) -> tuple[Array, Array]:
    """The reparameterised sample for given standard-normal noise ``eps`` ``[A]``:
    ``u = mean + exp(log_std) * eps``, returns ``(squash_action(u) [A], log pi(a) [])``.

    Batched callers draw all the noise with one ``jax.random.normal`` call and vmap this, which on
    CPU is cheaper than splitting one key per row (one hash per row).
    """
    check_rank(1, eps=eps, mean=mean, log_std=log_std)
    check_same_shape(eps=eps, mean=mean, log_std=log_std)
    u = mean + jnp.exp(log_std) * eps
    return squash_action(u, low=low, high=high), tanh_gaussian_log_prob(
        u, mean, log_std, low=low, high=high
    )


def tanh_gaussian_sample(
    key: Array, mean: Array, log_std: Array, *, low: ArrayLike = -1.0, high: ArrayLike = 1.0
) -> tuple[Array, Array]:
    """Reparameterised sample ``a = squash(mean + std * eps)``, ``eps ~ N(0, I)``, and ``log pi(a)``.

    Returns:
      ``(action [A], log_prob [])``; gradients flow to ``mean`` and ``log_std`` through ``eps``.
    """
    check_rank(1, mean=mean, log_std=log_std)
    check_same_shape(mean=mean, log_std=log_std)
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return tanh_gaussian_from_noise(eps, mean, log_std, low=low, high=high)


def deterministic_action(mean: Array, *, low: ArrayLike = -1.0, high: ArrayLike = 1.0) -> Array:
    """The evaluation action ``squash(mean)`` (the mode of ``u``, pushed through the squash)."""
    return squash_action(mean, low=low, high=high)
