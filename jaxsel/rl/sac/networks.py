"""Actor and critic-ensemble MLPs as pure functions over plain pytrees of arrays.

Parameters are ``list[dict(w, b)]``; weights and biases start as ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
(PyTorch's ``nn.Linear`` default, which SB3/RL Zoo SAC uses). The critic ensemble stacks ``n`` critics
on a leading axis and evaluates them with one vmap, so ``n`` critics cost one batched matmul each.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import Array

Params = list[dict[str, Array]]


def mlp_init(key: Array, sizes: Sequence[int]) -> Params:
    """Parameters of an MLP with layer widths ``sizes = (in, hidden..., out)``."""
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes must be >= 2 positive widths, got {tuple(sizes)=}")
    params = []
    for k, (fan_in, fan_out) in zip(
        jax.random.split(key, len(sizes) - 1), itertools.pairwise(sizes)
    ):
        kw, kb = jax.random.split(k)
        bound = 1.0 / jnp.sqrt(fan_in)
        w = jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound)
        b = jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)
        params.append({"w": w, "b": b})
    return params


def mlp_apply(params: Params, x: Array) -> Array:
    """ReLU MLP, linear last layer: ``x [..., in] -> [..., out]``."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def actor_init(key: Array, obs_dim: int, action_dim: int, hidden: Sequence[int]) -> Params:
    """Actor MLP ``obs [O] -> (mean, log_std) [2A]``."""
    return mlp_init(key, (obs_dim, *hidden, 2 * action_dim))


def actor_apply(
    params: Params, obs: Array, *, log_std_min: float = -20.0, log_std_max: float = 2.0
) -> tuple[Array, Array]:
    """``obs [O] -> (mean [A], log_std [A])``, ``log_std`` clipped to ``[log_std_min, log_std_max]``
    (SB3's bounds)."""
    out = mlp_apply(params, obs)
    mean, log_std = jnp.split(out, 2, axis=-1)
    return mean, jnp.clip(log_std, log_std_min, log_std_max)


def critic_init(
    key: Array, obs_dim: int, action_dim: int, hidden: Sequence[int], num_critics: int
) -> Params:
    """``num_critics`` independent Q-networks ``(obs, action) -> Q``, stacked on a leading axis."""
    keys = jax.random.split(key, num_critics)
    return jax.vmap(lambda k: mlp_init(k, (obs_dim + action_dim, *hidden, 1)))(keys)


def critic_apply(params: Params, obs: Array, action: Array) -> Array:
    """All critics at one ``(obs [O], action [A])``: ``Q [n]``."""
    x = jnp.concatenate([obs, action], axis=-1)
    return jax.vmap(lambda p: mlp_apply(p, x)[..., 0])(params)
