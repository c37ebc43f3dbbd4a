"""Long-context extrapolation of the retrieval model: accuracy at 1x..32x the training length.

    nice -n 10 .venv/bin/python scripts/eval_longcontext.py --n 200

For every (policy, length multiple) cell: ``n`` questions (half associative recall, half passkey),
greedy answers, exact match. The same questions are used for every policy at a given length. Writes
``results/models/longcontext.json`` (with machine info) and ``longcontext.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
from tqdm.auto import tqdm

from jaxsel._bench import format_table, write_json
from jaxsel.models import retrieval as rt
from jaxsel.utils import flag, line_plot, parse_config


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = flag(str(rt.ASSET_DIR), "saved retrieval model")
    multiples: str = "1,2,4,8,16,32"
    n: int = flag(200, "questions per cell")
    n_at: str = flag("", "per-multiple overrides of --n, e.g. '32=100'")
    batch_size: int = 100
    policies: str = flag("all", "comma list or 'all'")
    seed: int = 0
    out: Path = Path("results/models")
    slice_only: bool = flag(False, "only the test slice")
    no_slice: bool = flag(False, "skip the test slice")


def parse() -> Config:
    return parse_config(Config, description=__doc__)


def plot(rows: list[dict], path: Path, train_len: int) -> None:
    curves = {}
    for name in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == name]
        curves[name] = ([r["multiple"] for r in rs], [r["accuracy"] for r in rs])
    line_plot(
        curves,
        path,
        xlabel=f"prompt length / training length ({train_len})",
        ylabel="exact-match accuracy",
        title="Retrieval beyond the training length",
        log_x_base=2,
        ylim=(-0.02, 1.02),
        legend=True,
    )


def main() -> None:
    args = parse()
    params, config, info = rt.load_model(args.model)
    train_len = info["train_config"]["train_len"]
    n_pairs = info["train_config"]["n_pairs"]
    policies = rt.eval_policies(train_len)
    if args.policies != "all":
        policies = {k: policies[k] for k in args.policies.split(",")}
    if args.slice_only:
        args.out.mkdir(parents=True, exist_ok=True)
        write_slice(params, config, args, train_len, n_pairs)
        return
    multiples = [int(m) for m in args.multiples.split(",")]
    n_at = {int(k): int(v) for k, v in (kv.split("=") for kv in args.n_at.split(",") if kv)}
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "longcontext.partial.json"
    rows = json.loads(partial.read_text())["rows"] if partial.exists() else []
    done = {(r["policy"], r["multiple"]) for r in rows}
    t0 = time.perf_counter()
    cells = [(m, name) for m in multiples for name in policies if (name, m) not in done]
    for m, name in tqdm(cells, desc="cells"):
        n = n_at.get(m, args.n)
        res = rt.evaluate(
            params,
            config,
            policies[name],
            length=m * train_len,
            n=n,
            key=jax.random.fold_in(jax.random.key(args.seed), m),
            batch_size=args.batch_size,
            train_len=train_len,
            n_pairs=n_pairs,
        )
        rows.append({"policy": name, "multiple": m, "length": m * train_len, **res})
        partial.write_text(json.dumps({"rows": rows}, indent=1))
        tqdm.write(f"{name:>22s} x{m:<3d} acc {res['accuracy']:.3f} ({res['seconds']:.0f} s)")
    rows.sort(key=lambda r: (list(policies).index(r["policy"]), r["multiple"]))
    print(format_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "train_len": train_len,
        "policies": {k: repr(v) for k, v in policies.items()},
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }
    print(f"wrote {write_json(args.out / 'longcontext.json', payload)}")
    plot(rows, args.out / "longcontext.png", train_len)
    print(f"wrote {args.out / 'longcontext.png'}")
    if not args.no_slice:
        write_slice(params, config, args, train_len, n_pairs)


SLICE = (("dense", 1), ("tokenselect_compact", 16), ("dense", 16), ("streaming", 4))
SLICE_N = 20


def write_slice(params, config, args, train_len: int, n_pairs: int) -> None:
    """A few small cells the test suite recomputes from the shipped checkpoint."""
    policies = rt.eval_policies(train_len)
    cells = []
    for name, m in SLICE:
        res = rt.evaluate(
            params,
            config,
            policies[name],
            length=m * train_len,
            n=SLICE_N,
            key=jax.random.fold_in(jax.random.key(args.seed), m),
            train_len=train_len,
            n_pairs=n_pairs,
        )
        cells.append({"policy": name, "multiple": m, "length": m * train_len, "n": SLICE_N, **res})
    path = write_json(args.out / "longcontext_slice.json", {"seed": args.seed, "cells": cells})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
