"""Scale-out benchmark of sequence-sharded TokenSelect (issue #22, part 4): one decode step of one
layer with the KV cache split along its sequence axis over P = 1, 2, 4, 8 virtual CPU devices.

For each P and each scaling mode, strong (fixed total N) and weak (fixed N per device):

- lower and compile times (separately) and the steady-state time per step (median of the timed
  calls after a warm-up, each ended by ``block_until_ready``) of
  (a) the sharded TokenSelect step, ``sequence_select`` + ``sequence_sparse_attention``, and
  (b) the sharded dense step, ``sequence_rope_dense_attention``,
  both inside ``jax.shard_map`` over a 1-D mesh axis ``"seq"`` (k, v ``P("seq")``, q and kv_len
  replicated); the P = 1 worker also times the single-device peers at every total N of the run:
  ``select_tokens`` + ``sparse_attention``, ``dense_attention``, and RoPE + ``dense_attention``
  (the like-for-like peer of (b), which rotates every key);
- the bytes moved by collectives, parsed from the COMPILED HLO text (all-gather, all-reduce,
  collective-permute, all-to-all, reduce-scatter; result sizes from the printed shapes), next to
  the analytic ``collective_bytes`` of ``jaxsel.attention.sequence``;
- that the sharded selection equals the single-device ``select_tokens`` selection on the same
  inputs (and the outputs agree to float32 tolerance).

The device count must be set before jax initialises, so this process runs one subprocess per P
(``XLA_FLAGS=--xla_force_host_platform_device_count=P``, ``JAX_PLATFORMS=cpu``, the same script
with its spec in ``$JAXSEL_SCALEOUT_WORKER``), each printing one JSON line.

CAVEAT: on virtual CPU devices the collectives are memory copies inside one process and all P
shards share the machine's cores, so the wall times do NOT show real scaling; the byte counts are
the portable result.

    nice -n 10 .venv/bin/python scripts/bench_scaleout.py            # full (see README for time)
    .venv/bin/python scripts/bench_scaleout.py --quick               # smoke run, ~1 minute

Writes ``results/scaleout/bench.json``, ``bench.png`` and ``README.md`` (``bench_quick.*`` and no
README with ``--quick``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jaxsel.utils.config_cli import flag, parse_config

MARK = "SCALEOUT_JSON "
WORKER_ENV = "JAXSEL_SCALEOUT_WORKER"  # set by run_worker: this process is a worker
DEVICE_COUNTS = (1, 2, 4, 8)
COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
CAVEAT = (
    "CAVEAT: virtual CPU devices (--xla_force_host_platform_device_count): the collectives are "
    "memory copies inside one process and all P shards share the same {cores} cores, so the wall "
    "times do NOT show real scaling (more shards = the same work, plus overhead, on the same "
    "cores). The collective byte counts are the portable result."
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Shapes and run settings; ``--quick`` swaps in :data:`QUICK` (flags given still win)."""

    quick: bool = flag(False, "small shapes for a smoke run (~1 min)")
    hq: int = 32
    hkv: int = 8
    d: int = 128
    n_sink: int = 128
    top_k: int = 2048
    n_local: int = 512
    n_total: int = flag(65536, "strong scaling: total cache length N")
    n_per_device: int = flag(8192, "weak scaling: cache length per device")
    device_counts: tuple[int, ...] = DEVICE_COUNTS
    iters: int = flag(10, "timed calls per measurement (median)")
    warmup: int = 2
    seed: int = 0
    out: str = flag("results/scaleout", "output folder")

    @property
    def budget(self) -> dict[str, int]:
        return dict(top_k=self.top_k, n_sink=self.n_sink, n_local=self.n_local)

    def n_of(self, mode: str, p: int) -> int:
        return self.n_total if mode == "strong" else self.n_per_device * p


QUICK = dict(hq=8, hkv=2, d=64, n_sink=4, top_k=256, n_local=32, n_total=8192, n_per_device=1024)


