"""OREO vs baselines over seeds: greedy accuracy (held-out prompts, longer chains), value-guided
beam search, majority vote vs Soft Self-Consistency. Table of mean +/- std, JSON and PNG under
results/oreo/.

    nice -n 10 python scripts/bench_oreo.py --seeds 0 1 2 --tag full   # results/oreo (3 seeds)
    python scripts/bench_oreo.py --quick                           # ~1 minute smoke run
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_oreo import parser as train_parser
from train_oreo import run

from jaxsel._bench import format_table, write_json

METHODS = ("sft", "rft", "dpo", "oreo", "oreo_step", "oreo_iter")


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
    for pol_name in results[0]["self_consistency"]:
        for k in results[0]["self_consistency"][pol_name]:
            accs = [r["self_consistency"][pol_name][k] for r in results]
            tables["self_consistency"].append(
                {"samples_of": pol_name, "selector": k, "accuracy": _ms(accs)}
            )
    tables["value_ranking"] = []
    for vname in results[0]["value_ranking"]:
        row = {"value": vname}
        for k in results[0]["value_ranking"][vname]:
            row[k] = _ms([r["value_ranking"][vname][k] for r in results])
        tables["value_ranking"].append(row)
    return tables


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


def main() -> None:
    ap = train_parser()
    ap.description = __doc__
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--results", type=Path, default=Path("results/oreo"))
    ap.add_argument("--tag", type=str, default=None, help="file name tag (default quick/full)")
    args = ap.parse_args()
    t0 = time.time()
    tag = args.tag or ("quick" if args.quick else "full")
    args.results.mkdir(parents=True, exist_ok=True)
    results = []
    for s in args.seeds:
        args.seed = s
        r = run(args)
        # JSON keys are strings: normalise now so tables read the same from disk
        r["beam"] = {str(k): v for k, v in r["beam"].items()}
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
