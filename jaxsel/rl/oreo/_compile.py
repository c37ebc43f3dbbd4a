"""XLA options for programs whose compile time dominates their run time.

XLA's CPU backend spends most of a small program's compile time in LLVM optimisation passes, and
a ``jax.random`` threefry draw unrolls into a large program: a jitted ``init_params`` takes ~9 s
of CPU to compile with the default passes and ~2 s without them. Data generation, parameter
initialisation, the tests and the quick smoke configuration run each program once, so they skip
those passes; the training steps of the full benchmark keep them.
"""

from __future__ import annotations

FAST_COMPILE: dict[str, bool | int] = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}
