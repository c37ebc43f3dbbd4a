"""Small benchmark harness shared by ``scripts/bench_*.py``.

What it measures, and how:

- compile time, separately, through AOT ``jax.jit(fn).lower(*args).compile()``;
- steady state: ``warmup`` calls, then ``iters`` timed calls, each ended by ``block_until_ready``,
  summarised by the median (and min / max) in seconds;
- optional comparison of two callables on the same inputs in the same run, reported as a ratio;
- machine, Python, jax and device information, so every JSON file says where it was measured.

Benchmarks are scripts, never timed tests: tests only check that this harness measures what it says,
with a fake ``clock`` (every timing function takes one; the default is ``time.perf_counter``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Timing:
    """Result of :func:`time_fn` (all times in seconds)."""

    name: str
    compile_s: float
    median_s: float
    min_s: float
    max_s: float
    iters: int
    times_s: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    name: str | None = None,
    warmup: int = 2,
    iters: int = 10,
    jit: bool = True,
    static_argnums: Sequence[int] = (),
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Times ``fn(*args)``: compile once (AOT, timed apart), then the median of ``iters`` calls.

    Args:
      fn: the function to time. With ``jit=True`` it is wrapped in ``jax.jit`` and compiled ahead of
        time, so the compile time is measured on its own and never leaks into the steady state.
      *args: its arguments (arrays or pytrees of arrays).
      name: a label for tables and JSON (defaults to ``fn.__name__``).
      warmup: untimed calls after compilation.
      iters: timed calls; each ends with ``block_until_ready`` on the outputs.
      jit: set False for a callable that is already compiled or is not a JAX function (e.g. a copy).
      static_argnums: forwarded to ``jax.jit``.
      clock: seconds since an arbitrary origin, read before and after the compilation and each
        timed call (tests pass a fake one).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters=}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup=}")
    label = name or getattr(fn, "__name__", "fn")
    if jit:
        t0 = clock()
        compiled = jax.jit(fn, static_argnums=tuple(static_argnums)).lower(*args).compile()
        compile_s = clock() - t0
        dynamic = [a for i, a in enumerate(args) if i not in set(static_argnums)]
        call = lambda: compiled(*dynamic)
    else:
        compile_s = 0.0
        call = lambda: fn(*args)
    for _ in range(warmup):
        _block(call())
    times = []
    for _ in range(iters):
        t0 = clock()
        _block(call())
        times.append(clock() - t0)
    return Timing(
        name=label,
        compile_s=compile_s,
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        iters=iters,
        times_s=tuple(times),
    )


def compare(
    baseline: tuple[str, Callable[..., Any]],
    candidate: tuple[str, Callable[..., Any]],
    *args: Any,
    warmup: int = 2,
    iters: int = 10,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Times two callables on the same inputs in the same run; ``ratio`` = candidate / baseline."""
    kw = dict(warmup=warmup, iters=iters, clock=clock)
    base = time_fn(baseline[1], *args, name=baseline[0], **kw)
    cand = time_fn(candidate[1], *args, name=candidate[0], **kw)
    return {
        "baseline": base.as_dict(),
        "candidate": cand.as_dict(),
        "ratio": cand.median_s / base.median_s,
    }


def copy_bandwidth(
    nbytes: int = 256 * 2**20, *, iters: int = 10, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Measured memory-copy bandwidth in bytes/s (read + write) of the default device.

    The reference for "achieved bandwidth" numbers: an ``x + 0``-free copy, ``x * 1`` in f32, which
    reads and writes every byte once.
    """
    n = max(nbytes // 4, 1)
    x = jax.device_put(np.ones((n,), np.float32))
    t = time_fn(lambda a: a * 1.0001, x, name="copy", iters=iters, clock=clock)
    return 2 * n * 4 / t.median_s


def environment_info() -> dict[str, Any]:
    """Machine, Python, jax and device facts recorded in every benchmark JSON."""
    devices = jax.devices()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind if devices else None,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # pragma: no cover - informational only
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Plain-text table of ``rows`` (dicts); floats printed with 4 significant digits."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def write_json(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Writes ``payload`` plus ``environment`` info as indented JSON; creates parent folders."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"environment": environment_info(), **payload}
    out.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray | jax.Array):
        return np.asarray(o).tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")
