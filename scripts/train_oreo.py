"""Train and evaluate SFT, RFT, DPO and OREO on the arithmetic-chain task (one seed).

    python scripts/train_oreo.py --seed 0 --ckpt-dir results/scratch/oreo_ckpt   # full config
    python scripts/train_oreo.py --quick                                         # ~1 minute smoke

Each phase (SFT, RFT, DPO, OREO token/step, iterative rounds) is saved with orbax under
``--ckpt-dir/seed<k>/<phase>``; rerunning with the same arguments resumes from the last saved
phase, and because every phase draws its own key the result equals an uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

from jaxsel.rl.oreo import OreoConfig, run_pipeline
from jaxsel.utils import restore_or_make

PHASES = ("sft", "rft", "dpo", "oreo", "oreo_step")


def orbax_checkpointer(root: Path | None):
    """``checkpoint(name, make)`` for :func:`run_pipeline`: restore ``root/name`` or make+save."""
    if root is None:
        return None
    return lambda name, make: jax.tree.map(jnp.asarray, restore_or_make(root / name, make))


def build_config(args: argparse.Namespace) -> OreoConfig:
    over = {
        k: v
        for k, v in vars(args).items()
        if k in OreoConfig.__dataclass_fields__ and v is not None
    }
    cfg = OreoConfig.quick(**over) if args.quick else OreoConfig(**over)
    task = {k: getattr(args, k) for k in ("n_steps", "modulus") if getattr(args, k) is not None}
    if task:
        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, **task))
    return cfg


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, ~1 minute")
    ap.add_argument("--ckpt-dir", type=Path, default=None, help="orbax checkpoints + resume")
    ap.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 3, 5, 7])
    ap.add_argument("--sc-k", type=int, default=8)
    ap.add_argument("--n-steps", type=int, default=None, help="task chain length")
    ap.add_argument("--modulus", type=int, default=None, help="task modulus (<= 23)")
    ap.add_argument(
        "--fast-compile",
        action="store_true",
        default=None,
        help="skip XLA's expensive passes: faster compiles, slower steps (times in "
        "results/oreo/README.md)",
    )
    ap.add_argument(
        "--value-from-joint",
        dest="value_from_policy",
        action="store_false",
        default=None,
        help="start the critic-only value fit from the jointly trained OREO value instead of "
        "the final policy's trunk",
    )
    for f in dataclasses.fields(OreoConfig):
        if f.type in ("int", "float"):
            ap.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=int if f.type == "int" else float,
                default=None,
            )
    return ap


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = build_config(args)
    root = None if args.ckpt_dir is None else args.ckpt_dir / f"seed{args.seed}"
    steps = [
        "sft",
        "rft",
        "dpo",
        "oreo",
        "oreo_step",
        *[f"oreo_iter{r}" for r in range(1, cfg.oreo_rounds)],
        "eval",
        "value_fit",
        "beam",
        "sc",
    ]
    bar = tqdm(total=len(steps), desc=f"seed {args.seed}", unit="phase")
    t0 = time.time()

    def progress(name: str) -> None:
        bar.set_postfix_str(name)
        if name != "sft":
            bar.update()

    res = run_pipeline(
        jax.random.key(args.seed),
        cfg,
        beams=tuple(args.beams),
        sc_k=args.sc_k,
        checkpoint=orbax_checkpointer(root),
        progress=progress,
    )
    bar.update()
    bar.close()
    res["wall_s"] = time.time() - t0
    res["config"] = dataclasses.asdict(cfg)
    return res


def main() -> None:
    args = parser().parse_args()
    res = run(args)
    print(
        json.dumps(
            {
                k: res[k]
                for k in ("greedy", "greedy_long", "value_ranking", "beam", "self_consistency")
            },
            indent=1,
        )
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
