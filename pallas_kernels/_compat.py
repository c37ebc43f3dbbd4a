"""Small compatibility layer for Pallas API drift between jax 0.10.2, 0.11 and 0.12."""

from __future__ import annotations

import jax

JAX_VERSION: tuple[int, ...] = tuple(int(p) for p in jax.__version__.split(".")[:3] if p.isdigit())


def has_mosaic_gpu() -> bool:
    """True when ``jax.experimental.pallas.mosaic_gpu`` imports (it needs jaxlib's Mosaic GPU)."""
    try:
        from jax.experimental.pallas import mosaic_gpu  # noqa: F401
    except Exception:
        return False
    return True


def has_pallas_tpu() -> bool:
    """True when ``jax.experimental.pallas.tpu`` imports."""
    try:
        from jax.experimental.pallas import tpu  # noqa: F401
    except Exception:
        return False
    return True
