"""Shared helpers for the Pallas kernel tests: which interpreter runs each backend here."""

from __future__ import annotations

import jax
import pytest

#: (implementation, interpret mode when not on its device). ``True`` = the generic HLO interpreter,
#: ``"tpu"`` = ``pltpu.InterpretParams()`` (simulated VMEM/SMEM).
KERNEL_BACKENDS = [("mosaic_tpu", True), ("mosaic_tpu", "tpu")]


def interpret_for(implementation: str, mode, pallas_interpret: bool):
    """``False`` when the backend runs natively on this device, else the interpreter ``mode``."""
    native = {"mosaic_tpu": "tpu", "mosaic_gpu": "gpu", "triton": "gpu"}.get(implementation)
    if native is None:
        return False
    if not pallas_interpret and jax.default_backend() == native:
        return False
    return mode


@pytest.fixture(params=KERNEL_BACKENDS, ids=lambda p: f"{p[0]}-{p[1]}")
def kernel_backend(request, pallas_interpret):
    impl, mode = request.param
    return impl, interpret_for(impl, mode, pallas_interpret)


@pytest.fixture(
    params=[
        pytest.param(("mosaic_tpu", "tpu"), id="mosaic_tpu-tpu"),
        pytest.param(("mosaic_tpu", True), id="mosaic_tpu-True", marks=pytest.mark.slow),
    ]
)
def kernel_backend_tpu_first(request, pallas_interpret):
    """Like ``kernel_backend``, with the generic-interpreter run moved to ``-m slow`` (time budget)."""
    impl, mode = request.param
    return impl, interpret_for(impl, mode, pallas_interpret)
