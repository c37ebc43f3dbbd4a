"""Probe of the SFT data's error model: systematic '*'->'+' slip vs random step errors.

For each ``(p_err, p_confuse, modulus)`` of ``--variants``: SFT -> ``k_samples`` SFT samples per
prompt -> RFT and one round of token-level OREO (:func:`sft_then_oreo`, :func:`train_rft`) ->
greedy accuracy on the benchmark's held-out prompts, and majority vote vs Soft-SC over ``--sc-k``
samples of the SFT and of the OREO policy (:func:`held_out_self_consistency`).

    nice -n 10 python scripts/oreo/error_model_probe.py \
        --variants 0.05 0.6 7  0.15 0 7  0.15 0 11  0.15 0 13
    python scripts/oreo/error_model_probe.py --quick     # smoke run, tiny sizes
"""

from __future__ import annotations

import dataclasses
import time

import jax

from jaxsel._bench import format_table
from jaxsel.rl.oreo import (
    OreoConfig,
    PipelineKeys,
    greedy_accuracy,
    held_out_prompts,
    held_out_self_consistency,
    sft_then_oreo,
    train_rft,
)
from jaxsel.utils import parse_config


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    # flat list of (p_err, p_confuse, modulus) triples
    variants: tuple[float, ...] = (0.05, 0.6, 7)
    sc_k: int = 8
    quick: bool = False

    def __post_init__(self) -> None:
        if len(self.variants) % 3:
            raise ValueError(
                f"variants must be (p_err, p_confuse, modulus) triples, got {self.variants=}"
            )


def main() -> None:
    args = parse_config(Config, description=__doc__)
    t0 = time.time()
    rows = []
    for p_err, p_confuse, modulus in zip(*[iter(args.variants)] * 3):
        base = OreoConfig.quick() if args.quick else OreoConfig()
        task = dataclasses.replace(base.task, modulus=int(modulus))
        cfg = dataclasses.replace(base, p_err=p_err, p_confuse=p_confuse, task=task)
        ks = PipelineKeys.split(jax.random.key(args.seed))
        run = sft_then_oreo(ks, cfg)
        rft = train_rft(ks, run.sft, run.data, cfg)[0]
        held = held_out_prompts(ks, cfg)
        row = {"p_err": p_err, "p_confuse": p_confuse, "modulus": int(modulus)}
        row["offline_reward"] = float(run.data.reward.mean())
        for name, p in (("sft", run.sft), ("rft", rft), ("oreo", run.policy)):
            row[f"greedy_{name}"] = float(greedy_accuracy(p, held, cfg))
        models = {"sft": run.sft, "oreo": run.policy}
        for name, sc in held_out_self_consistency(ks, models, cfg, sc_k=args.sc_k).items():
            for sel in ("majority", "soft_sc_mean", "soft_sc_min"):
                row[f"{name}_{sel}"] = sc[sel]
        rows.append(row)
        print(f"[{time.time() - t0:6.0f}s]", row, flush=True)
    print(
        format_table(
            [{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
        )
    )


if __name__ == "__main__":
    main()
