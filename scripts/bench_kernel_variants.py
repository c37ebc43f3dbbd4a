"""Block-size variants and per-stage times of the pallas_kernels GPU paths (a tuning companion of
``bench_kernels.py``; run by ``scripts/device_check.sh`` after it).

Per cache length N (Hq=32, Hkv=8, d=128, bf16, k=2048), all in the same run:

- references: a device-to-device copy of K (read + write) and a read-only f32 sum over K;
- the scoring + soft-vote pass: ``xla`` twice (the spread between two runs of one version is the
  noise floor) and ``mosaic_gpu`` at ``block_kv`` in {64, 128, 256} (SMEM per block ~49 / 81 /
  145 KiB: 4 / 2 / 1 blocks per SM);
- top-k of one N-long f32 row: ``lax.top_k``, ``xla_radix``, ``mosaic_gpu`` at ``block_rows`` in
  {64, 256} x ``radix_bits`` in {2, 4}; and the stages apart: the radix threshold search alone
  (``kth_largest_key``), the tie mask + compaction alone (:func:`compact_mask`), and the same
  compaction through ``jnp.nonzero(size=k)`` (a ``bincount`` scatter-add) for comparison.

    python scripts/bench_kernel_variants.py --out results/gpu/bench_kernel_variants.json
    python scripts/bench_kernel_variants.py --ns 4096 --interpret --out results/scratch/v.json  # CPU plumbing
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxsel._bench import format_table, time_fn, write_json
from jaxsel.utils import flag, parse_config
from pallas_kernels.token_select.reference import soft_votes_reference
from pallas_kernels.topk import BlockSizes
from pallas_kernels.topk.radix import compact_mask, kth_largest_key, mask_above, topk_set_radix
from pallas_kernels.topk.reference import sortable_keys


def _row(op: str, n: int, t: Any, **extra: Any) -> dict[str, Any]:
    return {"op": op, "N": n, "median_ms": 1e3 * t.median_s, "compile_s": t.compile_s, **extra}


def _try(rows: list[dict[str, Any]], op: str, n: int, fn: Any, *args: Any, **extra: Any) -> Any:
    """Times ``fn(*args)`` into ``rows``; a failure becomes an error row instead of ending the run."""
    try:
        t = time_fn(fn, *args, name=op, iters=extra.pop("iters", 20))
    except Exception as e:
        rows.append({"op": f"{op} ERROR", "N": n, "error": f"{type(e).__name__}: {e}"[:800]})
        print(f"N={n} {op}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    rows.append(_row(op, n, t, **{k: v(t) if callable(v) else v for k, v in extra.items()}))
    return t


def bench_n(n: int, *, k_top: int, interpret: bool, iters: int) -> list[dict[str, Any]]:
    hq, hkv, d, n_sink, n_local = 32, 8, 128, 128, 512
    keys = jax.random.split(jax.random.key(n), 2)
    q = jax.random.normal(keys[0], (hq, d), jnp.bfloat16)
    k = jax.random.normal(keys[1], (n, hkv, d), jnp.bfloat16)
    kv_len = jnp.int32(n)
    k_bytes = k.size * k.dtype.itemsize
    rows: list[dict[str, Any]] = []
    t_copy = _try(rows, "copy K (read+write)", n, lambda a: a * jnp.asarray(1, a.dtype), k,
                  iters=iters, GBps=lambda t: 2 * k_bytes / t.median_s / 1e9)  # fmt: skip
    _try(rows, "sum K (read only)", n, lambda a: jnp.sum(a, dtype=jnp.float32), k, iters=iters,
         GBps=lambda t: k_bytes / t.median_s / 1e9)  # fmt: skip
    copy_s = t_copy.median_s if t_copy else float("nan")

    def bw(t: Any) -> float:
        return (k_bytes / t.median_s) / (2 * k_bytes / copy_s)

    xla_score = functools.partial(soft_votes_reference, n_sink=n_sink, n_local=n_local)
    for rep in (1, 2):
        _try(rows, f"scoring xla (run {rep})", n, xla_score, q, k, kv_len, iters=iters,
             frac_of_copy=bw)  # fmt: skip
    from pallas_kernels.token_select.mosaic_gpu import soft_votes_mosaic_gpu

    for bkv in (64, 128, 256):
        fn = functools.partial(
            soft_votes_mosaic_gpu, n_sink=n_sink, n_local=n_local, scale=1.0, gqa_mapping="group",
            block_kv=bkv, interpret="gpu" if interpret else False,
        )  # fmt: skip
        _try(rows, f"scoring mosaic_gpu block_kv={bkv}", n, fn, q, k, kv_len, iters=iters,
             frac_of_copy=bw)  # fmt: skip

    # Top-k of one vote-sized row (N f32 = 4 MiB at 1M: L2-resident for every candidate alike).
    x = jax.random.uniform(jax.random.key(n + 1), (n,), jnp.float32)
    t_lax = _try(rows, "topk lax.top_k", n, lambda a: lax.top_k(a, k_top), x, iters=iters)
    ratio = (lambda t: t_lax.median_s / t.median_s) if t_lax else None
    _try(rows, "topk xla_radix", n, lambda a: topk_set_radix(a, k_top), x, iters=iters,
         speedup_vs_lax=ratio)  # fmt: skip
    from pallas_kernels.topk.mosaic_gpu import topk_set_mosaic_gpu

    for br in (64, 256):
        for bits in (2, 4):
            bs = BlockSizes(block_rows=br, radix_bits=bits)
            fn = functools.partial(
                topk_set_mosaic_gpu,
                k=k_top,
                block_sizes=bs,
                interpret="gpu" if interpret else False,
            )
            _try(rows, f"topk mosaic_gpu block_rows={br} bits={bits}", n,
                 lambda a, f=fn: f(a[None])[0], x, iters=iters, speedup_vs_lax=ratio)  # fmt: skip
    skeys = sortable_keys(x)
    _try(rows, "topk stage: radix threshold (xla, 8 passes)", n,
         lambda a: kth_largest_key(a, k_top), skeys, iters=iters)  # fmt: skip
    thresh = jax.jit(lambda a: kth_largest_key(a, k_top))(skeys)
    _try(rows, "topk stage: tie mask + compact_mask", n,
         lambda a, t: compact_mask(mask_above(a, t, k_top), k_top), skeys, thresh, iters=iters)  # fmt: skip
    _try(rows, "topk stage: tie mask + jnp.nonzero", n,
         lambda a, t: jnp.nonzero(mask_above(a, t, k_top), size=k_top)[0], skeys, thresh,
         iters=iters)  # fmt: skip
    return rows


@dataclasses.dataclass(frozen=True)
class VariantsConfig:
    ns: tuple[int, ...] = flag((128 * 1024, 512 * 1024, 1024 * 1024), "cache lengths N")
    k: int = flag(2048, "top-k")
    iters: int = flag(20, "timed calls per variant (median)")
    interpret: bool = flag(False, "Mosaic GPU interpreter (CPU plumbing)")
    out: str = flag("results/gpu/bench_kernel_variants.json", "output JSON")

    def __post_init__(self) -> None:
        for name in ("k", "iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.ns) < 1:
            raise ValueError(f"ns must be >= 1, got {self.ns}")


def parse_args(argv: list[str] | None = None) -> VariantsConfig:
    return parse_config(VariantsConfig, argv, description=__doc__)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    dev = jax.devices()[0]
    print(f"jax {jax.__version__}, device {dev.device_kind} ({jax.default_backend()})")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for n in a.ns:
        rows += bench_n(n, k_top=a.k, interpret=a.interpret, iters=a.iters)
        write_json(a.out, {"config": dataclasses.asdict(a), "device_kind": dev.device_kind,
                           "jax_version": jax.__version__, "rows": rows,
                           "wall_s": time.perf_counter() - t0})  # fmt: skip
    print(format_table(rows, ["op", "N", "median_ms", "compile_s", "GBps", "frac_of_copy",
                              "speedup_vs_lax", "error"]))  # fmt: skip
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
