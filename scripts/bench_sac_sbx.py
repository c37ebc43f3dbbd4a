"""sbx (SB3 in JAX) SAC on Pendulum-v1 with the RL Zoo settings, timed; run by ``bench_sac.py``.

sbx is a peer, never a dependency: it lives in its own venv. Its PyPI wheel depends on torch (via
stable-baselines3), so install the local CPU torch first or pip pulls a multi-GB CUDA build:

    # from the repository root (``.venv-sbx`` is where bench_sac.py looks by default)
    python3.11 -m venv .venv-sbx && .venv-sbx/bin/pip install torch==2.13.0 && \\
        .venv-sbx/bin/pip install sbx-rl
    mkdir -p results/scratch && .venv-sbx/bin/python scripts/bench_sac_sbx.py --seeds 0 \\
        --out results/scratch/sbx.json

RL Zoo's ``sac.yml`` for Pendulum-v1: 20k steps, ``MlpPolicy``, learning rate 1e-3, everything else
SB3's default (256x256 networks, batch 256, learning_starts 100, one gradient step per env step).
sbx trains one seed per process with a Python loop around jitted updates (no seed vmap), so seeds
run one after another. The final policy is evaluated deterministically on gymnasium's Pendulum-v1
(the environment jaxsel's port is checked against step by step) for ``--eval-episodes`` episodes.
The sbx venv does not have jaxsel installed: of this checkout (put on ``sys.path``) the file imports
only the flag parser, :mod:`jaxsel.utils.config_cli`.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np
from sbx import SAC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxsel.utils.config_cli import flag, parse_config


@dataclasses.dataclass(frozen=True)
class SbxConfig:
    out: str = flag(dataclasses.MISSING, "output JSON")
    steps: int = flag(20_000, "environment steps per seed (> 200: the first 200 are timed apart)")
    seeds: tuple[int, ...] = (0,)
    eval_episodes: int = 10

    def __post_init__(self) -> None:
        if self.steps <= 200:
            raise ValueError(f"steps must be > 200, got {self.steps}")
        if self.eval_episodes < 1:
            raise ValueError(f"eval_episodes must be >= 1, got {self.eval_episodes}")


def run(seed: int, steps: int, eval_episodes: int) -> dict:
    env = gym.make("Pendulum-v1")
    model = SAC("MlpPolicy", env, learning_rate=1e-3, seed=seed, verbose=0)
    # The first update compiles; time it apart from steady state with a short run first.
    t0 = time.perf_counter()
    model.learn(total_timesteps=200)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps - 200, reset_num_timesteps=False)
    run_s = time.perf_counter() - t0
    eval_env = gym.make("Pendulum-v1")
    returns = []
    for ep in range(eval_episodes):
        obs, _ = eval_env.reset(seed=10_000 + ep)
        done, ret = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = eval_env.step(action)
            ret += float(r)
            done = term or trunc
        returns.append(ret)
    return {
        "seed": seed,
        "first_200_steps_s": warm_s,
        "run_s": run_s,
        "steps_timed": steps - 200,
        "final_return": float(np.mean(returns)),
    }


def main() -> None:
    a = parse_config(SbxConfig, description=__doc__)
    import sbx

    runs = [run(s, a.steps, a.eval_episodes) for s in a.seeds]
    out = {
        "library": "sbx",
        "sbx_version": sbx.__version__,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "steps": a.steps,
        "runs": runs,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    for r in runs:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
