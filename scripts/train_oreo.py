"""Train and evaluate SFT, RFT, DPO and OREO on the arithmetic-chain task (one seed).

    python scripts/train_oreo.py --seed 0 --ckpt-dir results/scratch/oreo_ckpt   # full config
    python scripts/train_oreo.py --quick                                         # ~1 minute smoke

Each phase (SFT, RFT, DPO, OREO token/step, iterative rounds) is saved with orbax under
``--ckpt-dir/seed<k>/<phase>``; rerunning with the same arguments resumes from the last saved
phase, and because every phase draws its own key the result equals an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

from jaxsel.rl.oreo import OreoConfig, run_pipeline
from jaxsel.utils import flag, parse_config, restore_or_make

PHASES = ("sft", "rft", "dpo", "oreo", "oreo_step")


def orbax_checkpointer(root: Path | None):
    """``checkpoint(name, make)`` for :func:`run_pipeline`: restore ``root/name`` or make+save."""
    if root is None:
        return None
    return lambda name, make: jax.tree.map(jnp.asarray, restore_or_make(root / name, make))


@dataclasses.dataclass(frozen=True)
class _TrainOreoFlags:
    seed: int = 0
    quick: bool = flag(False, "tiny sizes, ~1 minute (OreoConfig.quick)")
    # (noqa: flag() returns a dataclasses.field, ruff cannot tell for a Path annotation)
    ckpt_dir: Path | None = flag(None, "orbax checkpoints + resume")  # noqa: RUF009
    out: Path | None = flag(None, "write the result JSON here")  # noqa: RUF009
    beams: tuple[int, ...] = (1, 3, 5, 7)
    sc_k: int = 8
    n_steps: int | None = flag(None, "task chain length")
    modulus: int | None = flag(None, "task modulus (<= 23)")
    fast_compile: bool = flag(
        False,
        "skip XLA's expensive passes: faster compiles, slower steps (times in "
        "results/oreo/README.md); --quick has it on",
    )
    value_from_joint: bool = flag(
        False,
        "start the critic-only value fit from the jointly trained OREO value instead of the "
        "final policy's trunk",
    )


#: Every int / float field of :class:`OreoConfig` is a flag too; ``None`` keeps the value of the
#: configuration chosen (``--quick`` or the full one).
OREO_FLAGS = tuple(f.name for f in dataclasses.fields(OreoConfig) if f.type in ("int", "float"))


def _validate(self: Any) -> None:
    if self.sc_k < 1:
        raise ValueError(f"sc_k must be >= 1, got {self.sc_k}")
    if not self.beams or min(self.beams) < 1:
        raise ValueError(f"beams must be >= 1, got {self.beams}")
    build_config(self)  # OreoConfig's ValueError names the field


TrainOreoConfig = dataclasses.make_dataclass(
    "TrainOreoConfig",
    [
        (f.name, (int if f.type == "int" else float) | None, flag(None, f"OreoConfig.{f.name}"))
        for f in dataclasses.fields(OreoConfig)
        if f.name in OREO_FLAGS
    ],
    bases=(_TrainOreoFlags,),
    frozen=True,
    namespace={"__post_init__": _validate, "__module__": __name__},
)


def build_config(args: Any) -> OreoConfig:
    """The :class:`OreoConfig` of parsed flags (a :data:`TrainOreoConfig`)."""
    over: dict[str, Any] = {k: getattr(args, k) for k in OREO_FLAGS if getattr(args, k) is not None}
    if args.fast_compile:
        over["fast_compile"] = True
    if args.value_from_joint:
        over["value_from_policy"] = False
    cfg = OreoConfig.quick(**over) if args.quick else OreoConfig(**over)
    task = {k: getattr(args, k) for k in ("n_steps", "modulus") if getattr(args, k) is not None}
    if task:
        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, **task))
    return cfg


def run(args: Any) -> dict[str, Any]:
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
    args = parse_config(TrainOreoConfig, description=__doc__)
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
