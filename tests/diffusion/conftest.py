"""Diffusion tests: a jit with cheaper XLA:CPU code generation.

These tests check numerics of small programs; on a 2-core CPU their time is dominated by XLA:CPU
code generation. ``xla_backend_optimization_level=0`` cuts it about threefold (measured on the FK
sampler: 9.5 s -> 3.5 s CPU) and, where the option exists (jax 0.10), turning the new fusion
emitters off halves it again (FK, 16 keys: 5-6 s -> 2.1-2.6 s on the loaded machine). Results are
the same up to float rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

_OPTIONS = [
    {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False},
    {"xla_backend_optimization_level": 0},
]


def _compile(lowered):
    while True:
        try:
            return lowered.compile(compiler_options=_OPTIONS[0])
        except Exception as e:  # an option this XLA does not know: drop it for the session
            if "No such compile option" not in str(e) or len(_OPTIONS) == 1:
                raise
            _OPTIONS.pop(0)


def _fast_jit(fn):
    compiled = {}

    def call(*args):
        sig = jax.tree.map(lambda a: (jnp.shape(a), str(jnp.result_type(a))), args)
        key = str(sig)
        if key not in compiled:
            compiled[key] = _compile(jax.jit(fn).lower(*args))
        return compiled[key](*args)

    return call


@pytest.fixture(scope="session")
def fast_jit():
    """``fast_jit(f)(*args)``: like ``jax.jit(f)(*args)``, compiled with cheap code generation."""
    return _fast_jit
