"""MountainCarContinuous-v0 as a pure-JAX functional environment (port of gymnasium's
``Continuous_MountainCarEnv``).

Dynamics, with force ``f = clip(a, -1, 1)``::

    v' = clip(v + 0.0015 f - 0.0025 cos(3 x), -0.07, 0.07)
    x' = clip(x + v', -1.2, 0.6);   v' = 0 if x' == -1.2 and v' < 0
    terminated = x' >= 0.45 and v' >= goal_velocity
    reward = 100 * terminated - 0.1 a^2

observation ``[x, v]``, truncated after 999 steps. Reset draws ``x ~ U(-0.6, -0.4)``, ``v = 0``.
Note that the reward penalises the *unclipped* action, as gymnasium does.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxsel.rl.envs.base import Box, Environment


class MountainCarContinuousParams(NamedTuple):
    min_action: float = -1.0
    max_action: float = 1.0
    min_position: float = -1.2
    max_position: float = 0.6
    max_speed: float = 0.07
    goal_position: float = 0.45
    goal_velocity: float = 0.0
    power: float = 0.0015
    max_steps_in_episode: int = 999


class MountainCarContinuousState(NamedTuple):
    position: Array
    velocity: Array
    time: Array


class MountainCarContinuous(Environment):
    """MountainCarContinuous-v0; see the module docstring for the equations."""

    name = "MountainCarContinuous-v0"

    def default_params(self) -> MountainCarContinuousParams:
        return MountainCarContinuousParams()

    def reset(
        self, key: Array, params: MountainCarContinuousParams
    ) -> tuple[Array, MountainCarContinuousState]:
        pos = jax.random.uniform(key, (), jnp.float32, -0.6, -0.4)
        state = MountainCarContinuousState(
            pos, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        )
        return jnp.stack([state.position, state.velocity]), state

    def step(
        self,
        key: Array,
        state: MountainCarContinuousState,
        action: Array,
        params: MountainCarContinuousParams,
    ) -> tuple[Array, MountainCarContinuousState, Array, Array, Array]:
        del key
        a = jnp.reshape(action, (-1,))[0]
        force = jnp.clip(a, params.min_action, params.max_action)
        v = state.velocity + force * params.power - 0.0025 * jnp.cos(3 * state.position)
        v = jnp.clip(v, -params.max_speed, params.max_speed)
        x = jnp.clip(state.position + v, params.min_position, params.max_position)
        v = jnp.where((x == params.min_position) & (v < 0), 0.0, v)
        terminated = (x >= params.goal_position) & (v >= params.goal_velocity)
        reward = jnp.where(terminated, 100.0, 0.0) - 0.1 * a**2
        time = state.time + 1
        truncated = time >= params.max_steps_in_episode
        new_state = MountainCarContinuousState(x, v, time)
        return jnp.stack([x, v]), new_state, reward, terminated, truncated

    def observation_space(self, params: MountainCarContinuousParams) -> Box:
        p = params
        return Box(
            (float(p.min_position), -float(p.max_speed)),
            (float(p.max_position), float(p.max_speed)),
        )

    def action_space(self, params: MountainCarContinuousParams) -> Box:
        return Box((float(params.min_action),), (float(params.max_action),))
