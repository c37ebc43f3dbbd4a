"""OREO vs baselines over seeds: greedy accuracy (held-out prompts, longer chains), value-guided
beam search, majority vote vs Soft Self-Consistency. Table of mean +/- std, JSON and PNG under
results/oreo/.

    nice -n 10 python scripts/bench_oreo.py --seeds 0 1 2 --tag bigcritic  # results/oreo, 3 seeds
    python scripts/bench_oreo.py --quick                           # ~1 minute smoke run
    # majority vote vs Soft-SC only, on the task with random (not systematic) SFT step errors
    nice -n 10 python scripts/bench_oreo.py --sc-only --p-err 0.15 --p-confuse 0 \
        --seeds 0 1 2 --tag sc_random_errors
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_oreo import TrainOreoConfig, build_config, run

from jaxsel._bench import format_table, write_json
from jaxsel.rl.oreo import run_self_consistency
from jaxsel.utils import flag, parse_config

METHODS = ("sft", "rft", "dpo", "oreo", "oreo_step", "oreo_iter")


@dataclasses.dataclass(frozen=True)
class BenchOreoConfig(TrainOreoConfig):
    """``train_oreo.py``'s flags (``--seed`` is replaced by each of ``--seeds``) plus these."""

    seeds: tuple[int, ...] = (0, 1, 2)
    results: Path = Path("results/oreo")
    tag: str | None = flag(None, "file name tag (default quick/full)")
    sc_only: bool = flag(
        False, "only majority vote vs Soft-SC (SFT -> one OREO round -> K samples), per seed"
    )


def _ms(xs: list[float]) -> str:
    return f"{np.mean(xs):.3f} +/- {np.std(xs):.3f}"


def summarise(results: list[dict]) -> dict[str, list[dict]]:
    tables: dict[str, list[dict]] = {"greedy": [], "beam": [], "self_consistency": []}
    for m in METHODS:
        if m not in results[0]["greedy"]:
            continue
        tables["greedy"].append(
            {
                "method": m,
                "held_out": _ms([r["greedy"][m] for r in results]),
                "longer_chains": _ms([r["greedy_long"][m] for r in results]),
            }
        )
    pol = results[0]["beam_policy"]
    tables["greedy"].append(
        {
            "method": f"beam B=5 ({pol})",
            "held_out": _ms([r["beam"]["5"] for r in results])
            if "5" in results[0]["beam"]
            else "-",
            "longer_chains": "-",
        }
    )
    for b in results[0]["beam"]:
        tables["beam"].append({"beam": b, "accuracy": _ms([r["beam"][b] for r in results])})
    tables["beam"].insert(
        0,
        {
            "beam": f"greedy ({pol}, same prompts)",
            "accuracy": _ms([r["greedy_beam_subset"] for r in results]),
        },
    )
    for b in results[0].get("beam_uninformative", {}):
        tables["beam"].append(
            {
                "beam": f"{b}, ranked by a score blind to correctness (chance)",
                "accuracy": _ms([r["beam_uninformative"][b] for r in results]),
            }
        )
    tables["paired_per_seed"] = paired(results)
    tables["self_consistency"] = sc_table(results)
    tables["value_ranking"] = []
    for vname in results[0]["value_ranking"]:
        row = {"value": vname}
        for k in results[0]["value_ranking"][vname]:
            row[k] = _ms([r["value_ranking"][vname][k] for r in results])
        tables["value_ranking"].append(row)
    return tables


def sc_table(results: list[dict]) -> list[dict]:
    """Majority vote and Soft-SC accuracy per policy's samples: mean +/- std, per seed, and the
    per-seed difference to majority vote (same prompts)."""
    rows = []
    for pn, by_selector in results[0]["self_consistency"].items():
        for k in by_selector:
            accs = [r["self_consistency"][pn][k] for r in results]
            diff = [a - r["self_consistency"][pn]["majority"] for a, r in zip(accs, results)]
            rows.append(
                {
                    "samples_of": pn,
                    "selector": k,
                    "accuracy": _ms(accs),
                    "per_seed": ", ".join(f"{a:.3f}" for a in accs),
                    "minus_majority_per_seed": ", ".join(f"{d:+.3f}" for d in diff),
                }
            )
    return rows