# ----------------------------------------------------------------------------- HLO parsing
_INSTR = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+"
    r"(?P<op>" + "|".join(COLLECTIVES) + r")(?P<suffix>-start|-done)?\("
)
_ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO result shape: an array ``f32[8,2,32]{2,1,0}`` or a tuple of arrays."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        n = 1
        for x in filter(None, dims.split(",")):
            n *= int(x)
        total += n * DTYPE_BYTES[dtype]
    return total


def hlo_collectives(hlo: str, n_shards: int) -> dict[str, Any]:
    """Collective instructions of a compiled SPMD HLO module and their result bytes per shard.

    Synchronous ops count their result; async pairs count the ``-done`` result only (a ``-start``
    result also holds the operand). ``received`` is the bytes one shard receives under the
    convention of ``collective_bytes``: ``(P - 1) / P`` of an all-gather's or all-to-all's result,
    all of a collective-permute's, ``(P - 1)`` times a reduce-scatter's and ``2 (P - 1) / P`` of an
    all-reduce's (ring). Every instruction is counted once, also where it sits in a conditional
    branch that a step may not take (``entry`` false: outside the ENTRY computation, e.g. in the
    sparse branch of the selection's ``lax.cond``).
    """
    by_kind = {k: 0 for k in COLLECTIVES}
    count = {k: 0 for k in COLLECTIVES}
    instrs, entry = [], False
    for line in hlo.splitlines():
        if line[:1] not in ("", " ") and line.rstrip().endswith("{"):  # a computation starts
            entry = line.startswith("ENTRY")
        m = _INSTR.match(line)
        if not m or m["suffix"] == "-start":
            continue
        b = shape_bytes(m["shape"])
        by_kind[m["op"]] += b
        count[m["op"]] += 1
        instrs.append({"op": m["op"], "shape": m["shape"].strip(), "bytes": b, "entry": entry})
    p = n_shards
    received = (
        (by_kind["all-gather"] + by_kind["all-to-all"]) * (p - 1) / p
        + by_kind["collective-permute"]
        + by_kind["reduce-scatter"] * (p - 1)
        + by_kind["all-reduce"] * 2 * (p - 1) / p
    )
    return {
        "result_bytes_by_kind": {k: v for k, v in by_kind.items() if count[k]},
        "count_by_kind": {k: v for k, v in count.items() if v},
        "result_bytes_total": sum(by_kind.values()),
        "received_bytes": round(received),
        "instructions": instrs,
    }


