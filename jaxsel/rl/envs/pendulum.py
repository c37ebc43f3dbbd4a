"""Pendulum-v1 as a pure-JAX functional environment, a port of gymnasium's ``PendulumEnv``.

Dynamics (gymnasium 1.x, ``classic_control/pendulum.py``), with u clipped to ``[-2, 2]``::

    cost      = normalize(theta)^2 + 0.1 * theta_dot^2 + 0.001 * u^2
    theta_dot' = clip(theta_dot + (3 g / (2 l) sin(theta) + 3 / (m l^2) u) dt, -8, 8)
    theta'     = theta + theta_dot' dt

observation ``[cos theta, sin theta, theta_dot]``, reward ``-cost``, never terminates, truncated after
200 steps (gymnasium's ``TimeLimit``). Reset draws ``theta ~ U(-pi, pi)``, ``theta_dot ~ U(-1, 1)``.
Computed in float32 (gymnasium uses float64 internally; the step-by-step test bounds the difference).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxsel.rl.envs.base import Box, Environment


class PendulumParams(NamedTuple):
    max_speed: float = 8.0
    max_torque: float = 2.0
    dt: float = 0.05
    g: float = 10.0
    m: float = 1.0
    l: float = 1.0
    max_steps_in_episode: int = 200


class PendulumState(NamedTuple):
    theta: Array
    theta_dot: Array
    time: Array


def _angle_normalize(x: Array) -> Array:
    return ((x + jnp.pi) % (2 * jnp.pi)) - jnp.pi


class Pendulum(Environment):
    """Pendulum-v1 (swing up and balance); see the module docstring for the equations."""

    name = "Pendulum-v1"

    def default_params(self) -> PendulumParams:
        return PendulumParams()

    def _obs(self, state: PendulumState) -> Array:
        return jnp.stack([jnp.cos(state.theta), jnp.sin(state.theta), state.theta_dot])

    def reset(self, key: Array, params: PendulumParams) -> tuple[Array, PendulumState]:
        high = jnp.array([jnp.pi, 1.0], jnp.float32)
        th, thdot = jax.random.uniform(key, (2,), jnp.float32, -high, high)
        state = PendulumState(th, thdot, jnp.zeros((), jnp.int32))
        return self._obs(state), state

    def step(
        self, key: Array, state: PendulumState, action: Array, params: PendulumParams
    ) -> tuple[Array, PendulumState, Array, Array, Array]:
        del key  # deterministic dynamics
        u = jnp.clip(jnp.reshape(action, (-1,))[0], -params.max_torque, params.max_torque)
        th, thdot = state.theta, state.theta_dot
        cost = _angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * u**2
        accel = 3 * params.g / (2 * params.l) * jnp.sin(th) + 3.0 / (params.m * params.l**2) * u
        new_thdot = jnp.clip(thdot + accel * params.dt, -params.max_speed, params.max_speed)
        new_th = th + new_thdot * params.dt
        time = state.time + 1
        new_state = PendulumState(new_th, new_thdot, time)
        terminated = jnp.zeros((), bool)
        truncated = time >= params.max_steps_in_episode
        return self._obs(new_state), new_state, -cost, terminated, truncated

    def observation_space(self, params: PendulumParams) -> Box:
        ms = float(params.max_speed)
        return Box((-1.0, -1.0, -ms), (1.0, 1.0, ms))

    def action_space(self, params: PendulumParams) -> Box:
        mt = float(params.max_torque)
        return Box((-mt,), (mt,))
