"""Soft-Bellman learners: SAC (continuous control) and OREO (offline RL for multi-step reasoning).

- :mod:`jaxsel.rl.sac` -- Soft Actor-Critic: pure losses and a jitted, seed-vmappable training loop.
- :mod:`jaxsel.rl.envs` -- pure-JAX functional environments (Pendulum-v1, MountainCarContinuous-v0).
"""

from __future__ import annotations

from jaxsel.rl import envs, sac

__all__ = ["envs", "sac"]
