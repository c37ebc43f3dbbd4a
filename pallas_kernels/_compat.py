"""Small compatibility layer for Pallas API drift between jax 0.10.2, 0.11 and 0.12.

What moved between the versions we support, and how it is papered over here:

- GPU interpret params: private ``jax._src.pallas.mosaic_gpu.interpret.params.InterpretGPUParams`` in
  0.10.2, public ``plgpu.InterpretGPUParams`` from 0.11.
- ``pltpu.InterpretParams`` is public in all of them; ``pltpu.CompilerParams`` likewise.
- ``interpret=`` of ``pl.pallas_call`` takes ``True`` (the generic HLO interpreter) or a params object
  (the TPU / GPU interpreters, which simulate the memory spaces); :func:`resolve_interpret` maps our
  user-facing ``interpret`` argument (``bool`` or ``"tpu"`` / ``"gpu"`` or a params object) to that.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

JAX_VERSION: tuple[int, ...] = tuple(int(p) for p in jax.__version__.split(".")[:3] if p.isdigit())


@functools.cache
def has_mosaic_gpu() -> bool:
    """True when ``jax.experimental.pallas.mosaic_gpu`` imports (it needs jaxlib's Mosaic GPU)."""
    try:
        from jax.experimental.pallas import mosaic_gpu  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def has_pallas_tpu() -> bool:
    """True when ``jax.experimental.pallas.tpu`` imports."""
    try:
        from jax.experimental.pallas import tpu  # noqa: F401
    except Exception:
        return False
    return True


def tpu_interpret_params(**kwargs: Any) -> Any:
    """``pltpu.InterpretParams(**kwargs)``: runs a TPU kernel on CPU, simulating VMEM/SMEM and DMAs."""
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.InterpretParams(**kwargs)


def gpu_interpret_params(**kwargs: Any) -> Any:
    """The Mosaic GPU interpret params (private in jax 0.10.2, ``plgpu.InterpretGPUParams`` later)."""
    try:
        from jax.experimental.pallas import mosaic_gpu as plgpu

        cls = plgpu.InterpretGPUParams
    except (ImportError, AttributeError):
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams as cls
    return cls(**kwargs)


def resolve_interpret(interpret: Any, *, kind: str = "tpu") -> Any:
    """Maps our ``interpret`` argument to what ``pl.pallas_call(interpret=...)`` expects.

    Args:
      interpret: ``False`` (compile for the device), ``True`` (generic interpreter), ``"tpu"`` or
        ``"gpu"`` (the TPU / Mosaic GPU interpreters with default params), or a params object, passed
        through unchanged.
      kind: unused for ``True``; kept so callers document which interpreter family they expect.
    """
    del kind
    if interpret is False or interpret is None:
        return False
    if interpret is True:
        return True
    if interpret == "tpu":
        return tpu_interpret_params()
    if interpret == "gpu":
        return gpu_interpret_params()
    return interpret


def tpu_compiler_params(dimension_semantics: tuple[str, ...], **kwargs: Any) -> Any:
    """``pltpu.CompilerParams`` (named ``TPUCompilerParams`` before jax 0.6; both handled)."""
    from jax.experimental.pallas import tpu as pltpu

    cls = getattr(pltpu, "CompilerParams", None) or pltpu.TPUCompilerParams
    return cls(dimension_semantics=dimension_semantics, **kwargs)


def smem_space() -> Any:
    """The TPU scalar memory space (``pltpu.SMEM``; ``pltpu.MemorySpace.SMEM`` is the same object)."""
    from jax.experimental.pallas import tpu as pltpu

    return getattr(pltpu, "SMEM", None) or pltpu.MemorySpace.SMEM
