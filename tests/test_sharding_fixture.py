"""What tests/conftest.py sets up: 8 virtual CPU devices (unless the caller chose a count), the
``cpu_devices`` fixture, and the ``pallas_interpret`` default with its environment override."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
COUNT_FLAG = "--xla_force_host_platform_device_count"

# Loads tests/conftest.py as a plain module in a fresh interpreter, then initialises jax there.
_PROBE = """
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("probe_conftest", sys.argv[1])
conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conftest)
import jax
print(json.dumps({
    "xla_flags": os.environ["XLA_FLAGS"],
    "n_cpu": len(jax.devices("cpu")),
    "interpret": conftest._interpret_default(),
}))
"""


def _probe(**env: str) -> dict:
    full = {
        k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXSEL_PALLAS_INTERPRET")
    }
    full.update(JAX_PLATFORMS="cpu", **env)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(CONFTEST)],
        capture_output=True,
        text=True,
        timeout=120,
        env=full,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_devices_fixture_gives_eight_distinct_cpu_devices(cpu_devices):
    assert len(cpu_devices) == 8
    assert {d.platform for d in cpu_devices} == {"cpu"}
    assert len({d.id for d in cpu_devices}) == 8
    assert f"{COUNT_FLAG}=8" in os.environ["XLA_FLAGS"]


def test_pallas_interpret_fixture_is_true_on_cpu_unless_forced(pallas_interpret):
    forced = os.environ.get("JAXSEL_PALLAS_INTERPRET")
    if forced is None:
        assert pallas_interpret == (jax.default_backend() == "cpu")
    else:
        assert pallas_interpret == (forced not in ("0", "false", "False", ""))


def test_conftest_appends_the_device_count_to_the_callers_flags():
    got = _probe(XLA_FLAGS="--xla_cpu_enable_fast_math=false")
    assert got["xla_flags"] == f"--xla_cpu_enable_fast_math=false {COUNT_FLAG}=8"
    assert got["n_cpu"] == 8
    assert got["interpret"] is True  # CPU backend, no override


def test_conftest_keeps_a_callers_device_count_and_honours_the_interpret_override():
    got = _probe(XLA_FLAGS=f"{COUNT_FLAG}=4", JAXSEL_PALLAS_INTERPRET="0")
    assert got["xla_flags"] == f"{COUNT_FLAG}=4"
    assert got["n_cpu"] == 4
    assert got["interpret"] is False
