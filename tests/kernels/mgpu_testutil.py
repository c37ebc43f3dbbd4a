"""Helpers for the mosaic_gpu tests (a module with a unique name: conftest.py is not importable
when several test folders have one)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lowers_for_cuda(fn, *args) -> str:
    """StableHLO text of ``fn`` lowered for CUDA on this (possibly CPU-only) machine.

    This runs the Pallas -> Mosaic GPU lowering, layout inference included; the PTX compile still
    needs a GPU.
    """
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def to_f32(x):
    return jnp.asarray(x).astype(jnp.float32)
