"""Pure-JAX functional environments (gymnax-style API with explicit params).

gymnax itself is not used: gymnax 1.0.1 downgrades jax to 0.11 on Python 3.12 and gymnasium to 1.3,
so these are our own ports, tested step by step against gymnasium.
"""

from __future__ import annotations

from jaxsel.rl.envs.base import AutoResetStep, Box, Discrete, Environment, auto_reset_step
from jaxsel.rl.envs.mountain_car import (
    MountainCarContinuous,
    MountainCarContinuousParams,
    MountainCarContinuousState,
)
from jaxsel.rl.envs.pendulum import Pendulum, PendulumParams, PendulumState

_REGISTRY = {
    "Pendulum-v1": Pendulum,
    "MountainCarContinuous-v0": MountainCarContinuous,
}


def make(name: str) -> tuple[Environment, object]:
    """``env, params = make("Pendulum-v1")``: an environment and its default params."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment {name=}; known: {sorted(_REGISTRY)}")
    env = _REGISTRY[name]()
    return env, env.default_params()


__all__ = [
    "AutoResetStep",
    "Box",
    "Discrete",
    "Environment",
    "MountainCarContinuous",
    "MountainCarContinuousParams",
    "MountainCarContinuousState",
    "Pendulum",
    "PendulumParams",
    "PendulumState",
    "auto_reset_step",
    "make",
]