# ----------------------------------------------------------------------------- worker
def worker(p: int, cfg: Config, peer_ns: list[int]) -> dict[str, Any]:
    """Runs in a subprocess with ``p`` virtual devices; returns this P's measurements."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as PS

    from jaxsel.attention import apply_rope, dense_attention, select_tokens, sparse_attention
    from jaxsel.attention.sequence import (
        collective_bytes,
        sequence_rope_dense_attention,
        sequence_select,
        sequence_sparse_attention,
    )

    devices = jax.devices()
    if len(devices) != p:
        raise RuntimeError(f"worker {p}: jax sees {len(devices)} devices, expected {p}")
    mesh = jax.make_mesh((p,), ("seq",), devices=devices)
    rep, seq = NamedSharding(mesh, PS()), NamedSharding(mesh, PS("seq"))
    budget = cfg.budget

    def log(msg: str) -> None:
        print(f"[P={p}] {msg}", file=sys.stderr, flush=True)

    def data(n: int):
        kq, kk, kv = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), n), 3)
        q = jax.random.normal(kq, (cfg.hq, cfg.d), jnp.float32)
        k = jax.random.normal(kk, (n, cfg.hkv, cfg.d), jnp.float32)
        v = jax.random.normal(kv, (n, cfg.hkv, cfg.d), jnp.float32)
        return q, k, v, jnp.int32(n)

    def measure(fn, *args) -> tuple[dict[str, Any], Any, str]:
        """Lower, compile, first call (returned), warm-up, timed calls; also the compiled HLO."""
        t0 = time.perf_counter()
        lowered = jax.jit(fn).lower(*args)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        first = jax.block_until_ready(compiled(*args))
        for _ in range(cfg.warmup):
            jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(cfg.iters):
            t = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t)
        timing = {
            "lower_s": t1 - t0,
            "compile_s": t2 - t1,
            "median_ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3,
            "max_ms": max(times) * 1e3,
            "iters": len(times),
        }
        return timing, first, compiled.as_text()

    def ts_single(q, k, v, n):
        idx, valid = select_tokens(q, k, n, **budget)
        return sparse_attention(q, k, v, idx, valid), idx, valid

    def dense_single(q, k, v, n):
        return dense_attention(q, k, v, n)

    def rope_dense_single(q, k, v, n):
        kr = apply_rope(k, jnp.arange(k.shape[0], dtype=jnp.int32))
        return dense_attention(apply_rope(q, n - 1), kr, v, n)

    def ts_step(q, k, v, n):
        idx, valid = sequence_select(q, k, n, axis_name="seq", **budget)
        return sequence_sparse_attention(q, k, v, idx, valid, axis_name="seq"), idx, valid

    def dense_step(q, k, v, n):
        return sequence_rope_dense_attention(q, k, v, n, axis_name="seq")

    smap = functools.partial(
        jax.shard_map, mesh=mesh, in_specs=(PS(), PS("seq"), PS("seq"), PS()), check_vma=False
    )
    ts_sharded = smap(ts_step, out_specs=(PS(), PS(), PS()))
    dense_sharded = smap(dense_step, out_specs=PS())
    # Attention alone over a given selection (P = 1 only): splits the TokenSelect step's time.
    attn_sharded = jax.shard_map(
        functools.partial(sequence_sparse_attention, axis_name="seq"),
        mesh=mesh,
        in_specs=(PS(), PS("seq"), PS("seq"), PS(), PS()),
        out_specs=PS(),
        check_vma=False,
    )

    def peers_at(n: int, args1) -> tuple[dict[str, Any], dict[str, Any]]:
        log(f"N={n}: single-device peers")
        peer, firsts = {"N_total": n}, {}
        for name, fn in (
            ("ts_single", ts_single),
            ("dense_single", dense_single),
            ("rope_dense_single", rope_dense_single),
        ):
            peer[name], firsts[name], _ = measure(fn, *args1)
        return peer, firsts

    import hashlib

    import jaxsel.attention.sequence as seq_mod

    out: dict[str, Any] = {
        "P": p,
        "devices": [str(d) for d in devices],
        "sequence_py_sha256": hashlib.sha256(Path(seq_mod.__file__).read_bytes()).hexdigest(),
        "rows": [],
        "peers": [],
    }
    ns = sorted({cfg.n_of(mode, p) for mode in ("strong", "weak")})
    for n in ns:
        modes = [mode for mode in ("strong", "weak") if cfg.n_of(mode, p) == n]
        if n % p:
            raise ValueError(f"N={n} is not divisible by P={p}")
        q, k, v, kv_len = data(n)
        args1 = jax.device_put((q, k, v, kv_len), devices[0])
        argsp = (
            jax.device_put(q, rep),
            jax.device_put(k, seq),
            jax.device_put(v, seq),
            jax.device_put(kv_len, rep),
        )
        del q, k, v
        log(f"N={n} ({'/'.join(modes)}): sharded TokenSelect")
        t_ts, (o_ts, idx_ts, val_ts), hlo_ts = measure(ts_sharded, *argsp)
        log(f"N={n}: sharded dense")
        t_dn, o_dn, hlo_dn = measure(dense_sharded, *argsp)
        # Correctness against the single-device functions on the same inputs: their first calls
        # when P = 1 times them here (before any other compilation of theirs), else untimed.
        if p == 1:
            peer, firsts = peers_at(n, args1)
            out["peers"].append(peer)
            (ref_o, ref_idx, ref_val), ref_dn = firsts["ts_single"], firsts["rope_dense_single"]
            log(f"N={n}: attention alone over the selection, single-device and P = 1 sharded")
            peer["attn_single"] = measure(sparse_attention, *args1[:3], ref_idx, ref_val)[0]
            peer["attn_sharded_p1"] = measure(attn_sharded, *argsp[:3], idx_ts, val_ts)[0]
        else:
            ref_o, ref_idx, ref_val = jax.jit(ts_single)(*args1)
            ref_dn = jax.jit(rope_dense_single)(*args1)
        idx_ts, val_ts, ref_idx, ref_val = map(np.asarray, (idx_ts, val_ts, ref_idx, ref_val))
        sel, ref_sel = set(idx_ts[val_ts].tolist()), set(ref_idx[ref_val].tolist())
        check = {
            "indices_equal_single_device": bool(
                np.array_equal(idx_ts, ref_idx) and np.array_equal(val_ts, ref_val)
            ),
            "n_selected_differing": len(sel ^ ref_sel) // 2,
            "ts_out_max_abs_err": float(np.max(np.abs(np.asarray(o_ts) - np.asarray(ref_o)))),
            "dense_out_max_abs_err_vs_rope_dense": float(
                np.max(np.abs(np.asarray(o_dn) - np.asarray(ref_dn)))
            ),
        }
        log(f"N={n}: check {check}")
        n_dev = n // p
        analytic = collective_bytes(
            n_shards=p, num_heads=cfg.hq, head_dim=cfg.d, top_k=cfg.top_k, n_local_tokens=n_dev
        )
        kp = min(cfg.top_k, n_dev)
        # An all-gather's RESULT is P times its per-shard payload; these are the payloads.
        payload_ts = 2 * cfg.hq * 4 + kp * 8 + cfg.hq * (cfg.d + 2) * 4
        payload_dn = cfg.hq * (cfg.d + 2) * 4
        for mode in modes:
            out["rows"].append(
                {
                    "mode": mode,
                    "N_total": n,
                    "N_per_device": n_dev,
                    "ts_sharded": t_ts,
                    "dense_sharded": t_dn,
                    "hlo_ts": hlo_collectives(hlo_ts, p),
                    "hlo_dense": hlo_collectives(hlo_dn, p),
                    "analytic_ts": analytic,
                    "analytic_dense": {
                        "combine": analytic["combine"],
                        "total": analytic["combine"],
                    },
                    "analytic_allgather_result_ts": p * payload_ts,
                    "analytic_allgather_result_dense": p * payload_dn,
                    **check,
                }
            )
        del argsp
        if p == 1 and n == ns[-1]:  # the single-device peers at the other total Ns of the run
            for m in [m for m in peer_ns if m not in ns]:
                q, k, v, kv_len = data(m)
                out["peers"].append(peers_at(m, jax.device_put((q, k, v, kv_len), devices[0]))[0])
                del q, k, v
        del args1
    return out


def run_worker(p: int, cfg: Config, peer_ns: list[int]) -> dict[str, Any]:
    """Spawns this script as a worker with ``p`` virtual CPU devices; returns its JSON."""
    env = dict(os.environ)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={p}"])
    env["JAX_PLATFORMS"] = "cpu"
    env[WORKER_ENV] = json.dumps({"p": p, "config": dataclasses.asdict(cfg), "peer_ns": peer_ns})
    cmd = [sys.executable, str(Path(__file__).resolve())]
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"worker P={p} failed with exit code {proc.returncode}")
    lines = [x for x in proc.stdout.splitlines() if x.startswith(MARK)]
    if len(lines) != 1:
        raise RuntimeError(f"worker P={p} printed {len(lines)} result lines:\n{proc.stdout}")
    res = json.loads(lines[0][len(MARK) :])
    res["worker_wall_s"] = time.perf_counter() - t0
    res["loadavg_1min_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(
        f"worker P={p} done in {res['worker_wall_s']:.1f} s, 1-min load average "
        f"{res['loadavg_1min_start_end']}",
        flush=True,
    )
    return res


# ----------------------------------------------------------------------------- report
def table_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    peers = {x["N_total"]: x for r in results for x in r["peers"]}
    rows = []
    for mode in ("strong", "weak"):
        for r in results:
            for x in r["rows"]:
                if x["mode"] != mode:
                    continue
                peer = peers.get(x["N_total"], {})
                ts, dn = x["ts_sharded"]["median_ms"], x["dense_sharded"]["median_ms"]
                rows.append(
                    {
                        "P": r["P"],
                        "mode": mode,
                        "N": x["N_total"],
                        "N/dev": x["N_per_device"],
                        "compile_s ts": x["ts_sharded"]["compile_s"],
                        "compile_s dense": x["dense_sharded"]["compile_s"],
                        "ts ms": ts,
                        "dense ms": dn,
                        "ts/1dev": ts / peer["ts_single"]["median_ms"] if peer else None,
                        "dense/1dev rope": dn / peer["rope_dense_single"]["median_ms"]
                        if peer
                        else None,
                        "dense/1dev": dn / peer["dense_single"]["median_ms"] if peer else None,
                        "HLO recv ts": x["hlo_ts"]["received_bytes"],
                        "analytic ts": x["analytic_ts"]["total"],
                        "HLO AG result ts": x["hlo_ts"]["result_bytes_by_kind"].get(
                            "all-gather", 0
                        ),
                        "P*payload ts": x["analytic_allgather_result_ts"],
                        "HLO recv dense": x["hlo_dense"]["received_bytes"],
                        "analytic dense": x["analytic_dense"]["total"],
                        "idx ok": x["indices_equal_single_device"],
                        "load": "{}-{}".format(*r["loadavg_1min_start_end"]),
                    }
                )
    return rows


def peer_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "N": x["N_total"],
            "ts_single ms": x["ts_single"]["median_ms"],
            "dense_single ms": x["dense_single"]["median_ms"],
            "rope_dense_single ms": x["rope_dense_single"]["median_ms"],
            "compile_s ts_single": x["ts_single"]["compile_s"],
            "attn_single ms": x["attn_single"]["median_ms"] if "attn_single" in x else None,
            "attn_sharded P=1 ms": x["attn_sharded_p1"]["median_ms"]
            if "attn_sharded_p1" in x
            else None,
        }
        for x in sorted((x for r in results for x in r["peers"]), key=lambda x: x["N_total"])
    ]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "–" if v is None else str(v)

    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], cfg: Config, path: Path) -> None:
    from jaxsel.utils import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.8))
    peers = {x["N_total"]: x for r in results for x in r["peers"]}
    for mode, style in (("strong", "-"), ("weak", "--")):
        rs = [(r["P"], x) for r in results for x in r["rows"] if x["mode"] == mode]
        ps = [p for p, _ in rs]
        for key, label, color in (
            ("ts_sharded", "TokenSelect", "C0"),
            ("dense_sharded", "dense", "C1"),
        ):
            ys = [x[key]["median_ms"] for _, x in rs]
            ax[0].plot(ps, ys, "o" + style, color=color, label=f"{label} sharded, {mode}")
        for key, label, color in (
            ("ts_single", "TokenSelect", "C0"),
            ("rope_dense_single", "RoPE+dense", "C1"),
        ):
            pts = [
                (p, peers[x["N_total"]][key]["median_ms"]) for p, x in rs if x["N_total"] in peers
            ]
            if pts:
                ax[0].plot(*zip(*pts), "x:" if mode == "weak" else "x", color=color, alpha=0.6,
                           label=f"{label} 1 device at the same N, {mode}")  # fmt: skip
    ax[0].set(
        xscale="log", yscale="log", xlabel="P (virtual CPU devices)", ylabel="ms per decode step",
        title=f"strong: N={cfg.n_total}; weak: N/device={cfg.n_per_device}\n"
        "(virtual devices share the cores: not real scaling)",
    )  # fmt: skip
    ax[0].set_xticks(DEVICE_COUNTS, [str(p) for p in DEVICE_COUNTS])
    ax[0].set_xticks([], minor=True)
    ax[0].legend(fontsize=7)
    rs = sorted(
        ((r["P"], x) for r in results for x in r["rows"] if x["mode"] == "strong"),
        key=lambda t: t[0],
    )
    ps = [p for p, _ in rs]
    for kind, color in (("ts", "C0"), ("dense", "C1")):
        ax[1].plot(ps, [x[f"hlo_{kind}"]["received_bytes"] / 1024 for _, x in rs], "o-", color=color,
                   label=f"{kind}: HLO, received per shard")  # fmt: skip
        ax[1].plot(ps, [x[f"analytic_{kind}"]["total"] / 1024 for _, x in rs], "x--", color=color,
                   markersize=10, label=f"{kind}: analytic collective_bytes")  # fmt: skip
        ax[1].plot(ps, [x[f"hlo_{kind}"]["result_bytes_total"] / 1024 for _, x in rs], "s:", color=color,
                   alpha=0.5, label=f"{kind}: HLO, collective result size")  # fmt: skip
    ax[1].set(
        xlabel="P", ylabel="KiB per step and layer",
        title="bytes moved by collectives (strong scaling; weak is the same here)",
    )  # fmt: skip
    ax[1].set_xticks(DEVICE_COUNTS, [str(p) for p in DEVICE_COUNTS])
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_readme(path: Path, payload: dict[str, Any], rows, prows, command: str) -> None:
    cfg, m = payload["config"], payload["machine"]
    ok = all(x["indices_equal_single_device"] for r in payload["workers"] for x in r["rows"])
    text = f"""# Sequence-sharded TokenSelect: scale-out on virtual CPU devices (issue #22, part 4)

