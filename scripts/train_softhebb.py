"""Train a SoftHebb conv net without labels, then a linear probe; compare with controls.

Protocol (Journé et al., ICLR 2023): one unsupervised epoch at batch 10 with all blocks learning
together (``--training-mode successive``: one block after the other, the default of the authors'
``multi_layer.py``), frozen features, dropout 0.5 + linear classifier (Adam 1e-3, batch 64, step
schedule). Controls in the same run: the same net with random frozen weights (BatchNorm statistics
calibrated on the training images; ``--probes`` adds one with BatchNorm left at its init), and
optionally the same architecture trained end to end by backprop.

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

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxsel._bench import format_table, write_json
from jaxsel.hebb import data, nets, rules, train


@dataclasses.dataclass(frozen=True)
class Config:
    data: str = "digits"
    data_dir: str | None = None
    preset: str = "digits"
    pool: str = "max"
    batch_size: int = 10
    epochs: int = 1
    training_mode: str = "consecutive"  # or "successive": one block at a time (authors' default)
    chunk_steps: int = 250
    probe_epochs: int = 50
    probe_batch: int = 64
    backprop_epochs: int = 0
    backprop_init: str = "softhebb"  # or "torch": torch.nn.Conv2d's default init
    backprop_halve_at: str = ""  # e.g. "2,3,4": epochs at which the lr halves ("": authors' rule)
    only_backprop: bool = False  # skip the unsupervised pass and the probes
    # Which frozen-feature probes to run: "softhebb"; "random" (random frozen weights, BatchNorm
    # statistics calibrated on the data like the trained net's); "random_uncalibrated" (BatchNorm
    # left at mean 0 / var 1, what training only the authors' classifier block would leave).
    probes: str = "softhebb,random"
    limit_train: int = 0
    probe_train: int = 0  # 0: probe on all (limited) training images
    limit_test: int = 0
    seed: int = 0
    feature_dtype: str = "float16"
    # BatchNorm running statistics of the SoftHebb net for its frozen features: "train" (the
    # authors' way): the running averages left by the unsupervised pass; "calibrate": re-estimated
    # with the final kernels on the 100 batches of 100 training images used for the random control.
    softhebb_bn: str = "train"
    out: str = "results/hebb/digits"
    no_resume: bool = False


def parse_args() -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Config):
        name = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(name, action="store_true")
            continue
        typ = {"int": int, "str": str, "str | None": str}[f.type]
        kw = {}
        if f.name == "data":
            kw["choices"] = sorted(data.LOADERS)
        if f.name == "preset":
            kw["choices"] = sorted(nets.PRESETS)
        if f.name == "pool":
            kw["choices"] = ["max", "avg", "soft"]
        if f.name == "softhebb_bn":
            kw["choices"] = ["calibrate", "train"]
        if f.name == "training_mode":
            kw["choices"] = ["consecutive", "successive"]
        if f.name == "backprop_init":
            kw["choices"] = ["softhebb", "torch"]
        p.add_argument(name, type=typ, default=f.default, **kw)
    return Config(**{k.replace("-", "_"): v for k, v in vars(p.parse_args()).items()})


def make_net_config(
    cfg: Config, in_shape: tuple[int, int, int], num_classes: int
) -> nets.NetConfig:
    factory = nets.PRESETS[cfg.preset]
    net = factory(in_shape=in_shape) if cfg.preset in ("two_layer", "small") else factory()
    if tuple(net.in_shape) != tuple(in_shape):
        raise ValueError(
            f"preset {cfg.preset!r} expects images {net.in_shape}, data has {in_shape}"
        )
    net = dataclasses.replace(net, num_classes=num_classes)
    return net.with_pool(cfg.pool) if cfg.pool != "max" else net


def save_filters_png(w: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _k, _, c, n = w.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6 + 0.4))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i >= n:
            continue
        f = w[..., i]
        f = (f - f.min()) / (f.max() - f.min() + 1e-12)
        ax.imshow(f[..., 0] if c == 1 else f[..., :3], cmap="gray" if c == 1 else None)
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def cpu_s() -> float:
    """User + system CPU seconds of this process (wall time is inflated on a shared machine)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def probe(feats_tr, y_tr, feats_te, y_te, pcfg: train.ProbeConfig, key, n_classes) -> dict:
    t0, c0 = time.perf_counter(), cpu_s()
    head = jax.jit(train.make_probe_train(pcfg, n_classes))(
        key, jnp.asarray(feats_tr), jnp.asarray(y_tr)
    )
    head = jax.block_until_ready(head)
    return {
        "test_accuracy": train.probe_accuracy(head, feats_te, y_te),
        "train_accuracy": train.probe_accuracy(head, feats_tr, y_tr),
        "probe_s": time.perf_counter() - t0,
        "probe_cpu_s": cpu_s() - c0,
    }


