"""Train the small retrieval decoder (passkey + associative recall) and save it with orbax.

    nice -n 10 .venv/bin/python scripts/train_retrieval.py --out jaxsel/models/assets/retrieval

Training runs in segments of ``--segment`` steps (one jitted ``lax.scan`` each); after every segment
the full state is checkpointed under ``<out>/train_state`` so ``--resume`` continues exactly where it
stopped (batches are drawn from ``fold_in(key, step)``). The shipped artefact is the float32
parameters plus ``train_config.json``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxsel.models import retrieval as rt
from jaxsel.utils import flag, parse_config, restore_tree, save_tree


@dataclasses.dataclass(frozen=True)
class RetrievalRunConfig(rt.TrainConfig):
    """:class:`rt.TrainConfig` (every field a flag) plus where and how the run is saved."""

    out: Path = rt.ASSET_DIR  # model folder: params, train_config.json, train_state
    segment: int = flag(100, "steps per jitted scan/checkpoint")
    resume: bool = flag(False, "continue from <out>/train_state")

    def __post_init__(self) -> None:
        if self.segment < 1:
            raise ValueError(f"segment must be >= 1, got {self.segment}")

    def train_config(self) -> rt.TrainConfig:
        """The :class:`rt.TrainConfig` part (what is trained and saved)."""
        fields = dataclasses.fields(rt.TrainConfig)
        return rt.TrainConfig(**{f.name: getattr(self, f.name) for f in fields})


def parse() -> tuple[rt.TrainConfig, RetrievalRunConfig]:
    args = parse_config(RetrievalRunConfig, description=__doc__)
    return args.train_config(), args


def main() -> None:
    cfg, args = parse()
    init, run, _ = rt.make_train(cfg)
    k_init, k_data = jax.random.split(jax.random.key(cfg.seed))
    state = init(k_init)
    state_dir = args.out / "train_state"
    if args.resume and state_dir.exists():
        state = restore_tree(state_dir, jax.tree.map(np.asarray, state))
        print(f"resumed at step {int(state.step)}")
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=int(state.step), desc="train")
    history = []
    while int(state.step) < cfg.steps:
        n = min(args.segment, cfg.steps - int(state.step))
        state, (loss, acc) = run(state, k_data, n)
        loss, acc = float(np.mean(loss[-20:])), float(np.mean(acc[-20:]))
        history.append({"step": int(state.step), "loss": loss, "answer_acc": acc})
        bar.update(n)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")
        save_tree(state_dir, jax.tree.map(np.asarray, state))
    bar.close()
    wall = time.perf_counter() - t0
    meta = {"history": history, "train_wall_s": wall, "jax": jax.__version__}
    out = rt.save_model(args.out, state.params, cfg, meta)
    print(f"saved {out} after {wall:.0f} s; final answer accuracy {history[-1]['answer_acc']:.3f}")


if __name__ == "__main__":
    main()
