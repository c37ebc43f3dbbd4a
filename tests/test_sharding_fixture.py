"""The conftest gives 8 virtual CPU devices, and shard_map over them computes what one device does."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def test_eight_virtual_devices(cpu_devices):
    assert len(cpu_devices) == 8


def test_sharded_reduction_matches_single_device(cpu_devices):
    mesh = Mesh(np.array(cpu_devices[:4]), ("x",))
    x = jnp.arange(4 * 6, dtype=jnp.float32).reshape(4, 6)
    xs = jax.device_put(x, NamedSharding(mesh, P("x", None)))
    assert len(xs.sharding.device_set) == 4

    def local(block):
        return jax.lax.psum(jnp.sum(block**2), "x")

    total = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("x", None), out_specs=P()))(xs)
    np.testing.assert_allclose(total, jnp.sum(x**2))


def test_device_count_flag_must_precede_jax_import():
    # In a fresh interpreter that sets the flag before importing jax, the count is honoured.
    code = (
        "import os; os.environ['XLA_FLAGS']='--xla_force_host_platform_device_count=4';"
        "import jax; print(len(jax.devices('cpu')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "4", out.stderr