def run_backprop(cfg: Config, net: nets.NetConfig, pcfg, key, ds, out: Path) -> dict:
    """The same architecture trained end to end; test accuracy after every epoch (+ PNG curve)."""
    x_tr, y_tr, x_te, y_te = ds
    halve = tuple(int(e) for e in cfg.backprop_halve_at.split(",") if e) or None
    bcfg = dataclasses.replace(pcfg, epochs=cfg.backprop_epochs, halve_at=halve)
    n = x_tr.shape[0]
    spe = n // bcfg.batch_size
    k_i, k_d, k_k = jax.random.split(key, 3)
    params = train.backprop_init(k_i, net, bcfg, spe, init=cfg.backprop_init)
    images, labels = jnp.asarray(x_tr), jnp.asarray(y_tr)
    step = jax.jit(lambda p, b, k: train.backprop_chunk(p, images, labels, b, k, net, bcfg, spe))
    t0, c0 = time.perf_counter(), cpu_s()
    curve = []
    for e in range(bcfg.epochs):
        batches = train.batch_indices(k_d, n, bcfg.batch_size, e)
        keys = jax.random.split(jax.random.fold_in(k_k, e), spe)
        for s in tqdm(range(0, spe, 100), desc=f"backprop epoch {e}", unit="chunk"):
            params = step(params, batches[s : s + 100], keys[s : s + 100])
        params = jax.block_until_ready(params)
        curve.append(train.backprop_accuracy(params, x_te, y_te, net))
        print(f"backprop epoch {e}: test accuracy {curve[-1]:.4f}", flush=True)
    save_curve_png(curve, out / "backprop_curve.png", f"backprop ({cfg.backprop_init} init)")
    return {
        "model": f"backprop_{bcfg.epochs}ep_{cfg.backprop_init}_init",
        "test_accuracy": curve[-1],
        "test_accuracy_per_epoch": curve,
        "lr_halved_at_epochs": list(halve or train.lr_halving_epochs(bcfg.epochs)),
        "train_accuracy": None,
        "probe_s": time.perf_counter() - t0,
        "probe_cpu_s": cpu_s() - c0,
        "features_s": None,
    }


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
        "total_cpu_s": cpu_s() - t0c0[1],
        "load_average_1_5_15": os.getloadavg(),
    }
    path = write_json(out / "result.json", payload)
    print(f"[{stage}] wrote {path}; {payload['total_wall_s'] / 60:.1f} min so far")


