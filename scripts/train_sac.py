"""Train SAC on a pure-JAX environment with many seeds at once (vmapped), in jitted chunks.

    nice -n 10 python scripts/train_sac.py --env Pendulum-v1 --seeds 8 --total-timesteps 20000

Each chunk is one evaluation block (``SACTrain.run(state, 1)``) jitted once and vmapped over seeds,
so a tqdm bar can report progress and a checkpoint can be written between chunks; the result is
bit-identical to the one-shot ``jax.vmap(trainer)(keys)``. Writes a learning-curve PNG (median over
seeds with a min-max band and the interquartile band) and a JSON file under ``--out``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from jaxsel._bench import format_table, write_json
from jaxsel.rl import envs, sac
from jaxsel.utils import flag, parse_config, pyplot, restore_tree, save_figure, save_tree


@dataclasses.dataclass(frozen=True)
class Args:
    env: str = "Pendulum-v1"
    seeds: int = 8
    seed: int = 0
    total_timesteps: int = 20_000
    num_envs: int = 1
    learning_starts: int = 1_000
    utd_ratio: float = 1.0
    batch_size: int = 256
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 1e-3
    num_critics: int = 2
    n_step: int = 1
    band_limit_samples: int = 0
    num_evals: int = 19
    eval_episodes: int = 10
    out: str = "results/sac"
    tag: str = "pendulum"
    checkpoint: str = flag("", "directory: save the state after every chunk (and resume from it)")


def parse_args() -> Args:
    return parse_config(Args, description=__doc__)


def config_from(args: Args) -> sac.SACConfig:
    return sac.SACConfig(
        total_timesteps=args.total_timesteps,
        num_envs=args.num_envs,
        learning_starts=args.learning_starts,
        utd_ratio=args.utd_ratio,
        batch_size=args.batch_size,
        hidden_sizes=args.hidden,
        num_critics=args.num_critics,
        n_step=args.n_step,
        band_limit_samples=args.band_limit_samples,
        num_evals=args.num_evals,
        eval_episodes=args.eval_episodes,
        actor_lr=args.lr,
        critic_lr=args.lr,
        alpha_lr=args.lr,
    )


def plot_curves(path: Path, steps: np.ndarray, returns: np.ndarray, title: str) -> None:
    """``returns [seeds, evals]``: median line, interquartile band and min-max band."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.fill_between(steps, returns.min(0), returns.max(0), alpha=0.15, label="min-max over seeds")
    q25, q50, q75 = np.percentile(returns, [25, 50, 75], axis=0)
    ax.fill_between(steps, q25, q75, alpha=0.3, label="interquartile")
    ax.plot(steps, q50, label=f"median of {returns.shape[0]} seeds")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("deterministic evaluation return")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120, tight=False)


def main() -> None:
    args = parse_args()
    config = config_from(args)
    env, env_params = envs.make(args.env)
    trainer = sac.make_train(config, env, env_params)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.seeds)

    t0 = time.perf_counter()
    init = jax.jit(jax.vmap(trainer.init)).lower(keys).compile()
    abstract = jax.eval_shape(jax.vmap(trainer.init), keys)
    chunk = jax.jit(jax.vmap(lambda s: trainer.run(s, 1))).lower(abstract).compile()
    compile_s = time.perf_counter() - t0

    ckpt = Path(args.checkpoint).resolve() if args.checkpoint else None
    history: list[dict[str, np.ndarray]] = []
    t0 = time.perf_counter()
    if ckpt is not None and (ckpt / "state").exists():
        # Resume: the state holds everything the loop reads, so this continues bit-exactly.
        state = restore_tree(ckpt / "state", abstract)
        saved = dict(np.load(ckpt / "metrics.npz"))
        history = [{k: v[i] for k, v in saved.items()} for i in range(len(saved["env_steps"]))]
        print(f"resumed from {ckpt} after {len(history)} of {config.num_evals} blocks")
    else:
        state = jax.block_until_ready(init(keys))
    for _ in tqdm(range(len(history), config.num_evals), desc=f"SAC {args.env} x{args.seeds}"):
        state, metrics = chunk(state)
        history.append(jax.tree.map(lambda x: np.asarray(x)[:, 0], metrics))
        if ckpt is not None:
            save_tree(ckpt / "state", state)
            np.savez(
                ckpt / "metrics.npz", **{k: np.stack([h[k] for h in history]) for k in history[0]}
            )
    run_s = time.perf_counter() - t0

    metrics = {k: np.stack([h[k] for h in history], axis=1) for k in history[0]}  # [seeds, evals]
    steps = metrics["env_steps"][0]
    returns = metrics["eval_return"]
    final = returns[:, -1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "final_return_median": float(np.median(final)),
        "final_return_mean": float(final.mean()),
        "final_return_min": float(final.min()),
        "final_return_max": float(final.max()),
        "final_return_iqr": [float(np.percentile(final, 25)), float(np.percentile(final, 75))],
        "compile_s": compile_s,
        "run_s": run_s,
        "env_steps_per_s": args.seeds * config.total_timesteps / run_s,
    }
    rows = [
        {
            "env_steps": int(s),
            "median": float(np.median(r)),
            "min": float(r.min()),
            "max": float(r.max()),
        }
        for s, r in zip(steps, returns.T)
    ]
    print(format_table(rows))
    print(format_table([summary], [k for k in summary if k != "final_return_iqr"]))
    write_json(
        out / f"train_{args.tag}.json",
        {
            "args": dataclasses.asdict(args),
            "config": dataclasses.asdict(config),
            "summary": summary,
            "env_steps": steps,
            "eval_return": returns,
            "final_return_per_seed": final,
            "alpha": metrics["alpha"],
            "entropy": metrics["entropy"],
        },
    )
    plot_curves(
        out / f"train_{args.tag}.png", steps, returns, f"SAC {args.env}, {args.seeds} seeds vmapped"
    )
    print(f"wrote {out / f'train_{args.tag}.json'} and .png")


if __name__ == "__main__":
    main()
