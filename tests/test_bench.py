"""The benchmark helper measures what it says: compile apart from steady state, medians, ratios.

Timings are checked with fake clocks that advance by known amounts, so every number is exact and
nothing depends on the load of the machine.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import pytest

from jaxsel import _bench


class ScriptedClock:
    """Returns the given timestamps in order, one per reading; fails if read once too often."""

    def __init__(self, *stamps: float):
        self.stamps = list(stamps)
        self.reads = 0

    def __call__(self) -> float:
        if self.reads >= len(self.stamps):
            raise AssertionError(f"clock read {self.reads + 1} times, scripted {len(self.stamps)}")
        self.reads += 1
        return self.stamps[self.reads - 1]

    @property
    def done(self) -> bool:
        return self.reads == len(self.stamps)


class ManualClock:
    """A clock that only moves when the code under test says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Pending:
    """A result whose device work takes ``seconds``, spent in ``block_until_ready``."""

    def __init__(self, clock: ManualClock, seconds: float):
        self.clock, self.seconds, self.blocked = clock, seconds, False

    def block_until_ready(self):
        self.clock.advance(self.seconds)
        self.blocked = True
        return self


def test_time_fn_times_compile_apart_and_takes_the_median_of_timed_calls():
    # compile: 10 -> 17.5; then three timed calls of 2, 0.5 and 4 s; warmup calls read no clock
    clock = ScriptedClock(10.0, 17.5, 20.0, 22.0, 30.0, 30.5, 40.0, 44.0)
    traces, runs = [], []

    def fn(a, n):
        traces.append(n)  # Python side effect: runs once per trace
        jax.debug.callback(lambda: runs.append(1))  # runs once per execution
        return a * n

    x = jnp.ones((4,))
    t = _bench.time_fn(fn, x, 3, name="mul", warmup=2, iters=3, static_argnums=(1,), clock=clock)
    jax.effects_barrier()
    assert clock.done
    assert t.name == "mul" and t.iters == 3
    assert t.compile_s == 7.5
    assert t.times_s == (2.0, 0.5, 4.0)
    assert (t.median_s, t.min_s, t.max_s) == (2.0, 0.5, 4.0)
    assert traces == [3]  # compiled once, ahead of time, with the static argument
    assert len(runs) == 2 + 3  # warmup + timed calls, all on the compiled program
    assert t.as_dict()["times_s"] == (2.0, 0.5, 4.0)


def test_time_fn_blocks_inside_the_timed_region_and_skips_warmup():
    clock = ManualClock()
    durations = iter([100.0, 100.0, 0.3, 0.1, 0.2, 0.4])  # two warmup calls, then four timed
    results = []

    def call():
        clock.advance(0.01)  # host time to dispatch
        results.append(Pending(clock, next(durations)))  # device time, paid when blocked
        return {"out": results[-1]}

    t = _bench.time_fn(call, name="host", jit=False, warmup=2, iters=4, clock=clock)
    assert all(r.blocked for r in results) and len(results) == 6
    assert t.compile_s == 0.0
    assert t.times_s == pytest.approx((0.31, 0.11, 0.21, 0.41))
    assert t.median_s == pytest.approx(0.26)  # even count: mean of the middle two
    assert (t.min_s, t.max_s) == pytest.approx((0.11, 0.41))


def test_time_fn_default_clock_is_real_time():
    # A host callable that sleeps 20 ms is timed at >= 20 ms by the default clock (a lower bound:
    # load can only make it longer).
    t = _bench.time_fn(lambda: time.sleep(0.02), name="sleep", jit=False, warmup=0, iters=2)
    assert t.median_s >= 0.02
    assert t.compile_s == 0.0


def test_compare_ratio_is_candidate_over_baseline_median():
    # baseline: compile 1 s, calls 2, 4, 5 (median 4, mean 3.67); candidate: compile 5 s, calls
    # 9, 6, 15 (median 9, mean 10): ratio 2.25, in this order whatever the callables compute
    clock = ScriptedClock(0, 1, 1, 3, 3, 7, 7, 12, 12, 17, 17, 26, 26, 32, 32, 47)
    x = jnp.ones((8, 8))
    res = _bench.compare(
        ("base", lambda a: a + 1), ("cand", lambda a: a @ a), x, iters=3, clock=clock
    )
    assert clock.done
    assert res["baseline"]["name"] == "base" and res["candidate"]["name"] == "cand"
    assert res["baseline"]["compile_s"] == 1 and res["candidate"]["compile_s"] == 5
    assert res["baseline"]["median_s"] == 4 and res["candidate"]["median_s"] == 9
    assert res["ratio"] == 2.25


def test_time_fn_rejects_bad_iters_and_warmup():
    with pytest.raises(ValueError, match="iters"):
        _bench.time_fn(lambda: None, iters=0, jit=False)
    with pytest.raises(ValueError, match="warmup"):
        _bench.time_fn(lambda: None, warmup=-1, jit=False)


@pytest.mark.parametrize("nbytes, n_f32", [(4096, 1024), (4099, 1024), (2, 1)])
def test_copy_bandwidth_is_bytes_read_and_written_over_the_median(nbytes, n_f32):
    # compile 0 -> 1; three copies of 0.5, 0.25 and 1.0 s: median 0.5 s
    clock = ScriptedClock(0.0, 1.0, 2.0, 2.5, 3.0, 3.25, 4.0, 5.0)
    bw = _bench.copy_bandwidth(nbytes, iters=3, clock=clock)
    assert clock.done
    assert bw == 2 * n_f32 * 4 / 0.5  # each f32 read once and written once


def test_write_json_records_environment(tmp_path):
    path = _bench.write_json(tmp_path / "a" / "b.json", {"rows": [{"x": jnp.float32(1.5)}]})
    data = json.loads(path.read_text())
    assert data["environment"]["jax"] == jax.__version__
    assert data["environment"]["backend"] == jax.default_backend()
    assert data["rows"][0]["x"] == 1.5


def test_format_table_aligns_columns():
    table = _bench.format_table([{"a": 1, "bb": 0.123456}, {"a": 100, "bb": 2.0}])
    lines = table.splitlines()
    assert lines[0].split() == ["a", "bb"]
    assert "0.1235" in table
    col = lines[0].index("bb")
    assert lines[2][col:].startswith("0.1235") and lines[3][col:].startswith("2")
