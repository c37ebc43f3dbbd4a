"""Reward-vs-compute benchmark of diffusion steering against exact tilted targets.

The library half of ``scripts/bench_steering.py`` (which parses a :class:`SteeringBenchConfig`,
iterates :func:`run_steering_benchmark`, prints the tables and saves JSON and plots).

Models: (a) GMM with the closed-form denoiser (also at extra tilts), (b) the same GMM learned by an
MLP, (c) 8x8 digits with an MLP denoiser and a classifier-probability reward, (d) a Markov chain
with the exact masked denoiser and (d') a tiny trained transformer (:func:`gmm_setup`,
:func:`digits_setup`, :func:`chain_setup`). Methods (:func:`steering_methods`) are configured to
target exp(lam r) p where their theory allows. :func:`run_model` runs every method x budget x seed
and returns one row per run: denoiser / reward / value calls per output sample, median, mean and
top-10% reward, naturalness, diversity, the distance to the exact tilted target, samples/s and
compile time apart; :func:`summarise` takes medians over seeds and :func:`seed_counts` counts the
seeds on which a method is closer to the target than best-of-N.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxsel.diffusion import samplers, steering, toys, train
from jaxsel.diffusion.metrics import sliced_w1_to_gmm
from jaxsel.utils.config_cli import flag
from jaxsel.utils.plotting import pyplot, save_figure

GMM_W = jnp.array([1.0, 0.5])
"""Direction of the linear reward r(x) = w . x on the GMM models."""
CHUNK = 64
"""Outputs per compiled call (XLA:CPU compile time grows with the vmapped batch)."""
MODELS = ("a", "b", "c", "d")
CHAIN_MODELS = {"exact": ("d_chain_exact", False), "transformer": ("d_chain_transformer", True)}


# ------------------------------------------------------------------------------------ metrics


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean Euclidean distance between distinct samples ``x [n, ...]`` (diversity, continuous)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0.0))
    return float(d.sum() / (len(x) * (len(x) - 1)))


def hamming_diversity(x: np.ndarray) -> float:
    """Mean fraction of differing tokens between distinct sequences ``x [n, length]``."""
    return float((x[:, None] != x[None]).mean(-1).sum() / (len(x) * (len(x) - 1)))


# ------------------------------------------------------------------------------------ methods


def svdd_r_shape(n: int) -> tuple[int, int]:
    """(chains, candidates) with chains x candidates = n: 4 candidates per chain from n = 8 on."""
    m = 4 if n >= 8 else max(n // 2, 1)
    return n // m, m


def steering_methods(lam: float, *, values=None, soft_value=None):
    """name -> (budget n -> function(key, params, process, reward) -> SteeringResult).

    Every method is configured to target exp(lam r) p where its theory allows: softmax / SVDD
    temperature alpha = 1 / lam, FK / SMC potentials with lam. ``best_of_n`` (argmax) and
    ``svdd_pm_argmax`` (alpha = 0, the SVDD authors' default) do not depend on lam at all.
    ``values`` maps SVDD-MC method names to regressed (value_fn, value_params).
    """
    alpha = 1.0 / lam

    def svdd_r(n):
        c, m = svdd_r_shape(n)
        return partial(
            steering.svdd, num_candidates=m, num_chains=c, alpha=alpha, batch_resample_lam=lam
        )

    def svdd_value(vfn, vparams):
        return lambda n: partial(
            steering.svdd, num_candidates=n, alpha=alpha, value_fn=vfn, value_params=vparams
        )

    m = {
        "best_of_n": lambda n: partial(steering.best_of_n, num_samples=n),
        "bon_softmax": lambda n: partial(steering.best_of_n, num_samples=n, alpha=alpha),
        "svdd_pm": lambda n: partial(steering.svdd, num_candidates=n, alpha=alpha),
        "svdd_pm_argmax": lambda n: partial(steering.svdd, num_candidates=n, alpha=0.0),
        "svdd_r": svdd_r,
        "fk_diff_ess": lambda n: partial(
            steering.fk_steering, num_particles=n, lam=lam, adaptive=True
        ),
        "smc": lambda n: partial(steering.smc, num_particles=n, lam=lam),
    }
    for name, (vfn, vparams) in (values or {}).items():
        m[name] = svdd_value(vfn, vparams)
    if soft_value is not None:  # oracle: the exact soft value SVDD's theory asks for
        m["svdd_exact_soft_value"] = svdd_value(*soft_value)
    return m


def run_model(
    name,
    params,
    process,
    reward_fn,
    *,
    lam,
    budgets,
    seeds,
    num_runs,
    metric_fn,
    method_names=None,
    values=None,
    soft_value=None,
    skip_n1=False,
):
    """Runs every method x budget x seed; returns rows and, per method, the n=16 samples of seed 0."""
    rows, keep = [], {}
    ms = steering_methods(lam, values=values, soft_value=soft_value)
    if method_names:
        ms = {k: v for k, v in ms.items() if k in method_names}
    bar = tqdm(total=len(ms) * len(budgets), desc=name)
    for mname, make in ms.items():
        for n in budgets:
            if n == 1 and skip_n1 and mname != "best_of_n":
                bar.update()  # one particle/candidate is the unsteered sampler: measured once
                continue
            fn = make(n)
            run = jax.jit(jax.vmap(lambda k, fn=fn: fn(k, params, process, reward_fn)))
            # XLA:CPU compile time grows with the vmapped batch: compile one chunk, call it often
            chunk = min(num_runs, CHUNK)
            if num_runs % chunk:
                raise ValueError(f"runs ({num_runs}) must be a multiple of {chunk}")
            t0 = time.perf_counter()
            compiled = run.lower(jax.random.split(jax.random.key(0), chunk)).compile()
            compile_s = time.perf_counter() - t0
            for seed in range(seeds):
                keys = jax.random.split(jax.random.key(1000 + seed), num_runs)
                t0 = time.perf_counter()
                parts = [compiled(kb) for kb in keys.reshape(num_runs // chunk, chunk)]
                res = jax.block_until_ready(jax.tree.map(lambda *a: jnp.concatenate(a), *parts))
                wall = time.perf_counter() - t0
                x = np.asarray(res.sample)
                r = np.asarray(jax.vmap(reward_fn)(res.sample))
                row = {
                    "model": name,
                    "method": mname,
                    "n": n,
                    "seed": seed,
                    "denoiser_calls": float(np.mean(res.denoiser_calls)),
                    "reward_calls": float(np.mean(res.reward_calls)),
                    "value_calls": float(np.mean(res.value_calls)),
                    "lam": lam,
                    "reward_median": float(np.median(r)),
                    "reward_top10": float(np.quantile(r, 0.9)),
                    "reward_mean": float(np.mean(r)),
                    "samples_per_s": num_runs / wall,
                    "compile_s": compile_s,
                    **metric_fn(x, seed),
                }
                rows.append(row)
                if seed == 0 and n <= 16:  # budgets ascend: keeps the largest n <= 16
                    keep[mname] = (n, x)
            bar.update()
    bar.close()
    return rows, keep


def summarise(rows):
    """Median over seeds of every numeric column, per (model, method, n)."""
    out = {}
    for r in rows:
        out.setdefault((r["model"], r["method"], r["n"]), []).append(r)
    summary = []
    for (model, method, n), rs in out.items():
        s = {"model": model, "method": method, "n": n, "seeds": len(rs)}
        for k, v in rs[0].items():
            if isinstance(v, float):
                s[k] = float(np.median([x[k] for x in rs]))
        summary.append(s)
    return summary


DISTANCES = ("sliced_w1_to_target", "kl_count_hist")


def seed_counts(rows, baseline: str = "best_of_n") -> dict:
    """Per model and budget: for how many seeds each method is closer to the exact target than
    ``baseline`` with the same seed and budget ("method": "wins/seeds")."""
    by = {(r["model"], r["method"], r["n"], r["seed"]): r for r in rows}
    out: dict = {}
    for (model, method, n, seed), r in sorted(by.items()):
        base = by.get((model, baseline, n, seed))
        dist = next((d for d in DISTANCES if d in r), None)
        if method == baseline or base is None or dist is None:
            continue
        wins, total = out.setdefault(f"{model} n={n}", {}).get(method, (0, 0))
        out[f"{model} n={n}"][method] = (wins + int(r[dist] < base[dist]), total + 1)
    return {k: {m: f"{w}/{t}" for m, (w, t) in v.items()} for k, v in out.items()}


# ------------------------------------------------------------------------------------ models


def gmm_setup(learned: bool, lam: float, num_steps: int):
    """Model (a) (closed-form denoiser) or (b) (``learned``: the shipped MLP) on the default GMM.

    Returns ``(params, process, reward, metric_fn, target, values, soft_value)``: the exact tilted
    target, the SVDD-MC value nets found among the shipped weights and (for (a)) the exact soft
    value.
    """
    gmm = toys.default_gmm()
    sched = samplers.vp_schedule(num_steps)
    if learned:
        params = train.load_asset("gmm_mlp")
        proc = samplers.vp_process(train.mlp_apply, sched, (2,))
    else:
        params, proc = gmm, samplers.vp_process(toys.gmm_denoiser, sched, (2,))
    target = toys.gmm_tilt_linear(gmm, GMM_W, lam)

    def metric_fn(x, seed):
        lp = np.asarray(jax.vmap(lambda v: toys.gmm_log_prob(gmm, v))(jnp.asarray(x)))
        return {
            "sliced_w1_to_target": sliced_w1_to_gmm(x, target),
            "naturalness_logp": float(np.mean(lp)),
            "diversity": mean_pairwise_distance(x),
        }

    # SVDD-MC value nets from scripts/train_diffusion_toys.py, on rollouts of this model's sampler
    prefix = "gmm" if learned else "gmm_exact"
    values, soft_value = {}, None
    for mname, asset, apply in (
        ("svdd_mc", f"{prefix}_value", train.scalar_mlp_apply),
        ("svdd_mc_soft", f"{prefix}_soft_value_lam{lam:g}", train.two_mlp_apply),
    ):
        try:
            values[mname] = (train.value_fn_from(apply, num_steps), train.load_asset(asset))
        except FileNotFoundError:
            warnings.warn(f"no {asset} weights: {mname} skipped", stacklevel=2)
    if not learned:

        def soft(g, x, n):
            return toys.gmm_soft_value_linear(g, x, sched.alpha_bars[n], GMM_W, lam)

        soft_value = (soft, gmm)
    return params, proc, toys.linear_reward(GMM_W), metric_fn, target, values, soft_value


def gmm_noise_floor(target, num: int, seeds: int) -> float:
    """Median sliced W1 of ``num`` exact target draws: the best any sampler can score."""
    return float(
        np.median(
            [
                sliced_w1_to_gmm(
                    np.asarray(toys.gmm_sample(jax.random.key(900 + s), target, num)), target
                )
                for s in range(seeds)
            ]
        )
    )


def chain_setup(learned: bool, lam: float, num_steps: int, length: int):
    """Model (d) (exact masked denoiser) or (d') (``learned``: the shipped tiny transformer).

    Returns ``(params, process, reward, metric_fn)``; the metrics compare with the exact tilted
    distribution over all ``V ** length`` sequences.
    """
    chain = toys.default_chain()
    V = chain.init.shape[0]
    token = 2
    reward = toys.token_count_reward(token)
    if learned:
        params = train.load_asset("chain_transformer")
        proc = samplers.masked_process(train.transformer_apply, num_steps, length, V)
    else:
        params, proc = chain, samplers.masked_process(toys.chain_denoiser, num_steps, length, V)
    seqs, logq = toys.chain_tilted_log_probs(chain, length, reward, lam)
    q = np.exp(np.asarray(logq))
    counts = (seqs == token).sum(1)
    q_count = np.bincount(counts, weights=q, minlength=length + 1)

    def metric_fn(x, seed):
        idx = np.asarray(toys.sequence_index(jnp.asarray(x), V))
        emp = np.bincount(idx, minlength=V**length) / len(idx)
        lp = np.asarray(jax.vmap(lambda s: toys.chain_log_prob(chain, s))(jnp.asarray(x)))
        c = np.bincount((x == token).sum(1), minlength=length + 1) / len(x)
        # KL(target || samples) on the reward histogram (smoothed) and TV on whole sequences
        eps = 1e-3
        kl = float(
            np.sum(
                q_count * (np.log(q_count + 1e-12) - np.log((c + eps) / (1 + eps * (length + 1))))
            )
        )
        return {
            "kl_count_hist": kl,
            "tv_sequences": float(0.5 * np.abs(emp - q).sum()),
            "naturalness_logp": float(np.mean(lp)),
            "diversity": hamming_diversity(x),
        }

    return params, proc, reward, metric_fn


def digits_setup(num_steps: int, target_class: int):
    """Model (c): the shipped 8x8-digits MLP denoiser, rewarded by a classifier's probability of
    ``target_class``. Returns ``(params, process, reward, metric_fn)``."""
    from sklearn.mixture import GaussianMixture

    params = train.load_asset("digits_mlp")
    clf = train.load_asset("digits_classifier")
    proc = samplers.vp_process(train.mlp_apply, samplers.vp_schedule(num_steps), (64,), clip=1.0)

    def reward(x):  # black box: probability of the target class
        return jax.nn.softmax(train.mlp_apply(clf, x, 0.0))[target_class]

    x, _ = train.load_digits_scaled()
    perm = np.random.default_rng(0).permutation(len(x))
    held = x[perm[int(0.8 * len(x)) :]]
    dens = GaussianMixture(10, covariance_type="diag", reg_covar=1e-2, random_state=0).fit(held)

    def metric_fn(xs, seed):
        return {
            "naturalness_heldout_gmm_ll": float(
                np.mean(dens.score_samples(xs.reshape(len(xs), -1)))
            ),
            "diversity": mean_pairwise_distance(xs),
        }

    return params, proc, reward, metric_fn


# ------------------------------------------------------------------------------------ plots


def plot_curves(summary, path: Path, metric: str = "reward_median"):
    """Reward (top) and distance / naturalness (bottom) against denoiser calls, per model."""
    plt = pyplot()
    models = sorted(
        m
        for m in {s["model"] for s in summary}
        if len({s["n"] for s in summary if s["model"] == m}) > 1
    )
    if not models:
        return
    extra = {
        "a_gmm_exact": "sliced_w1_to_target",
        "b_gmm_mlp": "sliced_w1_to_target",
        "d_chain_exact": "kl_count_hist",
        "d_chain_transformer": "kl_count_hist",
        "c_digits": "naturalness_heldout_gmm_ll",
    }
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 7), squeeze=False)
    for j, model in enumerate(models):
        for method in sorted({s["method"] for s in summary if s["model"] == model}):
            ss = sorted(
                (s for s in summary if s["model"] == model and s["method"] == method),
                key=lambda s: s["denoiser_calls"],
            )
            calls = [s["denoiser_calls"] for s in ss]
            axes[0, j].plot(calls, [s[metric] for s in ss], "o-", label=method)
            m2 = extra.get(model)
            if m2 and m2 in ss[0]:
                axes[1, j].plot(calls, [s[m2] for s in ss], "o-", label=method)
                axes[1, j].set_ylabel(m2)
        axes[0, j].set_xscale("log")
        axes[1, j].set_xscale("log")
        axes[0, j].set_title(model)
        axes[0, j].set_ylabel(metric)
        axes[1, j].set_xlabel("denoiser calls per sample")
        axes[0, j].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110, tight=False)


def plot_lam_sweep(summary, floors, n: int, path: Path):
    """Sliced W1 to the exact tilted target at budget n, per method and tilt lambda."""
    plt = pyplot()
    rows = [s for s in summary if s["model"].startswith("a_gmm_exact") and s["n"] == n]
    lams = sorted({s["lam"] for s in rows})
    if not lams:  # no run at the sweep budget
        return
    meths = sorted({s["method"] for s in rows})
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(lams)
    for i, lam in enumerate(lams):
        vals = [
            next(
                (s["sliced_w1_to_target"] for s in rows if s["lam"] == lam and s["method"] == m), 0
            )
            for m in meths
        ]
        ax.bar(np.arange(len(meths)) + i * width, vals, width, label=f"lambda={lam:g}")
    for f in floors.values():
        ax.axhline(f, color="k", lw=0.5, ls=":")
    ax.set_xticks(np.arange(len(meths)) + 0.4 - width / 2, meths, rotation=20, fontsize=7)
    ax.set_ylabel(f"sliced W1 to exact target (n={n})")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110, tight=False)


def plot_gmm_scatter(keep, target, path: Path, title: str):
    """Samples of each method (``keep``: name -> (n, samples)) over exact target draws."""
    plt = pyplot()
    ref = np.asarray(toys.gmm_sample(jax.random.key(5), target, 512))
    names = list(keep)
    fig, axes = plt.subplots(
        1, len(names) + 1, figsize=(3.2 * (len(names) + 1), 3.2), squeeze=False
    )
    axes = axes[0]
    axes[0].scatter(ref[:, 0], ref[:, 1], s=3, c="k")
    axes[0].set_title("exact tilted target")
    for ax, nm in zip(axes[1:], names):
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.8")
        n, x = keep[nm]
        ax.scatter(x[:, 0], x[:, 1], s=3)
        ax.set_title(f"{nm} (n={n})")
    for ax in axes:
        ax.set_xlim(-5, 6)
        ax.set_ylim(-5, 6)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110, tight=False)


def plot_digits(keep, base, path: Path):
    """Eight digits per method (``keep``) under a row of unsteered samples ``base``."""
    plt = pyplot()
    rows = {"unsteered": base, **{f"{k} n={v[0]}": v[1] for k, v in keep.items()}}
    fig, axes = plt.subplots(len(rows), 8, figsize=(8, 1.1 * len(rows)))
    for i, (nm, xs) in enumerate(rows.items()):
        for j in range(8):
            axes[i, j].imshow(xs[j].reshape(8, 8), cmap="gray_r", vmin=-1, vmax=1)
            axes[i, j].axis("off")
        axes[i, 0].set_title(nm, fontsize=7, loc="left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110, tight=False)


# ------------------------------------------------------------------------------------ driver


def _ints(name: str, text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in vals):
        raise ValueError(f"{name} must be >= 1, got {text!r}")
    return vals


def _names(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


@dataclasses.dataclass(frozen=True)
class SteeringBenchConfig:
    """What :func:`run_steering_benchmark` runs; comma-separated lists stay strings (CLI flags)."""

    models: str = "a,b,c,d"
    seeds: int = 5
    budgets: str = "1,2,4,8,16,32"
    small_budgets: str = flag("1,4,16,32", "budgets for the costlier models (b, c, d')")
    runs: int = flag(256, "independent outputs per seed")
    steps: int = 50
    lam: float = flag(1.0, "tilt for the GMM (target exp(lam w.x) p)")
    lam_sweep: str = flag(
        "0.5,2", "extra GMM tilts for model (a), run at --sweep-budget only ('' to skip)"
    )
    sweep_budget: int = 16
    a_methods: str = flag(
        "best_of_n,bon_softmax,svdd_pm,svdd_r,fk_diff_ess",
        "methods of the lambda = --lam curve on (a)",
    )
    sweep_methods: str = flag("best_of_n,svdd_pm,fk_diff_ess", "methods of the extra tilts on (a)")
    a_extra_methods: str = flag(
        "smc,svdd_pm_argmax,svdd_exact_soft_value",
        "methods run on (a) at --sweep-budget and lambda = --lam only",
    )
    gmm_runs: int = flag(1024, "independent outputs per seed on (a)")
    chain_lam: float = 1.0
    chain_models: str = flag("exact,transformer", "which (d) denoisers")
    chain_length: int = 6
    digit: int = 3
    digits_lam: float = 10.0
    skip_n1: bool = flag(False, "run n = 1 (the unsteered sampler) only for best_of_n")
    small_methods: str = flag(
        "best_of_n,svdd_pm,svdd_mc,fk_diff_ess", "methods run on the costlier models (b, c, d')"
    )

    def __post_init__(self):
        unknown = set(self.model_set) - set(MODELS)
        if unknown:
            raise ValueError(f"models must be among {MODELS}, got {self.models!r}")
        unknown = set(_names(self.chain_models)) - set(CHAIN_MODELS)
        if unknown:
            raise ValueError(
                f"chain_models must be among {tuple(CHAIN_MODELS)}, got {self.chain_models!r}"
            )
        for name in ("budgets", "small_budgets"):
            _ints(name, getattr(self, name))
        for name in ("seeds", "runs", "steps", "sweep_budget", "gmm_runs", "chain_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        try:
            tuple(float(v) for v in _names(self.lam_sweep))
        except ValueError:
            raise ValueError(
                f"lam_sweep must be comma-separated numbers, got {self.lam_sweep!r}"
            ) from None

    @property
    def model_set(self) -> set[str]:
        return set(_names(self.models))

    @property
    def budget_list(self) -> list[int]:
        return list(_ints("budgets", self.budgets))

    @property
    def small_budget_list(self) -> list[int]:
        return list(_ints("small_budgets", self.small_budgets))


class ModelRun(NamedTuple):
    """One model's results from :func:`run_steering_benchmark`.

    ``keep`` maps a method to ``(n, samples)`` of seed 0 at its largest budget n <= 16; ``target``
    is the exact tilted GMM for a scatter plot (``None`` when there is none to draw);
    ``noise_floor`` is the median sliced W1 of exact target draws (model (a)); ``unsteered`` holds
    16 unsteered digits (model (c)).
    """

    tag: str
    lam: float
    rows: list[dict]
    keep: dict
    target: Any = None
    noise_floor: float | None = None
    unsteered: np.ndarray | None = None


def run_steering_benchmark(config: SteeringBenchConfig) -> Iterator[ModelRun]:
    """Runs the configured models in the order a, b, d, c, yielding each one's rows when done."""
    a = config
    budgets, small = a.budget_list, a.small_budget_list
    models = a.model_set
    small_methods = _names(a.small_methods)
    if "a" in models:
        sweep = [float(v) for v in _names(a.lam_sweep)]
        for lam in [a.lam, *sweep]:
            tag = "a_gmm_exact" if lam == a.lam else f"a_gmm_exact_lam{lam:g}"
            params, proc, reward, metric_fn, target, values, soft = gmm_setup(False, lam, a.steps)
            floor = gmm_noise_floor(target, a.gmm_runs, a.seeds)
            common = dict(
                lam=lam,
                seeds=a.seeds,
                num_runs=a.gmm_runs,
                metric_fn=metric_fn,
                values=values,
                soft_value=soft,
            )
            rows, keep = run_model(
                tag,
                params,
                proc,
                reward,
                budgets=budgets if lam == a.lam else [a.sweep_budget],
                method_names=_names(a.a_methods if lam == a.lam else a.sweep_methods),
                skip_n1=a.skip_n1,
                **common,
            )
            if lam == a.lam and a.a_extra_methods:
                more, keep_more = run_model(
                    tag,
                    params,
                    proc,
                    reward,
                    budgets=[a.sweep_budget],
                    method_names=_names(a.a_extra_methods),
                    **common,
                )
                rows += more
                keep.update(keep_more)
            yield ModelRun(tag, lam, rows, keep, target if lam == a.lam else None, floor)
    # the costlier models (b, c, d') share the small budgets and methods
    costly = dict(seeds=a.seeds, method_names=small_methods, skip_n1=a.skip_n1)
    if "b" in models:
        tag = "b_gmm_mlp"
        params, proc, reward, metric_fn, target, values, _ = gmm_setup(True, a.lam, a.steps)
        rows, keep = run_model(
            tag,
            params,
            proc,
            reward,
            lam=a.lam,
            budgets=small,
            num_runs=a.runs,
            metric_fn=metric_fn,
            values=values,
            **costly,
        )
        yield ModelRun(tag, a.lam, rows, keep, target)
    if "d" in models:
        for name in _names(a.chain_models):
            tag, learned = CHAIN_MODELS[name]
            params, proc, reward, metric_fn = chain_setup(
                learned, a.chain_lam, 2 * a.chain_length, a.chain_length
            )
            rows, keep = run_model(
                tag,
                params,
                proc,
                reward,
                lam=a.chain_lam,
                budgets=budgets if not learned else small,
                num_runs=4 * a.runs,
                metric_fn=metric_fn,
                **costly,
            )
            yield ModelRun(tag, a.chain_lam, rows, keep)
    if "c" in models:
        params, proc, reward, metric_fn = digits_setup(a.steps, a.digit)
        rows, keep = run_model(
            "c_digits",
            params,
            proc,
            reward,
            lam=a.digits_lam,
            budgets=small,
            num_runs=max(a.runs // 4, 16),
            metric_fn=metric_fn,
            **costly,
        )
        base = np.asarray(
            jax.jit(jax.vmap(lambda k: samplers.sample(k, params, proc)))(
                jax.random.split(jax.random.key(3), 16)
            )
        )
        yield ModelRun("c_digits", a.digits_lam, rows, keep, unsteered=base)
