"""SAC side by side: jaxsel vs rejax on Pendulum-v1, same budget and networks, in one run.

    # from the repository root; rejax 0.1.3 lives in its own venv (it needs gymnax 0.0.9;
    # gymnax 1.0 changed ``step``), which imports this checkout through PYTHONPATH:
    python3.11 -m venv .venv-rejax && .venv-rejax/bin/pip install rejax gymnax==0.0.9 flashbax tqdm
    PYTHONPATH=. nice -n 10 .venv-rejax/bin/python scripts/bench_sac.py

Both libraries run their whole training loop under one ``jit``, vmapped over seeds. Per library and
seed count it reports compile time (AOT, separately), wall-clock of one training run (the fastest
of ``--repeats`` runs that alternate between the libraries, so load changes hit both), environment
steps/s (seeds x steps / run time) and the final return. Both final policies are evaluated the same
way, outside the timed region: deterministic actions ``squash(mean)`` on jaxsel's Pendulum-v1 port
(checked step by step against gymnasium), same evaluation keys.

Differences that remain (documented, not hidden): rejax treats a time-limit truncation as terminal
(no bootstrap), updates the actor before the critic, and under ``vmap`` its ``lax.cond`` warm-up
guard becomes a select, so it also computes (and discards) updates during warm-up.

sbx (SB3 in JAX, RL Zoo settings: 256x256 networks, learning_starts 100) runs in its own venv through
``scripts/bench_sac_sbx.py`` (``--sbx-python``, default ``.venv-sbx/bin/python`` in the repository
root; skipped with a message when that venv is missing), one seed, in the same run. Its networks are
larger than the 64x64 used for jaxsel and rejax, as RL Zoo has them; its ``compile_s`` is the first
200 steps (compile included) and ``run_s`` the remaining steady-state steps scaled to the full
budget.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxsel._bench import format_table, write_json
from jaxsel.rl import envs, sac
from jaxsel.utils import flag, parse_config, pyplot, save_figure

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Args:
    total_timesteps: int = 20_000
    learning_starts: int = 1_000
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 1e-3
    batch_size: int = 256
    seeds: tuple[int, ...] = (1, 8)
    eval_episodes: int = 10
    repeats: int = flag(2, "timed runs per library (interleaved)")
    sbx_python: str = flag(
        ".venv-sbx/bin/python",
        "sbx venv's python, relative to the repository root unless absolute; '' to skip sbx",
    )
    peers: tuple[str, ...] = flag(("jaxsel", "rejax"), choices=("jaxsel", "rejax"))
    out: str = "results/sac"


def parse_args() -> Args:
    return parse_config(Args, description=__doc__)


def deterministic_returns(policy, key: jax.Array, episodes: int) -> jax.Array:
    """Returns of ``episodes`` Pendulum-v1 episodes under ``policy(obs [3]) -> action [1]``."""
    env, params = envs.make("Pendulum-v1")
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, episodes), params)

    def body(carry, _):
        obs, state, ret = carry
        action = jax.vmap(policy)(obs)
        obs, state, r, _, _ = jax.vmap(env.step, in_axes=(None, 0, 0, None))(
            key, state, action, params
        )
        return (obs, state, ret + r), None

    (_, _, ret), _ = jax.lax.scan(body, (obs, state, jnp.zeros(episodes)), None, length=200)
    return ret


def _compiled(fn, keys):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(keys).compile()
    return compiled, time.perf_counter() - t0


def prepare_jaxsel(args: Args, keys: jax.Array):
    """``(compiled train, params_of(out), policy_of(params), compile_s)``."""
    config = sac.SACConfig(
        total_timesteps=args.total_timesteps,
        learning_starts=args.learning_starts,
        batch_size=args.batch_size,
        buffer_size=args.total_timesteps,
        hidden_sizes=args.hidden,
        num_evals=1,
        eval_episodes=args.eval_episodes,
        actor_lr=args.lr,
        critic_lr=args.lr,
        alpha_lr=args.lr,
    )
    env, params = envs.make("Pendulum-v1")
    trainer = sac.make_train(config, env, params)
    compiled, compile_s = _compiled(jax.vmap(trainer), keys)

    def policy_of(actor):
        return lambda obs: sac.deterministic_action(
            sac.actor_apply(actor, obs)[0], low=trainer.low, high=trainer.high
        )

    return compiled, lambda out: out[0].actor, policy_of, compile_s


def prepare_rejax(args: Args, keys: jax.Array):
    from rejax import SAC

    algo = SAC.create(
        env="Pendulum-v1",
        total_timesteps=args.total_timesteps,
        eval_freq=args.total_timesteps,
        skip_initial_evaluation=True,
        num_envs=1,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        buffer_size=args.total_timesteps,
        fill_buffer=args.learning_starts,
        hidden_layer_sizes=args.hidden,
        gamma=0.99,
        polyak=0.995,
    )
    compiled, compile_s = _compiled(jax.vmap(algo.train), keys)
    low, high = -2.0, 2.0

    def policy_of(params):
        def policy(obs):
            dist = algo.actor.apply(params, obs[None], method="_action_dist")
            return (low + high) / 2 + (high - low) / 2 * jnp.tanh(dist.mean()[0])

        return policy

    return compiled, lambda out: out[0].actor_ts.params, policy_of, compile_s


RUNNERS = {"jaxsel": prepare_jaxsel, "rejax": prepare_rejax}


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    rows, curves = [], {}
    eval_keys = jax.random.split(jax.random.PRNGKey(12345), max(args.seeds))
    for n in args.seeds:
        keys = jax.random.split(jax.random.PRNGKey(0), n)
        prepared = {}
        for peer in args.peers:
            print(f"compiling {peer} x{n} seeds ...", flush=True)
            prepared[peer] = RUNNERS[peer](args, keys)
        # Timed runs alternate between libraries, so a change in machine load hits both; the
        # fastest of ``repeats`` runs is reported (the runs are deterministic, outputs identical).
        run_s, outs = {p: [] for p in args.peers}, {}
        for r in range(args.repeats):
            for peer in args.peers:
                t0 = time.perf_counter()
                outs[peer] = jax.block_until_ready(prepared[peer][0](keys))
                run_s[peer].append(time.perf_counter() - t0)
                print(f"  {peer} x{n} run {r}: {run_s[peer][-1]:.1f} s", flush=True)
        for peer in args.peers:
            _, params_of, policy_of, compile_s = prepared[peer]
            evaluate = jax.vmap(
                lambda p, k, policy_of=policy_of: jnp.mean(
                    deterministic_returns(policy_of(p), k, args.eval_episodes)
                )
            )
            finals = [float(x) for x in jax.jit(evaluate)(params_of(outs[peer]), eval_keys[:n])]
            best = min(run_s[peer])
            row = {
                "library": peer,
                "seeds": n,
                "compile_s": compile_s,
                "run_s": best,
                "run_s_all": run_s[peer],
                "env_steps_per_s": n * args.total_timesteps / best,
                "final_return_median": float(np.median(finals)),
                "final_return_min": float(np.min(finals)),
                "final_return_max": float(np.max(finals)),
            }
            rows.append(row)
            curves[f"{peer}_x{n}"] = finals
            print(format_table([{k: v for k, v in row.items() if k != "run_s_all"}]), flush=True)
        write_json(
            out / "bench_sac.json",
            {"args": dataclasses.asdict(args), "rows": rows, "final_returns": curves},
        )
    rows += run_sbx(args, out, curves)
    for n in args.seeds:
        by = {r["library"]: r for r in rows if r["seeds"] == n}
        if "jaxsel" in by and "rejax" in by:
            for r in rows:
                if r["seeds"] == n:
                    r["speedup_vs_rejax"] = by["rejax"]["run_s"] / r["run_s"]
    print(format_table([{k: v for k, v in r.items() if k != "run_s_all"} for r in rows]))
    write_json(
        out / "bench_sac.json",
        {"args": dataclasses.asdict(args), "rows": rows, "final_returns": curves},
    )
    _plot(out / "bench_sac.png", rows, curves)
    print(f"wrote {out / 'bench_sac.json'} and .png")


def run_sbx(args: Args, out: Path, curves: dict) -> list[dict]:
    """One sbx seed in its own venv (a subprocess), or nothing if that venv is missing."""
    import subprocess
    import sys

    sbx_python = ROOT / args.sbx_python if args.sbx_python else None
    if sbx_python is None or not sbx_python.exists():
        print(f"sbx skipped: no interpreter at {args.sbx_python!r} (see the module docstring)")
        return []
    print("running sbx x1 seed (its own venv) ...", flush=True)
    path = out / "bench_sac_sbx.json"
    script = Path(__file__).with_name("bench_sac_sbx.py")
    cmd = [str(sbx_python), str(script), "--steps", str(args.total_timesteps), "--seeds", "0"]
    cmd += ["--eval-episodes", str(args.eval_episodes), "--out", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        print(f"sbx failed (rc {done.returncode}):\n{done.stderr[-2000:]}", file=sys.stderr)
        return []
    res = json.loads(path.read_text())
    r = res["runs"][0]
    run_s = r["run_s"] * args.total_timesteps / r["steps_timed"]
    curves["sbx_x1"] = [r["final_return"]]
    return [
        {
            "library": f"sbx {res['sbx_version']} (RL Zoo, 256x256)",
            "seeds": 1,
            "compile_s": r["first_200_steps_s"],
            "run_s": run_s,
            "env_steps_per_s": args.total_timesteps / run_s,
            "final_return_median": r["final_return"],
            "final_return_min": r["final_return"],
            "final_return_max": r["final_return"],
        }
    ]


def _plot(path: Path, rows, curves) -> None:
    fig, (ax1, ax2) = pyplot().subplots(1, 2, figsize=(10, 4))
    labels = [f"{r['library'].split(' ')[0]} x{r['seeds']}" for r in rows]
    ax1.bar(
        labels,
        [r["env_steps_per_s"] for r in rows],
        color=[{"jaxsel": "C0", "rejax": "C1"}.get(r["library"], "C2") for r in rows],
    )
    ax1.tick_params(axis="x", labelrotation=20)
    ax1.set_ylabel("environment steps / s (all seeds)")
    ax1.set_title("throughput (compile excluded)")
    for i, v in enumerate(curves.values()):
        ax2.scatter(np.full(len(v), i), v, alpha=0.7)
    ax2.set_xticks(range(len(curves)), list(curves), rotation=20)
    ax2.axhline(-200, ls="--", color="gray", lw=1)
    ax2.set_ylabel("final deterministic return (per seed)")
    ax2.set_title("Pendulum-v1, same budget")
    fig.tight_layout()
    save_figure(fig, path, dpi=120, tight=False)


if __name__ == "__main__":
    main()
