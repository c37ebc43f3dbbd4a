"""Test configuration shared by the whole suite.

- 8 virtual CPU devices, set before jax initialises, so sharding tests run on a CPU-only machine.
- ``slow``, ``gpu`` and ``tpu`` markers are excluded by default (see pyproject addopts); run them
  with ``-m slow`` / ``-m gpu`` / ``-m tpu``.
- Pallas kernels run in interpret mode on CPU and for real on an accelerator: tests take the
  ``pallas_interpret`` fixture; ``JAXSEL_PALLAS_INTERPRET=0|1`` forces either way.
- torch-based parity tests use the ``torch`` fixture, which skips with a visible reason where torch
  is not installed (the Python 3.12 CI lane) instead of downloading it.
"""

from __future__ import annotations

import os

# Must run before jax is imported anywhere in the test session.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax
import pytest

N_VIRTUAL_DEVICES = 8


def _interpret_default() -> bool:
    forced = os.environ.get("JAXSEL_PALLAS_INTERPRET")
    if forced is not None:
        return forced not in ("0", "false", "False", "")
    return jax.default_backend() == "cpu"


@pytest.fixture(scope="session")
def pallas_interpret() -> bool:
    """True when Pallas kernels must run in interpret mode (CPU), False on a real accelerator."""
    return _interpret_default()


@pytest.fixture(scope="session")
def cpu_devices() -> list[jax.Device]:
    """The virtual CPU devices (8 unless XLA_FLAGS was set otherwise by the caller)."""
    devices = jax.devices("cpu")
    if len(devices) < 4:
        pytest.skip(f"needs >= 4 CPU devices, have {len(devices)} (XLA_FLAGS set too late?)")
    return devices


@pytest.fixture(scope="session")
def torch():
    """PyTorch for parity tests; skipped with a reason where it is not installed."""
    return pytest.importorskip(
        "torch", reason="torch not installed (Python 3.12 lane has no local CPU wheel)"
    )


def pytest_collection_modifyitems(config, items):
    on_gpu = jax.default_backend() == "gpu"
    on_tpu = jax.default_backend() == "tpu"
    for item in items:
        if "gpu" in item.keywords and not on_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a GPU"))
        if "tpu" in item.keywords and not on_tpu:
            item.add_marker(pytest.mark.skip(reason="needs a TPU"))
