"""Reward-vs-compute curves for diffusion steering, measured against exact tilted targets.

Models: (a) GMM with the closed-form denoiser (also at extra tilts ``--lam-sweep``), (b) the same GMM
learned by an MLP, (c) 8x8 digits with an MLP denoiser and a classifier-probability reward, (d) a
Markov chain with the exact masked denoiser and (d') a tiny trained transformer.

Methods, each configured to target exp(lam r) p where its theory allows (alpha = 1 / lam):
best-of-N argmax (``best_of_n``, independent of lam), best-of-N with softmax(lam r) selection
(``bon_softmax``, sampling-importance-resampling), SVDD-PM (``svdd_pm``), SVDD-PM with alpha = 0
(``svdd_pm_argmax``, the authors' default), SVDD-R with properly weighted chain resampling
(``svdd_r``, chains x 4 candidates), SVDD with the exact soft value (``svdd_exact_soft_value``,
oracle, model (a) only), SVDD-MC with value networks regressed on rollouts of the model's own
sampler (``svdd_mc``: mean value E[r | x_t]; ``svdd_mc_soft``: soft value (1/lam) log E[exp(lam r)
| x_t]; weights from scripts/train_diffusion_toys.py, models (a) and (b)), FK steering
(``fk_diff_ess``: DIFF, adaptive ESS < k/2) and SMC (DIFF, resample every step). For each budget n
(particles / candidates / samples) and seed we report denoiser and reward calls per output
sample, median, mean and top-10% reward, naturalness (exact log p under the base model where
known; a held-out density otherwise), diversity, distance to the exact tilted target (sliced W1
against the exact projected CDFs for the GMM; KL of the reward histogram and TV on sequences for
the chain), samples/s and compile time apart.

    nice -n 10 python scripts/bench_steering.py --models a --budgets 1,4,16,32 --skip-n1
    nice -n 10 python scripts/bench_steering.py --models b,d --budgets 1,4,16,32 --skip-n1
    (results/diffusion/README.md lists the exact commands of the committed results)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxsel import _bench
from jaxsel.diffusion import benchmark as B
from jaxsel.utils import flag, parse_config

COLUMNS = [
    "model",
    "method",
    "n",
    "denoiser_calls",
    "reward_calls",
    "value_calls",
    "lam",
    "reward_median",
    "reward_mean",
    "reward_top10",
    "sliced_w1_to_target",
    "tv_sequences",
    "kl_count_hist",
    "naturalness_logp",
    "naturalness_heldout_gmm_ll",
    "diversity",
    "samples_per_s",
    "compile_s",
]


@dataclasses.dataclass(frozen=True)
class Config(B.SteeringBenchConfig):
    out: str = "results/diffusion"
    tag: str = flag("", "output names bench_steering_<tag>.json (default: models)")


def main() -> None:
    cfg = parse_config(Config, description=__doc__)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = cfg.tag or "".join(sorted(cfg.model_set))
    all_rows: list[dict] = []
    floors: dict[str, float] = {}

    for run in B.run_steering_benchmark(cfg):
        all_rows += run.rows
        if run.noise_floor is not None:
            floors[run.tag] = run.noise_floor
            print(f"{run.tag}: noise floor (exact target draws) sliced W1 = {run.noise_floor:.3f}")
        if run.target is not None:
            B.plot_gmm_scatter(
                run.keep,
                run.target,
                out / f"gmm_scatter_{run.tag}.png",
                f"{run.tag}, lambda={run.lam}",
            )
        if run.unsteered is not None:
            B.plot_digits(run.keep, run.unsteered, out / "digits_grid.png")
        if run.tag.startswith("a_gmm_exact"):
            B.plot_lam_sweep(
                B.summarise(all_rows), floors, cfg.sweep_budget, out / "gmm_lam_sweep.png"
            )

        summary = B.summarise(all_rows)
        counts = B.seed_counts(all_rows)
        _bench.write_json(
            out / f"bench_steering_{stem}.json",
            {
                "config": dataclasses.asdict(cfg),
                **({"noise_floor_sliced_w1": floors} if floors else {}),
                "seeds_closer_than_best_of_n": counts,
                "summary": summary,
                "rows": all_rows,
            },
        )
        B.plot_curves(summary, out / f"reward_curves_{stem}.png")
        cols = [c for c in COLUMNS if any(c in s for s in summary)]
        print(_bench.format_table([s for s in summary if s["model"] == run.tag], cols), flush=True)
        for k, v in counts.items():
            if k.startswith(run.tag + " "):
                print(
                    f"{k}: seeds closer than best_of_n: "
                    + ", ".join(f"{m} {c}" for m, c in v.items())
                )


if __name__ == "__main__":
    main()
