"""The benchmark helper measures what it says: compile apart from steady state, medians, ratios."""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import pytest

from jaxsel import _bench


def test_time_fn_separates_compile_and_counts_iters():
    x = jnp.ones((64, 64))
    t = _bench.time_fn(lambda a: a @ a, x, name="matmul", warmup=1, iters=5)
    assert t.name == "matmul" and t.iters == 5 and len(t.times_s) == 5
    assert t.compile_s > 0
    assert t.min_s <= t.median_s <= t.max_s


def test_time_fn_measures_real_duration():
    # A host callable that sleeps 20 ms must be timed at >= 20 ms (jit=False: plain callable).
    t = _bench.time_fn(lambda: time.sleep(0.02), name="sleep", jit=False, warmup=0, iters=2)
    assert t.median_s >= 0.02
    assert t.compile_s == 0.0


def test_compare_ratio_orders_cheap_and_expensive():
    x = jnp.ones((256, 256))
    cheap = lambda a: a + 1
    costly = lambda a: jnp.linalg.matrix_power(a / 256, 32)
    res = _bench.compare(("cheap", cheap), ("costly", costly), x, iters=5)
    assert res["ratio"] == pytest.approx(res["candidate"]["median_s"] / res["baseline"]["median_s"])
    assert res["ratio"] > 1


def test_time_fn_rejects_bad_iters():
    with pytest.raises(ValueError, match="iters"):
        _bench.time_fn(lambda: None, iters=0, jit=False)


def test_write_json_records_environment(tmp_path):
    path = _bench.write_json(tmp_path / "a" / "b.json", {"rows": [{"x": jnp.float32(1.5)}]})
    data = json.loads(path.read_text())
    assert data["environment"]["jax"] == jax.__version__
    assert data["environment"]["backend"] == jax.default_backend()
    assert data["rows"][0]["x"] == 1.5


def test_copy_bandwidth_positive():
    assert _bench.copy_bandwidth(1 << 20, iters=3) > 0


def test_format_table_aligns_columns():
    table = _bench.format_table([{"a": 1, "bb": 0.123456}, {"a": 100, "bb": 2.0}])
    lines = table.splitlines()
    assert lines[0].split() == ["a", "bb"]
    assert "0.1235" in table
    col = lines[0].index("bb")
    assert lines[2][col:].startswith("0.1235") and lines[3][col:].startswith("2")