def paired(results: list[dict]) -> list[dict]:
    """Per-seed differences on the same prompts (the claims of the issue)."""
    rows = []

    def add(name: str, xs: list[float]) -> None:
        rows.append(
            {
                "difference": name,
                "per_seed": ", ".join(f"{x:+.3f}" for x in xs),
                "mean": f"{np.mean(xs):+.3f}",
            }
        )

    g = lambda r, m: r["greedy"][m]
    add("oreo - rft (greedy)", [g(r, "oreo") - g(r, "rft") for r in results])
    add("rft - sft (greedy)", [g(r, "rft") - g(r, "sft") for r in results])
    if "oreo_iter" in results[0]["greedy"]:
        add("oreo_iter - rft (greedy)", [g(r, "oreo_iter") - g(r, "rft") for r in results])
    if "5" in results[0]["beam"]:
        add("beam B=5 - greedy", [r["beam"]["5"] - r["greedy_beam_subset"] for r in results])
        if "5" in results[0].get("beam_uninformative", {}):
            add(
                "beam B=5 by V - by blind score",
                [r["beam"]["5"] - r["beam_uninformative"]["5"] for r in results],
            )
    for vn in results[0]["value_ranking"]:
        vr = lambda r, vn=vn: r["value_ranking"][vn]
        if "best_of_k_uninformative" in vr(results[0]):
            add(
                f"best-of-K by {vn} V - by blind score",
                [vr(r)["best_of_k_by_value"] - vr(r)["best_of_k_uninformative"] for r in results],
            )
    for pn in results[0]["self_consistency"]:
        sc = lambda r, pn=pn: r["self_consistency"][pn]
        for sel in ("soft_sc_mean", "soft_sc_min", "soft_sc_mean_log"):
            add(
                f"{sel} - majority ({pn} samples)",
                [sc(r)[sel] - sc(r)["majority"] for r in results],
            )
    return rows


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ms = [m for m in METHODS if m in results[0]["greedy"]]
    for j, key in enumerate(("greedy", "greedy_long")):
        vals = np.array([[r[key][m] for m in ms] for r in results])
        ax[0].bar(
            np.arange(len(ms)) + 0.4 * j,
            vals.mean(0),
            0.4,
            yerr=vals.std(0),
            label="held-out" if j == 0 else "longer chains",
            capsize=3,
        )
    ax[0].set_xticks(np.arange(len(ms)) + 0.2, ms, rotation=20)
    ax[0].set_ylabel("greedy accuracy")
    ax[0].legend()
    bs = list(results[0]["beam"])
    vals = np.array([[r["beam"][b] for b in bs] for r in results])
    ax[1].errorbar([int(b) for b in bs], vals.mean(0), yerr=vals.std(0), marker="o", capsize=3)
    pol = results[0]["beam_policy"]
    g = np.array([r["greedy_beam_subset"] for r in results])
    ax[1].axhline(g.mean(), ls="--", c="gray", label=f"greedy ({pol})")
    for b in results[0].get("beam_uninformative", {}):
        u = np.array([r["beam_uninformative"][b] for r in results])
        ax[1].errorbar(
            [int(b)],
            [u.mean()],
            yerr=[u.std()],
            marker="x",
            c="red",
            capsize=3,
            ls="none",
            label="blind score (chance)",
        )
    ax[1].set_xlabel("beam size B (value-guided)")
    ax[1].set_ylabel("accuracy")
    ax[1].legend()
    pols = list(results[0]["self_consistency"])
    sel = list(results[0]["self_consistency"][pols[0]])
    for j, pn in enumerate(pols):
        vals = np.array([[r["self_consistency"][pn][s] for s in sel] for r in results])
        w = 0.8 / len(pols)
        ax[2].bar(
            np.arange(len(sel)) + w * j, vals.mean(0), w, yerr=vals.std(0), capsize=3, label=pn
        )
    ax[2].set_xticks(np.arange(len(sel)) + 0.4 - 0.4 / len(pols), sel, rotation=20)
    ax[2].set_ylabel(f"accuracy, K={results[0].get('sc_k', '?')} samples")
    ax[2].legend(title="samples of")
    t = results[0]["config"]["task"]
    fig.suptitle(
        f"OREO on arithmetic chains mod {t['modulus']} ({t['n_steps']} steps), "
        f"{len(results)} seeds (mean +/- std)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sc_only(args, tag: str) -> None:
    """Majority vote vs Soft-SC over seeds (:func:`run_self_consistency`), no other phases."""
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = time.time()
    cfg = build_config(args)
    results = []
    for s in tqdm(args.seeds, desc="seeds (sc only)"):
        t1 = time.time()
        r = run_self_consistency(jax.random.key(s), cfg, sc_k=args.sc_k)
        r["wall_s"] = time.time() - t1
        results.append(r)
    pols = list(results[0]["self_consistency"])
    sel = list(results[0]["self_consistency"][pols[0]])
    rows = sc_table(results)
    greedy = [
        {"method": m, "held_out": _ms([r["greedy"][m] for r in results])}
        for m in results[0]["greedy"]
    ]
    write_json(
        args.results / f"bench_{tag}.json",
        {
            "tables": {"self_consistency": rows, "greedy": greedy},
            "runs": results,
            "seeds": args.seeds,
            "sc_k": args.sc_k,
            "config": dataclasses.asdict(cfg),
            "wall_s": time.time() - t0,
        },
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, pn in enumerate(pols):
        vals = np.array([[r["self_consistency"][pn][k] for k in sel] for r in results])
        w = 0.8 / len(pols)
        ax.bar(np.arange(len(sel)) + w * j, vals.mean(0), w, yerr=vals.std(0), capsize=3, label=pn)
    ax.set_xticks(np.arange(len(sel)) + 0.4 - 0.4 / len(pols), sel, rotation=20)
    ax.set_ylabel(f"accuracy, K={args.sc_k} samples")
    ax.legend(title="samples of")
    t = cfg.task
    ax.set_title(
        f"mod {t.modulus}, {t.n_steps} steps, SFT errors p_err={cfg.p_err} "
        f"p_confuse={cfg.p_confuse}; {len(results)} seeds",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(args.results / f"bench_{tag}.png", dpi=110)
    for name, rs in (("self_consistency", rows), ("greedy", greedy)):
        print(f"\n== {name} ==")
        print(format_table(rs))
    print(f"\nwrote {args.results}/bench_{tag}.json and .png in {time.time() - t0:.0f} s")


def main() -> None:
    args = parse_config(BenchOreoConfig, description=__doc__)
    t0 = time.time()
    tag = args.tag or ("quick" if args.quick else "full")
    args.results.mkdir(parents=True, exist_ok=True)
    if args.sc_only:
        sc_only(args, tag)
        return
    results = []
    for s in args.seeds:
        r = run(dataclasses.replace(args, seed=s))
        # JSON keys are strings: normalise now so tables read the same from disk
        r["beam"] = {str(k): v for k, v in r["beam"].items()}
        r["beam_uninformative"] = {str(k): v for k, v in r.get("beam_uninformative", {}).items()}
        r["sc_k"] = args.sc_k
        results.append(r)
        # written after every seed, so an interrupted run still leaves its finished seeds
        tables = summarise(results)
        write_json(
            args.results / f"bench_{tag}.json",
            {
                "tables": tables,
                "runs": results,
                "seeds": args.seeds[: len(results)],
                "wall_s": time.time() - t0,
            },
        )
        plot(results, args.results / f"bench_{tag}.png")
    for name, rows in tables.items():
        print(f"\n== {name} ==")
        print(format_table(rows))
    print(f"\nwrote {args.results}/bench_{tag}.json and .png in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