One decode step of one layer, Hq={cfg["hq"]}, Hkv={cfg["hkv"]}, d={cfg["d"]}, float32 cache,
TokenSelect budget n_sink={cfg["n_sink"]} + top_k={cfg["top_k"]} + n_local={cfg["n_local"]},
sharded along the sequence over P virtual CPU devices (`jax.shard_map`, mesh axis `seq`).
Strong scaling at N = {cfg["n_total"]} total, weak scaling at N = {cfg["n_per_device"]} per device.
Measured {payload["date"]} on {m["cpu_model"] or m["processor"]} ({m["cpu_count"]} CPUs, load average
at start {m["loadavg_start"]}, at end {m["loadavg_end"]}), jax {m["jax"]}; run wall time
{payload["wall_s"]:.0f} s. Median of {cfg["iters"]} timed calls after {cfg["warmup"]} warm-up
call(s) (plus the first call), each ended by `block_until_ready`.

> **Caveat.** These are *virtual* devices (`--xla_force_host_platform_device_count=P`): the
> collectives are memory copies inside one process, and all P shards share the same
> {m["cpu_count"]} cores. The wall times therefore do NOT show real scaling: P shards do the same
> total work on the same cores plus the partitioning overhead. Weak-scaling rows grow N with P and
> so grow the work on this machine. **The byte counts are the portable result.**

