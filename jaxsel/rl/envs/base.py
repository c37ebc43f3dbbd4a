"""Functional environment API (gymnax style) and the auto-reset step used by training loops.

An environment is a stateless object with pure methods; everything that changes lives in an explicit
state pytree and everything that configures it in an explicit params pytree::

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated = env.step(key, state, action, params)

``terminated`` means the MDP reached an absorbing state (no bootstrap); ``truncated`` means a time
limit cut the episode (bootstrap from the next observation). Unlike gymnax, ``step`` never resets:
:func:`auto_reset_step` does, and returns the true final observation beside the reset one, so a
learner can bootstrap through truncation (Pardo et al. 2018, "Time Limits in Reinforcement Learning").
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array


@dataclasses.dataclass(frozen=True)
class Box:
    """A continuous space ``low <= x <= high`` (elementwise), like ``gymnasium.spaces.Box``."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or not self.low:
            raise ValueError(f"Box needs equal, non-empty bounds, got {self.low=} {self.high=}")
        if any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"Box needs low <= high, got {self.low=} {self.high=}")

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.low),)

    def sample(self, key: Array) -> Array:
        """Uniform sample, shape ``self.shape``."""
        low = jnp.asarray(self.low, jnp.float32)
        high = jnp.asarray(self.high, jnp.float32)
        return jax.random.uniform(key, self.shape, jnp.float32, low, high)


@dataclasses.dataclass(frozen=True)
class Discrete:
    """A discrete space ``{0, ..., n - 1}``; continuous-control learners reject it."""

    n: int

    @property
    def shape(self) -> tuple[int, ...]:
        return ()

    def sample(self, key: Array) -> Array:
        return jax.random.randint(key, (), 0, self.n)


class Environment:
    """Base class of functional environments: subclasses implement the four methods below."""

    name: str = "Environment"

    def default_params(self) -> Any:
        raise NotImplementedError

    def reset(self, key: Array, params: Any) -> tuple[Array, Any]:
        """Returns ``(obs, state)`` of a fresh episode."""
        raise NotImplementedError

    def step(self, key: Array, state: Any, action: Array, params: Any) -> tuple[Array, ...]:
        """Returns ``(obs, state, reward, terminated, truncated)``; never resets."""
        raise NotImplementedError

    def observation_space(self, params: Any) -> Box:
        raise NotImplementedError

    def action_space(self, params: Any) -> Box | Discrete:
        raise NotImplementedError

    def max_episode_steps(self, params: Any) -> int:
        """The time limit as a Python int (used as a static scan length by evaluation)."""
        return int(params.max_steps_in_episode)


class AutoResetStep(NamedTuple):
    """One step of :func:`auto_reset_step` (all unbatched)."""

    obs: Array  # observation to act on next: the reset one where the episode ended
    state: Any  # state to continue from (likewise reset)
    reward: Array
    terminated: Array
    truncated: Array
    final_obs: Array  # the true s_{t+1} before any reset: the one to bootstrap from


def auto_reset_step(
    env: Environment, key: Array, state: Any, action: Array, params: Any
) -> AutoResetStep:
    """Steps ``env`` and resets it where the episode ended (terminated or truncated)."""
    key_step, key_reset = jax.random.split(key)
    obs, next_state, reward, terminated, truncated = env.step(key_step, state, action, params)
    reset_obs, reset_state = env.reset(key_reset, params)
    done = jnp.logical_or(terminated, truncated)
    cont_state = jax.tree.map(lambda r, s: jnp.where(done, r, s), reset_state, next_state)
    cont_obs = jnp.where(done, reset_obs, obs)
    return AutoResetStep(cont_obs, cont_state, reward, terminated, truncated, obs)