def save_curve_png(acc: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    cfg = parse_args()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start, c_start = time.perf_counter(), cpu_s()
    ds = data.load(cfg.data, cfg.data_dir)
    x_tr, y_tr, x_te, y_te = ds
    if cfg.limit_train:
        x_tr, y_tr = x_tr[: cfg.limit_train], y_tr[: cfg.limit_train]
    if cfg.limit_test:
        x_te, y_te = x_te[: cfg.limit_test], y_te[: cfg.limit_test]
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    net = make_net_config(cfg, tuple(x_tr.shape[1:]), n_classes)
    print(f"data {cfg.data}: train {x_tr.shape}, test {x_te.shape}; features {net.feature_shape()}")
    images = jnp.asarray(x_tr)
    key = jax.random.key(cfg.seed)
    k_init, k_data = jax.random.split(key)  # same split as train.make_unsupervised_train
    k_probe, k_bp = jax.random.split(jax.random.fold_in(key, 1))
    pcfg = train.ProbeConfig(epochs=cfg.probe_epochs, batch_size=cfg.probe_batch)
    if cfg.only_backprop:
        if not cfg.backprop_epochs:
            raise SystemExit("--only-backprop needs --backprop-epochs >= 1")
        if cfg.probe_train:
            x_tr, y_tr = x_tr[: cfg.probe_train], y_tr[: cfg.probe_train]
        row = run_backprop(cfg, net, pcfg, k_bp, (x_tr, y_tr, x_te, y_te), out)
        save_result(out, cfg, net, "backprop", [row], (t_start, c_start))
        return

    # ---------------------------------------------------------------- unsupervised pass, chunked
    import orbax.checkpoint as ocp

    state0 = nets.init_net(k_init, net)
    wins0 = tuple(jnp.zeros((b.out_channels,), jnp.int32) for b in net.blocks)
    n_batches = x_tr.shape[0] // cfg.batch_size
    stages = train.stage_schedule(net, cfg.training_mode)
    chunks = [
        (stage, e, s, min(s + cfg.chunk_steps, n_batches))
        for stage in range(len(stages))
        for e in range(cfg.epochs)
        for s in range(0, n_batches, cfg.chunk_steps)
    ]
    ckpt_dir = (out / "ckpt").absolute()
    # A checkpoint counts chunks, so it only means something for the run that wrote it: resume
    # only if everything that fixes the chunk sequence matches. A consecutive run may add epochs
    # (its chunks are epoch-major); a successive run's stages depend on the epoch count.
    trajectory = {
        k: getattr(cfg, k)
        for k in ("data", "preset", "pool", "batch_size", "chunk_steps", "limit_train", "seed")
    }
    trajectory["training_mode"] = cfg.training_mode
    if cfg.training_mode != "consecutive":
        trajectory["epochs"] = cfg.epochs
    meta = out / "ckpt_run.json"
    if cfg.no_resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # orbax does not save a step below the latest one
    if ckpt_dir.exists() and meta.exists():
        old = json.loads(meta.read_text())
        if old != trajectory:
            raise SystemExit(
                f"{ckpt_dir} was written by another run ({old}), not this one ({trajectory}); "
                "pass --no-resume to start over or choose another --out"
            )
    meta.write_text(json.dumps(trajectory, indent=1) + "\n")
    mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=1))
    done = 0
    state, wins = state0, wins0
    if not cfg.no_resume and mngr.latest_step() is not None:
        done = mngr.latest_step()
        restored = mngr.restore(
            done, args=ocp.args.StandardRestore({"state": state0, "wins": wins0})
        )
        state, wins = restored["state"], restored["wins"]
        print(f"resumed from {ckpt_dir} after chunk {done}/{len(chunks)}")

    chunk_fns = [
        jax.jit(
            lambda s, w, b, blocks=blocks: train.unsupervised_chunk(
                s, w, images, b, net, blocks=blocks
            )
        )
        for blocks, _ in stages
    ]
    compiled = {}
    t_compile = 0.0
    t_run = 0.0
    c_unsup = cpu_s()
    n_img = 0
    stage_s = [0.0] * len(stages)  # run time per stage (successive mode: one per block)
    for ci in tqdm(
        range(done, len(chunks)), desc="softhebb", unit="chunk", initial=done, total=len(chunks)
    ):
        stage, e, s0, s1 = chunks[ci]
        stage_key = stages[stage][1]
        batches = train.stage_batches(k_data, x_tr.shape[0], cfg.batch_size, e, stage_key)[s0:s1]
        sig = (stage, batches.shape[0])
        if sig not in compiled:
            t0 = time.perf_counter()
            compiled[sig] = chunk_fns[stage].lower(state, wins, batches).compile()
            t_compile += time.perf_counter() - t0
        t0 = time.perf_counter()
        state, wins = jax.block_until_ready(compiled[sig](state, wins, batches))
        t_run += time.perf_counter() - t0
        stage_s[stage] += time.perf_counter() - t0
        n_img += batches.size
        mngr.save(ci + 1, args=ocp.args.StandardSave({"state": state, "wins": wins}))
    mngr.wait_until_finished()
    unsup = {
        "images": n_img,
        "run_s": t_run,
        "compile_s": t_compile,
        "cpu_s": cpu_s() - c_unsup,
        "images_per_s": n_img / t_run if t_run else None,
        "resumed_at_chunk": done,
        "training_mode": cfg.training_mode,
        "stage_run_s": stage_s,
    }
    print(
        f"unsupervised: {n_img} images in {t_run:.1f}s ({unsup['images_per_s'] or 0:.1f} img/s), "
        f"compile {t_compile:.1f}s"
    )
    blocks = []
    for i, (w, b) in enumerate(zip(state.weights, net.blocks)):
        norms = np.asarray(rules.neuron_norms(w))
        ws = nets.winner_stats(wins[i])
        blocks.append(
            {
                "block": i,
                "channels": b.out_channels,
                **ws,
                "norm_mean": float(norms.mean()),
                "norm_max_dev_from_1": float(np.abs(norms - 1).max()),
            }
        )
    print(format_table(blocks))
    save_filters_png(
        np.asarray(state.weights[0]),
        out / "filters.png",
        f"SoftHebb block-0 filters ({cfg.data}, {cfg.preset})",
    )

    # ---------------------------------------------------------------- probes and controls
    x_unsup = x_tr
    if cfg.probe_train:
        x_tr, y_tr = x_tr[: cfg.probe_train], y_tr[: cfg.probe_train]
    dt = np.dtype(cfg.feature_dtype)
    rows = []
    calib = train.batch_indices(k_data, x_unsup.shape[0], min(100, x_unsup.shape[0]), 0)[:100]
    calibrate = jax.jit(lambda s, b: train.calibrate_batch_norm(s, images, b, net))
    wanted = [p for p in cfg.probes.split(",") if p]
    unknown = set(wanted) - {"softhebb", "random", "random_uncalibrated"}
    if unknown:
        raise SystemExit(f"--probes: unknown {sorted(unknown)}")
    controls = []
    if "softhebb" in wanted:
        controls.append(
            ("softhebb", calibrate(state, calib) if cfg.softhebb_bn == "calibrate" else state)
        )
    # The random controls: the same initial kernels (same key), never trained.
    if "random" in wanted:
        controls.append(("random_frozen", calibrate(nets.init_net(k_init, net), calib)))
    if "random_uncalibrated" in wanted:
        controls.append(("random_frozen_uncalibrated_bn", nets.init_net(k_init, net)))
    for name, st in controls:
        t0, c0 = time.perf_counter(), cpu_s()
        f_tr = train.extract_features(st, x_tr, net, dtype=dt, progress=True)
        f_te = train.extract_features(st, x_te, net, dtype=dt)
        feat = {"features_s": time.perf_counter() - t0, "features_cpu_s": cpu_s() - c0}
        feat["features_images_per_s"] = (len(x_tr) + len(x_te)) / feat["features_s"]
        res = probe(f_tr, y_tr, f_te, y_te, pcfg, k_probe, n_classes)
        rows.append({"model": name, **res, **feat})
        print(format_table(rows[-1:]), flush=True)
        del f_tr, f_te

    def report(stage: str) -> None:
        acc = {r["model"]: r["test_accuracy"] for r in rows}
        gap = (
            acc["softhebb"] - acc["random_frozen"]
            if {"softhebb", "random_frozen"} <= acc.keys()
            else None
        )
        extra = {"unsupervised": unsup, "blocks": blocks, "softhebb_minus_random": gap}
        save_result(out, cfg, net, stage, rows, (t_start, c_start), **extra)

    report("probes")  # saved before the (expensive) backprop control, so it survives a kill

    if cfg.backprop_epochs:
        rows.append(run_backprop(cfg, net, pcfg, k_bp, (x_tr, y_tr, x_te, y_te), out))
        report("backprop")
    print(f"filters: {out / 'filters.png'}")


if __name__ == "__main__":
    main()
