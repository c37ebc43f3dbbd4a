"""Probe of the learned value and value-guided beam search on one seed of the benchmark.

For each trunk depth (``--n-layers``): SFT -> ``k_samples`` SFT samples per prompt -> one round of
token-level OREO (:func:`sft_then_oreo`) -> critic-only value fit of that policy
(:func:`fit_value`); then, on the benchmark's held-out prompts, how well the joint and the fitted
value rank ``k_samples`` policy samples of one prompt against a score blind to correctness
(:func:`value_ranking`), and beam search (``--beam``) guided by the fitted value and by the
blind score against greedy, for each expansion temperature (``--temperatures``). Keys are
:class:`PipelineKeys`' (the models are the benchmark's seed ``--seed`` after one OREO round).

    nice -n 10 python scripts/oreo/value_probe.py --temperatures 0.3 0.5 0.7
    nice -n 10 python scripts/oreo/value_probe.py --n-layers 2 4   # deeper trunk
    python scripts/oreo/value_probe.py --quick                     # smoke run, tiny sizes
"""

from __future__ import annotations

import dataclasses
import time

import jax

from jaxsel._bench import format_table
from jaxsel.rl.oreo import (
    OreoConfig,
    PipelineKeys,
    beam_accuracy,
    fit_value,
    greedy_accuracy,
    held_out_prompts,
    sft_then_oreo,
    value_ranking,
)
from jaxsel.utils import parse_config


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    n_layers: tuple[int, ...] = (2,)
    value_prompts: int | None = None  # default: OreoConfig's
    value_steps: int | None = None
    temperatures: tuple[float, ...] = (0.3, 0.5, 0.7)
    beam: int = 5
    quick: bool = False


def main() -> None:
    args = parse_config(Config, description=__doc__)
    t0 = time.time()
    say = lambda *a: print(f"[{time.time() - t0:6.0f}s]", *a, flush=True)
    for n_layers in args.n_layers:
        over = {"n_layers": n_layers}
        over |= {k: getattr(args, k) for k in ("value_prompts", "value_steps") if getattr(args, k)}
        cfg = OreoConfig.quick(**over) if args.quick else OreoConfig(**over)
        key = jax.random.key(args.seed)
        ks = PipelineKeys.split(key)
        run = sft_then_oreo(ks, cfg)
        fitted, loss = fit_value(ks.value_fit, run.policy, run.sft, cfg)
        n = len(loss) // 16 or 1
        say(
            f"n_layers={n_layers}: value fit {cfg.value_prompts} prompts x {cfg.k_samples}, "
            f"{cfg.value_steps} steps, loss {float(loss[:n].mean()):.4f} -> "
            f"{float(loss[-n:].mean()):.4f}"
        )
        held = held_out_prompts(ks, cfg)
        rows = [
            {"value": name, **value_ranking(ks.rank, run.policy, v, held, cfg, k=cfg.k_samples)}
            for name, v in (("joint", run.value), ("fitted", fitted))
        ]
        say(f"n_layers={n_layers}: ranking of {cfg.n_eval} held-out prompts x {cfg.k_samples}")
        print(
            format_table(
                [{k: f"{v:.3f}" if k != "value" else v for k, v in r.items()} for r in rows]
            )
        )
        held_b = jax.tree.map(lambda x, n=cfg.n_eval_beam: x[:n], held)
        rows = [{"search": "greedy", "accuracy": float(greedy_accuracy(run.policy, held_b, cfg))}]
        for temp in args.temperatures:
            for name, v in (("value", fitted), ("blind score", None)):
                acc = beam_accuracy(
                    ks.beam, run.policy, v, held_b, cfg, beam=args.beam,
                    n_steps=cfg.task.n_steps, temperature=temp,
                )  # fmt: skip
                rows.append(
                    {"search": f"B={args.beam} by {name}, T={temp}", "accuracy": float(acc)}
                )
        say(f"n_layers={n_layers}: search on the first {cfg.n_eval_beam} held-out prompts")
        print(format_table([{**r, "accuracy": f"{r['accuracy']:.3f}"} for r in rows]))


if __name__ == "__main__":
    main()
