"""Fixtures for the ``mosaic_gpu`` backend tests: on CPU they run in the Mosaic GPU interpreter."""

from __future__ import annotations

import jax
import pytest

from pallas_kernels import _compat


@pytest.fixture(scope="session")
def mgpu_interpret(pallas_interpret):
    """``interpret`` for ``implementation="mosaic_gpu"``: the GPU interpreter on CPU, ``False`` on a
    GPU (unless ``JAXSEL_PALLAS_INTERPRET=1``); skips with the reason where Mosaic GPU is missing."""
    if not _compat.has_mosaic_gpu():
        pytest.skip("jax.experimental.pallas.mosaic_gpu does not import here (no Mosaic GPU)")
    try:
        _compat.gpu_interpret_params()
    except Exception as e:  # pragma: no cover - depends on the jax build
        pytest.skip(f"no Mosaic GPU interpreter in jax {jax.__version__}: {e}")
    on_gpu = jax.default_backend() == "gpu"
    return "gpu" if (pallas_interpret or not on_gpu) else False
