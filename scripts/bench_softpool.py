"""SoftPool benchmark: speed against flax max/avg pooling, and CNN accuracy with each pooling.

Speed: forward and forward+backward of ``jaxsel.pool.soft_pool`` (custom VJP; also autodiff and
the all-reshape "blocks" variant) against ``flax.linen.max_pool`` and ``avg_pool`` on the same
inputs in the same run: the authors' profiled shapes (channels-last) and a ResNet-stem-like
(8, 112, 112, 64), windows 2 stride 2 (VALID) and 3 stride 2 (SAME). Wall-clock medians via
``jaxsel._bench.time_fn`` (compile time apart) and, because the machine may be shared, the process
CPU time of the same calls.

Accuracy: a small CNN (two conv + pool stages, ``jaxsel.pool.cnn``) on scikit-learn digits and,
when /usr/share/datasets/fashion-mnist exists, a Fashion-MNIST training subset; max / avg / soft
pooling, several seeds trained at once with ``vmap``.

    nice -n 10 .venv/bin/python scripts/bench_softpool.py            # full run
    nice -n 10 .venv/bin/python scripts/bench_softpool.py --quick    # smaller shapes, fewer steps
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxsel._bench import format_table, time_fn, write_json
from jaxsel.hebb import data as hebb_data
from jaxsel.pool import soft_pool
from jaxsel.pool.cnn import CNNConfig, Data, make_train
from jaxsel.utils import parse_config, pyplot, save_figure

SHAPES = {  # channels-last versions of the authors' (N, C, *spatial) profiling shapes
    "1d": (10, 80, 32),
    "2d": (10, 80, 80, 32),
    "3d": (10, 8, 80, 80, 32),
    "stem": (8, 112, 112, 64),
}
QUICK_SHAPES = {
    "1d": (10, 80, 32),
    "2d": (10, 80, 80, 32),
    "3d": (2, 8, 40, 40, 32),
    "stem": (8, 56, 56, 64),
}
WINDOWS = {"k2s2": (2, 2, "VALID"), "k3s2": (3, 2, "SAME")}


@dataclasses.dataclass(frozen=True)
class Config:
    quick: bool = False
    iters: int = 5
    seeds: int = 3
    digits_steps: int = 600
    fashion_steps: int = 300
    fashion_train: int = 10000
    datasets: str = "digits,fashion_mnist"  # comma-separated; fashion_mnist needs the IDX files
    skip_speed: bool = False
    skip_accuracy: bool = False
    out: str = "results/pool"


def parse() -> Config:
    return parse_config(Config, description=__doc__)


def methods(window: tuple[int, ...], strides: tuple[int, ...], padding: str) -> dict:
    return {
        "max_pool": lambda v: nn.max_pool(v, window, strides, padding),
        "avg_pool": lambda v: nn.avg_pool(v, window, strides, padding),
        "soft_pool": lambda v: soft_pool(v, window, strides, padding),
        "soft_pool[autodiff]": lambda v: soft_pool(
            v, window, strides, padding, gradient="autodiff"
        ),
        "soft_pool[blocks]": lambda v: soft_pool(
            v, window, strides, padding, implementation="blocks"
        ),
    }


def cpu_time(fn, *args, iters: int) -> float:
    """Median process CPU time (all threads) of one call of the jitted ``fn``, in seconds."""
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        t0 = time.process_time()
        jax.block_until_ready(compiled(*args))
        times.append(time.process_time() - t0)
    return float(np.median(times))


def bench_speed(cfg: Config) -> list[dict]:
    shapes = QUICK_SHAPES if cfg.quick else SHAPES
    cases = [(s, w) for s in shapes for w in WINDOWS]
    rows = []
    for shape_name, win_name in tqdm(cases, desc="speed"):
        shape = shapes[shape_name]
        nd = len(shape) - 2
        k, s, padding = WINDOWS[win_name]
        window, strides = (k,) * nd, (s,) * nd
        x = jax.random.normal(jax.random.key(0), shape)
        ct = jax.random.normal(jax.random.key(1), nn.max_pool(x, window, strides, padding).shape)
        for name, fn in methods(window, strides, padding).items():
            fb = jax.grad(lambda v, c, fn=fn: jnp.vdot(fn(v), c))
            t_f = time_fn(fn, x, name=name, iters=cfg.iters, warmup=1)
            t_b = time_fn(fb, x, ct, name=name, iters=cfg.iters, warmup=1)
            rows.append(
                {
                    "shape": shape_name,
                    "dims": str(shape),
                    "window": win_name,
                    "method": name,
                    "fwd_ms": 1e3 * t_f.median_s,
                    "fwd_bwd_ms": 1e3 * t_b.median_s,
                    "fwd_bwd_cpu_ms": 1e3 * cpu_time(fb, x, ct, iters=3),
                    "compile_fwd_s": t_f.compile_s,
                    "compile_fwd_bwd_s": t_b.compile_s,
                }
            )
        base = {
            r["method"]: r for r in rows if r["shape"] == shape_name and r["window"] == win_name
        }
        for r in base.values():
            for ref in ("max_pool", "avg_pool"):
                r[f"fwd_bwd_vs_{ref.split('_')[0]}"] = r["fwd_bwd_ms"] / base[ref]["fwd_bwd_ms"]
                r[f"cpu_vs_{ref.split('_')[0]}"] = r["fwd_bwd_cpu_ms"] / base[ref]["fwd_bwd_cpu_ms"]
            r["fwd_vs_max"] = r["fwd_ms"] / base["max_pool"]["fwd_ms"]
    return rows


def load_data(cfg: Config) -> dict[str, Data]:
    sets = {}
    d = hebb_data.load_digits(seed=0)
    sets["digits"] = Data(*map(jnp.asarray, d))
    if "fashion_mnist" in cfg.datasets and hebb_data.FASHION_MNIST_DIR.exists():
        f = hebb_data.load_fashion_mnist()
        n = cfg.fashion_train // (4 if cfg.quick else 1)
        perm = np.random.default_rng(0).permutation(len(f.y_train))[:n]
        sets["fashion_mnist"] = Data(
            jnp.asarray(f.x_train[perm]),
            jnp.asarray(f.y_train[perm]),
            jnp.asarray(f.x_test),
            jnp.asarray(f.y_test),
        )
    return sets


def bench_accuracy(cfg: Config) -> list[dict]:
    sets = load_data(cfg)
    rows = []
    keys = jax.random.split(jax.random.key(2021), cfg.seeds)
    cases = [(d, p) for d in sets for p in ("max", "avg", "soft")]
    for data_name, pool in tqdm(cases, desc="accuracy"):
        steps = cfg.digits_steps if data_name == "digits" else cfg.fashion_steps
        steps = steps // (3 if cfg.quick else 1)
        config = CNNConfig(pool=pool, steps=steps)
        # One compiled single-seed program called per seed: XLA CPU compiles the vmapped
        # (per-seed weights, i.e. grouped) convolutions far more slowly than it runs them.
        train = jax.jit(make_train(config))
        t0 = time.perf_counter()
        outs = [jax.block_until_ready(train(k, sets[data_name])) for k in keys]
        acc = np.asarray([o.test_accuracy for o in outs])
        losses = np.stack([np.asarray(o.losses) for o in outs])
        rows.append(
            {
                "data": data_name,
                "pool": pool,
                "seeds": cfg.seeds,
                "steps": steps,
                "n_train": int(sets[data_name].x_train.shape[0]),
                "acc_mean": float(acc.mean()),
                "acc_std": float(acc.std(ddof=1)) if cfg.seeds > 1 else 0.0,
                "acc_per_seed": acc.tolist(),
                "final_loss": float(losses[:, -50:].mean()),
                "wall_s": time.perf_counter() - t0,
            }
        )
        save(cfg, [], rows)  # partial results survive an interrupted run
    if "fashion_mnist" not in sets:
        print("Fashion-MNIST not requested or not under /usr/share/datasets/fashion-mnist.")
    return rows


def plot(speed: list[dict], acc: list[dict], out: Path, suffix: str) -> None:
    plt = pyplot()
    if speed:
        cases = list(dict.fromkeys((r["shape"], r["window"]) for r in speed))
        names = list(dict.fromkeys(r["method"] for r in speed))
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        for ax, key, title in zip(
            axes, ("fwd_ms", "fwd_bwd_ms"), ("forward", "forward + backward")
        ):
            width = 0.8 / len(names)
            for i, name in enumerate(names):
                vals = [
                    next(
                        r[key]
                        for r in speed
                        if (r["shape"], r["window"]) == c and r["method"] == name
                    )
                    for c in cases
                ]
                ax.bar(np.arange(len(cases)) + i * width, vals, width, label=name)
            ax.set_xticks(
                np.arange(len(cases)) + 0.4 - width / 2, [f"{s}\n{w}" for s, w in cases], fontsize=8
            )
            ax.set_yscale("log")
            ax.set_ylabel("median wall time [ms]")
            ax.set_title(f"{title} (CPU, {jax.devices()[0].platform})")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, out / f"bench_softpool_speed{suffix}.png", dpi=120, tight=False)
    if acc:
        datasets = list(dict.fromkeys(r["data"] for r in acc))
        fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 4), squeeze=False)
        for ax, d in zip(axes[0], datasets):
            rs = [r for r in acc if r["data"] == d]
            ax.bar(
                [r["pool"] for r in rs],
                [r["acc_mean"] for r in rs],
                yerr=[r["acc_std"] for r in rs],
                capsize=5,
            )
            lo = min(r["acc_mean"] - 3 * r["acc_std"] for r in rs)
            ax.set_ylim(max(0.0, lo - 0.02), 1.0)
            ax.set_title(f"{d}: test accuracy, {rs[0]['seeds']} seeds")
        fig.tight_layout()
        save_figure(fig, out / f"bench_softpool_accuracy{suffix}.png", dpi=120, tight=False)


SPEED_COLUMNS = [
    "shape", "window", "method", "fwd_ms", "fwd_bwd_ms", "fwd_bwd_vs_max", "fwd_bwd_vs_avg",
    "fwd_bwd_cpu_ms", "cpu_vs_max", "fwd_vs_max", "compile_fwd_bwd_s",
]  # fmt: skip
ACC_COLUMNS = [
    "data",
    "pool",
    "seeds",
    "steps",
    "n_train",
    "acc_mean",
    "acc_std",
    "final_loss",
    "wall_s",
]


def save(cfg: Config, speed: list[dict], acc: list[dict]) -> None:
    out = Path(cfg.out)
    suffix = ("_quick" if cfg.quick else "") + ("_speed" if cfg.skip_accuracy else "")
    suffix += "_accuracy" if cfg.skip_speed else ""
    plot(speed, acc, out, suffix)
    payload = {
        "config": dataclasses.asdict(cfg),
        "load_average": list(os.getloadavg()),
        "speed": speed,
        "accuracy": acc,
    }
    print(f"wrote {write_json(out / f'bench_softpool{suffix}.json', payload)}")


def main() -> None:
    cfg = parse()
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    acc = [] if cfg.skip_accuracy else bench_accuracy(cfg)
    if acc:
        print(format_table(acc, ACC_COLUMNS))
        save(cfg, [], acc)  # keep partial results if the speed part is interrupted
    speed = [] if cfg.skip_speed else bench_speed(cfg)
    if speed:
        print(format_table(speed, SPEED_COLUMNS))
    save(cfg, speed, acc)


if __name__ == "__main__":
    main()
