"""XLA options for programs whose compile time dominates their run time, and a ``jit`` using them.

XLA's CPU backend spends most of a small program's compile time in LLVM optimisation passes, and a
``jax.random`` threefry draw unrolls into a large program. Programs that run once (data generation,
parameter initialisation, tests on small shapes, quick smoke configurations) skip those passes;
the hot loops of a benchmark keep them. Results agree with the default options up to float
rounding.

``compiler_options`` can only be given to a top-level ``jax.jit``; :func:`fast_jit` therefore
returns a function that compiles with them when called at top level and is traced plainly into the
caller's program when called under ``jit`` / ``vmap`` (the caller's options then apply).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

FAST_COMPILE: dict[str, bool | int] = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}
"""``compiler_options`` for a top-level :func:`jax.jit`."""
if jax.__version_info__ < (0, 11):
    # XLA:CPU's fusion emitters compile slowly; later XLA versions dropped this switch (an unknown
    # option is an error at compile time)
    FAST_COMPILE["xla_cpu_use_fusion_emitters"] = False


def _traced(args: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args))


def fast_jit(
    fn: Callable[..., Any] | None = None, /, *, fast: bool = True, **jit_kwargs: Any
) -> Any:
    """``jax.jit(fn, **jit_kwargs)`` compiled with :data:`FAST_COMPILE` when ``fast``.

    Called with traced arguments (inside another ``jit`` or ``vmap``) it traces ``fn`` into the
    caller. ``fast=False`` gives plain ``jax.jit``. Usable as a decorator: ``@fast_jit`` or
    ``@fast_jit(static_argnames=...)``.
    """
    if fn is None:
        return functools.partial(fast_jit, fast=fast, **jit_kwargs)
    compiled = jax.jit(fn, compiler_options=FAST_COMPILE if fast else None, **jit_kwargs)
    if not fast:
        return compiled

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if _traced((args, kwargs)):
            return fn(*args, **kwargs)
        return compiled(*args, **kwargs)

    return call


@functools.cache
def cached_jit(fn: Callable[..., Any], fast: bool, static: tuple[str, ...]) -> Callable[..., Any]:
    """:func:`fast_jit` of a module-level function, built once per ``(fn, fast, static)``."""
    return fast_jit(fn, fast=fast, static_argnames=static)
