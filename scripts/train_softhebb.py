"""Train a SoftHebb conv net without labels, then a linear probe; compare with controls.

Protocol (Journé et al., ICLR 2023): one unsupervised epoch at batch 10 with all blocks learning
together (``--training-mode successive``: one block after the other, the default of the authors'
``multi_layer.py``), frozen features, dropout 0.5 + linear classifier (Adam 1e-3, batch 64, step
schedule). Controls in the same run: the same net with random frozen weights (BatchNorm statistics
calibrated on the training images; ``--probes`` adds one with BatchNorm left at its init), and
optionally the same architecture trained end to end by backprop. The logic lives in
:mod:`jaxsel.hebb.experiment`.

Examples::

  python scripts/train_softhebb.py                                   # digits, ~1 min
  python scripts/train_softhebb.py --data fashion_mnist --preset two_layer --backprop-epochs 1
  python scripts/train_softhebb.py --data fashion_mnist --preset two_layer --training-mode successive
  python scripts/train_softhebb.py --data fashion_mnist --preset two_layer --only-backprop \
      --backprop-epochs 5 --backprop-init torch --backprop-halve-at 2,3,4

Writes ``<out>/result.json``, ``<out>/filters.png`` and an orbax checkpoint (``<out>/ckpt``) of the
unsupervised state after every chunk; rerunning resumes from it and reproduces the same weights.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import jax
import numpy as np

from jaxsel._bench import format_table, write_json
from jaxsel.hebb import experiment as X
from jaxsel.hebb import nets
from jaxsel.utils import line_plot, parse_config, pyplot, save_figure


@dataclasses.dataclass(frozen=True)
class Config(X.ExperimentConfig):
    out: str = "results/hebb/digits"
    no_resume: bool = False


def save_filters_png(w: np.ndarray, path: Path, title: str) -> None:
    _k, _, c, n = w.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = pyplot().subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6 + 0.4))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i >= n:
            continue
        f = w[..., i]
        f = (f - f.min()) / (f.max() - f.min() + 1e-12)
        ax.imshow(f[..., 0] if c == 1 else f[..., :3], cmap="gray" if c == 1 else None)
    fig.suptitle(title, fontsize=8)
    save_figure(fig, path, dpi=120)


def save_result(
    out: Path, cfg: Config, net: nets.NetConfig, stage: str, rows: list[dict], t0c0, **extra
) -> None:
    """Print the result rows and write ``<out>/result.json`` (after every stage: survives a kill)."""
    print(format_table([{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]))
    payload = {
        "config": dataclasses.asdict(cfg),
        "net": dataclasses.asdict(net),
        "stage": stage,
        **extra,
        "results": rows,
        "total_wall_s": time.perf_counter() - t0c0[0],
        "total_cpu_s": X.cpu_s() - t0c0[1],
        "load_average_1_5_15": os.getloadavg(),
    }
    path = write_json(out / "result.json", payload)
    print(f"[{stage}] wrote {path}; {payload['total_wall_s'] / 60:.1f} min so far")


def backprop(cfg: Config, net, key, ds, out: Path) -> dict:
    row = X.run_backprop(key, cfg, net, ds)
    acc = row["test_accuracy_per_epoch"]
    line_plot(
        {"backprop": (range(1, len(acc) + 1), [100 * a for a in acc])},
        out / "backprop_curve.png",
        xlabel="epoch",
        ylabel="test accuracy (%)",
        title=f"backprop ({cfg.backprop_init} init)",
        title_fontsize=8,
        figsize=(4, 3),
        tight=True,
    )
    return row


def main() -> None:
    cfg = parse_config(Config, description=__doc__.split("\n")[0])
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0c0 = (time.perf_counter(), X.cpu_s())
    ds = X.load_data(cfg)
    n_classes = int(max(ds.y_train.max(), ds.y_test.max())) + 1
    net = X.make_net_config(cfg, tuple(ds.x_train.shape[1:]), n_classes)
    print(
        f"data {cfg.data}: train {ds.x_train.shape}, test {ds.x_test.shape}; "
        f"features {net.feature_shape()}"
    )
    key = jax.random.key(cfg.seed)
    if cfg.only_backprop:
        row = backprop(cfg, net, key, X.probe_split(cfg, ds), out)
        save_result(out, cfg, net, "backprop", [row], t0c0)
        return

    try:
        unsup = X.run_unsupervised(
            key, cfg, net, ds.x_train, ckpt_dir=out / "ckpt", resume=not cfg.no_resume
        )
    except ValueError as e:  # a checkpoint of another run
        raise SystemExit(f"{e}; pass --no-resume to start over or choose another --out") from None
    s = unsup.stats
    print(
        f"unsupervised: {s['images']} images in {s['run_s']:.1f}s "
        f"({s['images_per_s'] or 0:.1f} img/s), compile {s['compile_s']:.1f}s"
    )
    blocks = X.block_stats(unsup.state, unsup.wins, net)
    print(format_table(blocks))
    save_filters_png(
        np.asarray(unsup.state.weights[0]),
        out / "filters.png",
        f"SoftHebb block-0 filters ({cfg.data}, {cfg.preset})",
    )

    rows = X.run_probes(
        key, cfg, net, unsup.state, ds, on_row=lambda r: print(format_table([r]), flush=True)
    )

    def report(stage: str) -> None:
        acc = {r["model"]: r["test_accuracy"] for r in rows}
        gap = (
            acc["softhebb"] - acc["random_frozen"]
            if {"softhebb", "random_frozen"} <= acc.keys()
            else None
        )
        extra = {"unsupervised": s, "blocks": blocks, "softhebb_minus_random": gap}
        save_result(out, cfg, net, stage, rows, t0c0, **extra)

    report("probes")  # saved before the (expensive) backprop control, so it survives a kill

    if cfg.backprop_epochs:
        rows.append(backprop(cfg, net, key, X.probe_split(cfg, ds), out))
        report("backprop")
    print(f"filters: {out / 'filters.png'}")


if __name__ == "__main__":
    main()
