"""Soft-Bellman learners: SAC (continuous control) and OREO (offline RL for multi-step reasoning).

- :mod:`jaxsel.rl.sac` -- Soft Actor-Critic: pure losses and a jitted, seed-vmappable training loop.
- :mod:`jaxsel.rl.envs` -- pure-JAX functional environments (Pendulum-v1, MountainCarContinuous-v0).
- :mod:`jaxsel.rl.oreo` -- OREO, imported lazily on first access (so ``import jaxsel.rl`` never
  depends on it).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from jaxsel.rl import envs, sac

__all__ = ["envs", "sac"]
if importlib.util.find_spec("jaxsel.rl.oreo") is not None:
    __all__.append("oreo")


def __getattr__(name: str) -> Any:
    if name == "oreo":
        module = importlib.import_module("jaxsel.rl.oreo")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'jaxsel.rl' has no attribute {name!r}")
