"""Trace-time argument checks of the SAC math: ``ValueError`` naming the argument and its shape."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def check_rank(rank: int, **arrays: Any) -> None:
    """Raises ``ValueError`` for the first named array whose rank is not ``rank``."""
    for name, x in arrays.items():
        if jnp.ndim(x) != rank:
            raise ValueError(f"{name} must have rank {rank}, got shape {jnp.shape(x)}")


def check_same_shape(**arrays: Any) -> None:
    """Raises ``ValueError`` unless every named array has the first one's shape."""
    (first, x0), *rest = arrays.items()
    for name, x in rest:
        if jnp.shape(x) != jnp.shape(x0):
            raise ValueError(
                f"{name} must have the shape of {first} {jnp.shape(x0)}, got {jnp.shape(x)}"
            )
