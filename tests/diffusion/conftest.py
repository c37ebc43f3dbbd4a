"""Diffusion tests: a jit that skips LLVM optimisation.

These tests check numerics of small programs; on a 2-core CPU their time is dominated by XLA:CPU
code generation, which ``xla_backend_optimization_level=0`` cuts about threefold (measured on the
FK sampler: 9.5 s -> 3.5 s CPU). Results are the same up to float rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

_OPTIONS = {"xla_backend_optimization_level": 0}


def _fast_jit(fn):
    compiled = {}

    def call(*args):
        sig = jax.tree.map(lambda a: (jnp.shape(a), str(jnp.result_type(a))), args)
        key = str(sig)
        if key not in compiled:
            compiled[key] = jax.jit(fn).lower(*args).compile(compiler_options=_OPTIONS)
        return compiled[key](*args)

    return call


@pytest.fixture(scope="session")
def fast_jit():
    """``fast_jit(f)(*args)``: like ``jax.jit(f)(*args)``, compiled without LLVM optimisation."""
    return _fast_jit