Reproduce:

    {command}

## Results

Sharded selections equal the single-device `select_tokens` selections in every row: **{ok}**
(`idx ok`; the outputs agree to float32 tolerance, see `bench.json`).

{markdown_table(rows)}

Columns: `ts` = sharded TokenSelect step (`sequence_select` + `sequence_sparse_attention`);
`dense` = sharded dense step (`sequence_rope_dense_attention`, which rotates every key by RoPE);
`compile_s` = XLA compile time (lowering is timed separately in the JSON); `ts/1dev` = sharded
TokenSelect time / single-device `select_tokens` + `sparse_attention` at the same total N;
`dense/1dev rope` = sharded dense / single-device RoPE on every key + `dense_attention` (the
like-for-like peer); `dense/1dev` = sharded dense / plain `dense_attention` (no RoPE);
`load` = the machine's 1-minute load average at the start and end of that P's worker (the machine
is shared with other work, and the count includes this benchmark's own threads; times from a
worker whose load went well above the {m["cpu_count"]} cores are less reliable; the single-device
peers ran in the P = 1 worker).

Bytes (per decode step and layer): `HLO recv` = bytes ONE shard receives, derived from the
collective instructions of the compiled HLO under the convention of
`jaxsel.attention.sequence.collective_bytes`: (P-1)/P of an all-gather's result size (the shard
already holds its own slice), all of a collective-permute's. `analytic` = `collective_bytes(...)`
`["total"]` (for dense only its `combine` term, the one collective dense needs). `HLO AG result` =
the summed result size of the all-gathers as printed in the HLO (every shard ends up holding it),
to compare with `P*payload`, P times the per-shard payload `2 Hq 4 + k' 8 + Hq (d+2) 4`
(k' = min(top_k, N/dev)).

Single-device peers (P = 1 worker, plain `jax.jit`, no mesh; `attn_*` = attention alone over the
step's selection: single-device `sparse_attention`, and `sequence_sparse_attention` under
`shard_map` with P = 1):

{markdown_table(prows)}

## Observations

{payload["observations"]}

Files: `bench.json` (all numbers, the collective instructions found in each compiled HLO, the
machine), `bench.png` (left: step time vs P; right: collective bytes, HLO vs analytic).
"""
    path.write_text(text)


def observations(results: list[dict[str, Any]]) -> str:
    """Plain statements derived from the numbers (no claims beyond them)."""
    notes = []
    mism = []
    for r in results:
        for x in r["rows"]:
            for kind in ("ts", "dense"):
                h, a = x[f"hlo_{kind}"]["received_bytes"], x[f"analytic_{kind}"]["total"]
                if h != a:
                    mism.append(f"P={r['P']} {x['mode']} {kind}: HLO {h} vs analytic {a}")
    if mism:
        notes.append(
            "HLO-derived received bytes differ from the analytic count: " + "; ".join(mism)
        )
    else:
        notes.append(
            "The received bytes derived from the compiled HLO equal the analytic "
            "`collective_bytes` in every row (TokenSelect and dense)."
        )
    kinds = sorted({k for r in results for x in r["rows"] for k in x["hlo_ts"]["count_by_kind"]})
    counts = {
        r["P"]: x["hlo_ts"]["count_by_kind"]
        for r in results
        for x in r["rows"]
        if x["mode"] == "strong"
    }
    notes.append(
        f"Collective kinds in the TokenSelect HLO: {kinds or 'none'}; counts per P: {counts}."
    )
    pmax = max(counts, default=None)
    x1 = next((x for r in results for x in r["rows"] if r["P"] == pmax), None)
    if x1 is not None:
        ins = x1["hlo_ts"]["instructions"]
        notes.append(
            f"TokenSelect all-gathers at P = {pmax} (result shapes): "
            + ", ".join(f"`{i['shape'].split('{')[0]}`" for i in ins)
            + f"; {sum(not i['entry'] for i in ins)} of them sit outside the ENTRY computation "
            "(in the sparse branch of the selection's `lax.cond`, which every step here takes "
            "since kv_len = N > budget; the dense fallback branch has none)."
            + (
                " The top-k merge gathers values and indices in two all-gathers."
                if any(i["shape"].startswith("s32") for i in ins)
                else ""
            )
        )
    digests = {r["P"]: r.get("sequence_py_sha256", "")[:12] for r in results}
    if len(set(digests.values())) > 1:
        notes.append(
            "WARNING: the workers imported different versions of jaxsel/attention/sequence.py "
            f"(sha256 prefixes per P: {digests}); the run mixes implementations, rerun it."
        )
    att = [x for r in results for x in r["peers"] if "attn_single" in x]
    if att:
        notes.append(
            "Attention alone over the same selection (P = 1 worker): single-device "
            "`sparse_attention` vs `sequence_sparse_attention` under `shard_map` with P = 1: "
            + "; ".join(
                f"N={x['N_total']}: {x['attn_single']['median_ms']:.3g} vs "
                f"{x['attn_sharded_p1']['median_ms']:.3g} ms"
                for x in sorted(att, key=lambda x: x["N_total"])
            )
            + ". Where these differ, that part of `ts/1dev` comes from two different attention "
            "implementations (`sparse_attention` vs the sharded `partial_attention` + combine), "
            "not from sharding."
        )
    same = [r["P"] for r in results if len({x["N_total"] for x in r["rows"]}) < len(r["rows"])]
    if same:
        notes.append(
            f"At P = {', '.join(map(str, same))} the strong and weak shapes coincide; that "
            "configuration is measured once and shown in both rows."
        )
    if 1 in counts:
        notes.append(
            "At P = 1 the compiled HLO still holds the all-gathers (single-member groups, result "
            "= payload); a shard receives 0 bytes from them, as the analytic count says."
        )
    return "\n".join(f"- {n}" for n in notes)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), "")
    except OSError:
        return ""


def main(argv=None) -> int:
    worker_spec = os.environ.get(WORKER_ENV)
    if worker_spec is not None:  # a worker spawned by run_worker with its own device count
        spec = json.loads(worker_spec)
        c = spec["config"]
        c["device_counts"] = tuple(c["device_counts"])
        res = worker(spec["p"], Config(**c), spec["peer_ns"])
        print(MARK + json.dumps(res), flush=True)
        return 0

    cfg = parse_config(Config, argv, description=__doc__, presets={"quick": QUICK})
    if cfg.iters < 5:
        print(f"note: iters={cfg.iters} < 5", file=sys.stderr)
    peer_ns = sorted({cfg.n_of(mode, p) for p in cfg.device_counts for mode in ("strong", "weak")})
    cores = os.cpu_count()
    print(
        f"Sequence-sharded TokenSelect scale-out: Hq={cfg.hq} Hkv={cfg.hkv} d={cfg.d} f32, budget "
        f"{cfg.n_sink}+{cfg.top_k}+{cfg.n_local}, strong N={cfg.n_total}, weak N/device="
        f"{cfg.n_per_device}, P in {cfg.device_counts}"
    )
    print(CAVEAT.format(cores=cores))
    load0 = os.getloadavg()
    print(f"load average: {load0}", flush=True)
    t0 = time.perf_counter()
    results = [run_worker(p, cfg, peer_ns) for p in cfg.device_counts]
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()

    rows, prows = table_rows(results), peer_rows(results)
    from jaxsel._bench import format_table

    print(CAVEAT.format(cores=cores))
    print("bytes: HLO recv = received per shard from the compiled HLO ((P-1)/P of an all-gather")
    print("result); analytic = collective_bytes total (dense: its combine term); HLO AG result =")
    print("all-gather result size summed, vs P*payload.")
    print(format_table(rows))
    print("single-device peers:")
    print(format_table(prows))
    obs = observations(results)
    print(obs)
    print(f"wall time: {wall:.1f} s; load average end: {load1}")

    import jax  # this process only reports; the measurements ran in the workers

    payload = {
        "config": dataclasses.asdict(cfg),
        "quick": cfg.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": wall,
        "machine": {
            "processor": platform.processor(),
            "cpu_model": cpu_model(),
            "machine": platform.machine(),
            "platform": platform.platform(),
            "cpu_count": cores,
            "loadavg_start": [round(x, 2) for x in load0],
            "loadavg_end": [round(x, 2) for x in load1],
            "jax": jax.__version__,
            "python": sys.version.split()[0],
        },
        "shapes": {
            "q": [cfg.hq, cfg.d],
            "k_v_per_device": "[N/P, Hkv, d]",
            "hq": cfg.hq,
            "hkv": cfg.hkv,
            "d": cfg.d,
        },
        "dtype": "float32",
        "caveat": CAVEAT.format(cores=cores),
        "bytes_convention": "received_bytes: bytes one shard receives per step and layer, "
        "(P-1)/P of an all-gather result, all of a collective-permute (as collective_bytes); "
        "result_bytes: the result shapes printed in the compiled HLO",
        "indices_equal_single_device": all(
            x["indices_equal_single_device"] for r in results for x in r["rows"]
        ),
        "table": rows,
        "peers_table": prows,
        "observations": obs,
        "workers": results,
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_quick" if cfg.quick else "bench"
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, cfg, out / f"{stem}.png")
    if not cfg.quick:
        cmd = "nice -n 10 .venv/bin/python scripts/bench_scaleout.py" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:])
        )
        write_readme(out / "README.md", payload, rows, prows, cmd)
    print(f"wrote {out}/{stem}.json, {stem}.png" + ("" if cfg.quick else ", README.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
