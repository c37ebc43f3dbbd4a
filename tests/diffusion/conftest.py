"""Diffusion tests: a jit with cheaper XLA:CPU code generation (compilation dominates these
small-program numerics checks on a 2-core CPU; results agree up to float rounding)."""

from __future__ import annotations

import pytest

from jaxsel.utils import fast_jit as _fast_jit


@pytest.fixture(scope="session")
def fast_jit():
    """``fast_jit(f)(*args)``: like ``jax.jit(f)(*args)``, compiled with :data:`FAST_COMPILE`."""
    return _fast_jit
