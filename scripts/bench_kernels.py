"""Benchmark the pallas_kernels ops on one decode step of one layer (one sequence).

Per cache length N (default 128K, 512K, 1M; Hq=32, Hkv=8, d=128, bf16 cache, top_k=2048,
budget 128 + 2048 + 512), all in the same run:

- ``copy``: a device-to-device copy of the K cache (``k * 1``), the bandwidth reference;
- ``scoring``: TokenSelect's scoring + soft-vote pass alone (reads K once): median time and achieved
  bandwidth ``bytes(K) / time`` as a fraction of the copy bandwidth (target >= 70% on a GPU);
- ``topk``: exact top-2048 of an N-long f32 vote row, per top-k implementation, against
  ``lax.top_k`` and ``lax.approx_max_k`` (ratios: lax.top_k time / candidate time);
- ``token_select``, ``sparse_decode``: each op alone;
- ``decode``: a whole decode attention step, TokenSelect (select + sparse attention) vs dense
  ``jax.nn.dot_product_attention`` over the full cache, with the ratio.

Compile time is reported apart from the steady state (median of ``--iters`` calls).

    python scripts/bench_kernels.py --out results/gpu/bench_kernels.json      # on a GPU
    python scripts/bench_kernels.py --small --out results/scratch/bench_kernels_cpu.json  # CPU smoke run

Backends are compared in the same run: ``--impls`` (default: ``xla`` plus the library's pick for
the device, i.e. ``xla mosaic_gpu`` on a Hopper GPU) times the scoring pass, ``token_select``,
``sparse_decode_attention`` and the whole decode step for each, with ``speedup_vs_xla``.
``--interpret`` runs the Pallas backends in their CPU interpreters (plumbing check only, tiny
shapes: ``--tiny``; interpreter times mean nothing).

    python scripts/bench_kernels.py --impls xla mosaic_gpu --out results/gpu/bench_kernels.json
    python scripts/bench_kernels.py --tiny --impls xla mosaic_gpu --interpret --out results/scratch/b.json
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
import numpy as np
from jax import lax
from tqdm.auto import tqdm

# Run from a checkout without relying on how (or whether) the project was installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxsel._bench import format_table, time_fn, write_json
from jaxsel.utils import flag, parse_config
from pallas_kernels import available_implementations, sparse_decode_attention, token_select, topk
from pallas_kernels.token_select.reference import soft_votes_reference


@dataclasses.dataclass(frozen=True)
class Config:
    ns: tuple[int, ...] = flag((128 * 1024, 512 * 1024, 1024 * 1024), "cache lengths N")
    hq: int = 32
    hkv: int = 8
    d: int = 128
    top_k: int = 2048
    n_sink: int = 128
    n_local: int = 512
    dtype: str = "bfloat16"
    iters: int = flag(10, "timed calls per op (median); --small 3, --tiny 2 unless given")
    impls: tuple[str, ...] = flag(
        (), "backends to compare (xla first); default: xla and the library's pick for the device"
    )
    implementation: str | None = flag(None, "alias: --impls xla IMPL (--impls wins)")
    interpret: bool = flag(False, "interpret Pallas backends on CPU")
    topk_impls: tuple[str, ...] = flag(
        (), "top-k implementations; default: xla_radix + the Pallas backends compared (--impls)"
    )
    out: str = flag("results/gpu/bench_kernels.json", "output JSON")
    seed: int = 0
    small: bool = flag(False, "CPU smoke sizes: N in {8K, 32K}, k=256")
    tiny: bool = flag(False, "interpreter-sized: N=1024, Hq=8, Hkv=2, d=64, k=64")

    def __post_init__(self) -> None:
        for name in ("hq", "hkv", "d", "top_k", "iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.ns or min(self.ns) < 1:
            raise ValueError(f"ns must be >= 1, got {self.ns}")
        if self.hq % self.hkv:
            raise ValueError(f"hq ({self.hq}) must be a multiple of hkv ({self.hkv})")


#: ``--small`` and ``--tiny`` (applied in that order; flags given on the command line win).
PRESETS = {
    "small": dict(ns=(8 * 1024, 32 * 1024), top_k=256, n_sink=16, n_local=64, iters=3),
    "tiny": dict(ns=(1024,), hq=8, hkv=2, d=64, top_k=64, n_sink=8, n_local=16, iters=2),
}


def parse_args(argv: list[str] | None = None) -> Config:
    return parse_config(Config, argv, description=__doc__, presets=PRESETS)


def _row(name: str, n: int, t: Any, **extra: Any) -> dict[str, Any]:
    return {"op": name, "N": n, "median_ms": 1e3 * t.median_s, "compile_s": t.compile_s, **extra}


def bench_one(cfg: Config, n: int) -> list[dict[str, Any]]:
    dtype = jnp.dtype(cfg.dtype)
    rng = np.random.default_rng(cfg.seed + n)
    keys = jax.random.split(jax.random.key(cfg.seed + n), 3)
    q = jax.random.normal(keys[0], (cfg.hq, cfg.d), dtype)
    k = jax.random.normal(keys[1], (n, cfg.hkv, cfg.d), dtype)
    v = jax.random.normal(keys[2], (n, cfg.hkv, cfg.d), dtype)
    kv_len = jnp.int32(n)
    k_bytes = k.size * k.dtype.itemsize
    it = cfg.iters
    rows: list[dict[str, Any]] = []

    # Bandwidth reference: read + write every byte of K once.
    t_copy = time_fn(lambda a: a * jnp.asarray(1, a.dtype), k, name="copy", iters=it)
    copy_bw = 2 * k_bytes / t_copy.median_s
    rows.append(_row("copy K (read+write)", n, t_copy, GBps=copy_bw / 1e9))

    # Top-k of one N-long vote row.
    x = jnp.asarray(rng.random(n, np.float32))
    t_lax = time_fn(lambda a: lax.top_k(a, cfg.top_k), x, name="lax.top_k", iters=it)
    rows.append(_row("topk lax.top_k", n, t_lax, speedup_vs_lax=1.0))
    t_apx = time_fn(lambda a: lax.approx_max_k(a, cfg.top_k), x, name="approx_max_k", iters=it)
    rows.append(
        _row("topk lax.approx_max_k", n, t_apx, speedup_vs_lax=t_lax.median_s / t_apx.median_s)
    )
    for name in cfg.topk_impls or ("xla_radix", *resolve_impls(cfg)[1:]):
        interp = cfg.interpret and name not in ("xla", "xla_radix")
        try:
            t = time_fn(
                lambda a, m=name, i=interp: topk(a, cfg.top_k, implementation=m, interpret=i),
                x, name=f"topk {name}", iters=it,
            )  # fmt: skip
        except Exception as e:  # one backend failing must not discard the others' rows
            rows.append(_error_row(f"topk {name}", n, e))
            continue
        rows.append(_row(f"topk {name}", n, t, speedup_vs_lax=t_lax.median_s / t.median_s))

    def dense(q, k, v, n_):
        o = jax.nn.dot_product_attention(
            q[None, None], k[None], v[None], key_value_seq_lengths=jnp.reshape(n_, (1,))
        )
        return o[0, 0]

    t_dense = time_fn(dense, q, k, v, kv_len, name="dense", iters=it)
    rows.append(_row("decode dense (jax.nn.dot_product_attention)", n, t_dense, ratio_to_dense=1.0))

    # Per backend, in the same run: scoring pass, each op alone, a whole decode step.
    base: dict[str, Any] = {}
    for impl in resolve_impls(cfg):
        try:
            rows += _bench_impl(cfg, impl, n, q, k, v, kv_len, k_bytes, copy_bw, t_dense, base)
        except Exception as e:  # keep the other backends' rows; the error is in the table
            rows.append(_error_row(f"[{impl}]", n, e))
            print(f"N={n} {impl}: {type(e).__name__}: {e}", file=sys.stderr)
    return rows


def _error_row(name: str, n: int, e: Exception) -> dict[str, Any]:
    return {"op": f"{name} ERROR", "N": n, "error": f"{type(e).__name__}: {e}"[:800]}


def _bench_impl(
    cfg: Config,
    impl: str,
    n: int,
    q: Any,
    k: Any,
    v: Any,
    kv_len: Any,
    k_bytes: int,
    copy_bw: float,
    t_dense: Any,
    base: dict[str, Any],
) -> list[dict[str, Any]]:
    """Scoring pass, each op alone and a whole decode step for one backend.

    ``base`` holds the ``xla`` backend's times and outputs (filled when ``impl == "xla"``, which runs
    first); every other backend is checked against them on the same inputs: the fraction of its
    selected indices that ``xla`` selected too, and the relative error of its attention output over
    ``xla``'s selection.
    """
    it = cfg.iters
    sel_kw = dict(top_k=cfg.top_k, n_sink=cfg.n_sink, n_local=cfg.n_local)
    rows: list[dict[str, Any]] = []
    interp = cfg.interpret and impl not in ("xla", "xla_radix")

    def tag(op: str, key: str, t: Any, _impl: str = impl, **extra: Any) -> dict[str, Any]:
        if _impl == "xla":
            base[key] = t.median_s
        ratio = base[key] / t.median_s if key in base else None
        return _row(f"{op} [{_impl}]", n, t, impl=_impl, speedup_vs_xla=ratio, **extra)

    score_fn = scoring_fn(cfg, impl, n, interp)
    t = time_fn(score_fn, q, k, kv_len, name=f"scoring {impl}", iters=it)
    bw = k_bytes / t.median_s
    rows.append(tag("scoring+vote", "score", t, GBps=bw / 1e9, frac_of_copy=bw / copy_bw))

    def select(q, k, n_, _impl=impl, _interp=interp):
        return token_select(q, k, n_, implementation=_impl, interpret=_interp, **sel_kw)

    def attend(q, k, v, i, ok, _impl=impl, _interp=interp):
        return sparse_decode_attention(q, k, v, i, ok, implementation=_impl, interpret=_interp)

    def step(q, k, v, n_, _select=select, _attend=attend):
        i, ok = _select(q, k, n_)
        return _attend(q, k, v, i, ok)

    t_sel = time_fn(select, q, k, kv_len, name=f"token_select {impl}", iters=it)
    rows.append(tag("token_select", "select", t_sel))
    idx, valid = jax.jit(select)(q, k, kv_len)
    check: dict[str, Any] = {}
    if impl == "xla":
        base["idx"], base["valid"] = idx, valid
        base["out"] = jax.jit(attend)(q, k, v, idx, valid)
    elif "idx" in base:
        want_idx, want_ok = np.asarray(base["idx"]), np.asarray(base["valid"])
        got_idx, got_ok = np.asarray(idx), np.asarray(valid)
        check["index_agreement_vs_xla"] = float(
            np.isin(got_idx[got_ok], want_idx[want_ok]).sum() / max(int(want_ok.sum()), 1)
        )
        out = np.asarray(jax.jit(attend)(q, k, v, base["idx"], base["valid"]), np.float64)
        ref = np.asarray(base["out"], np.float64)
        check["rel_err_vs_xla"] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    t_att = time_fn(attend, q, k, v, idx, valid, name=f"sparse_decode {impl}", iters=it)
    rows.append(tag("sparse_decode_attention", "attend", t_att, **check))
    t_step = time_fn(step, q, k, v, kv_len, name=f"tokenselect step {impl}", iters=it)
    rows.append(
        tag("decode TokenSelect (select + sparse)", "step", t_step,
            ratio_to_dense=t_step.median_s / t_dense.median_s)
    )  # fmt: skip
    return rows


def resolve_impls(cfg: Config) -> tuple[str, ...]:
    """``cfg.impls`` (or ``--implementation``), or ``xla`` plus the library's preferred Pallas
    backend for this device."""
    impls = cfg.impls or ((cfg.implementation,) if cfg.implementation else ())
    if impls:
        return tuple(dict.fromkeys(("xla", *impls)))  # xla first: the ratios' baseline
    here = [m for m in available_implementations() if m not in ("xla", "xla_radix")]
    return ("xla", *here[:1])


def scoring_fn(cfg: Config, impl: str, n: int, interpret: bool) -> Any:
    """The pass that reads all of K (scores + soft votes) for one backend."""
    kw = dict(n_sink=cfg.n_sink, n_local=cfg.n_local)
    if impl in ("xla", "xla_radix"):
        return functools.partial(soft_votes_reference, **kw)
    if impl == "mosaic_gpu":
        from pallas_kernels.token_select.mosaic_gpu import default_block_kv, soft_votes_mosaic_gpu

        return functools.partial(
            soft_votes_mosaic_gpu, scale=1.0, gqa_mapping="group",
            block_kv=default_block_kv(n, cfg.d), interpret=interpret, **kw,
        )  # fmt: skip
    if impl == "mosaic_tpu":
        from pallas_kernels.token_select.config import BlockSizes
        from pallas_kernels.token_select.mosaic_tpu import ranked_votes_pallas

        bs = BlockSizes.get_default(n=n, hq=cfg.hq, hkv=cfg.hkv, d=cfg.d)
        return functools.partial(
            ranked_votes_pallas, scale=1.0, gqa_mapping="group", block_sizes=bs,
            interpret="tpu" if interpret else False, **kw,
        )  # fmt: skip
    raise ValueError(f"no scoring pass for {impl=}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    dev = jax.devices()[0]
    print(f"jax {jax.__version__}, device {dev.device_kind} ({jax.default_backend()}); "
          f"implementations here: {available_implementations()}; comparing "
          f"{resolve_impls(cfg)}{' (interpreted)' if cfg.interpret else ''}")  # fmt: skip
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for n in tqdm(cfg.ns, desc="N"):
        try:
            rows += bench_one(cfg, n)
        except Exception as e:  # e.g. out of memory at 1M on a small device: keep what we have
            rows.append({"op": "error", "N": n, "error": f"{type(e).__name__}: {e}"[:500]})
            print(f"N={n}: {type(e).__name__}: {e}", file=sys.stderr)
        write_json(
            cfg.out,
            {
                "config": dataclasses.asdict(cfg),
                "device_kind": dev.device_kind,
                "jax_version": jax.__version__,
                "rows": rows,
                "wall_s": time.perf_counter() - t0,
            },
        )
    cols = ["op", "N", "median_ms", "compile_s", "GBps", "frac_of_copy", "speedup_vs_lax",
            "speedup_vs_xla", "ratio_to_dense", "index_agreement_vs_xla",
            "rel_err_vs_xla"]  # fmt: skip
    print(format_table(rows, cols))
    print(f"wrote {Path(cfg.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
