"""The SoftHebb experiment: unsupervised pass in resumable chunks, frozen-feature probes, controls.

The library half of ``scripts/train_softhebb.py`` (which parses an :class:`ExperimentConfig`, calls
these functions, prints the tables and saves ``result.json`` and the plots).

Protocol (Journé et al., ICLR 2023): one unsupervised epoch at batch 10 with all blocks learning
together (``training_mode="successive"``: one block after the other, the default of the authors'
``multi_layer.py``), frozen features, dropout 0.5 + linear classifier (Adam 1e-3, batch 64, step
schedule). Controls: the same net with random frozen weights (BatchNorm statistics calibrated on
the training images, or left at their init), and the same architecture trained end to end by
backprop.

- :func:`run_unsupervised`: the unsupervised pass as jitted chunks of batches, checkpointed after
  every chunk (:func:`jaxsel.utils.save_tree`); rerunning resumes and reproduces the same weights.
- :func:`run_probes`: features of the trained net and of the random controls, one linear probe each.
- :func:`run_backprop`: the backprop control, test accuracy after every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxsel.hebb import data, nets, rules, train
from jaxsel.utils.checkpoint import restore_tree, save_tree
from jaxsel.utils.config_cli import flag

PROBES = ("softhebb", "random", "random_uncalibrated")


def _choice(name: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One SoftHebb run: data, net, unsupervised pass, probes and the backprop control."""

    data: str = flag("digits", choices=sorted(data.LOADERS))
    data_dir: str | None = None
    preset: str = flag("digits", choices=sorted(nets.PRESETS))
    pool: str = flag("max", choices=("max", "avg", "soft"))
    batch_size: int = 10
    epochs: int = 1
    training_mode: str = flag(
        "consecutive",
        "consecutive: all blocks learn together; successive: one block at a time (authors' default)",
        choices=("consecutive", "successive"),
    )
    chunk_steps: int = 250
    probe_epochs: int = 50
    probe_batch: int = 64
    backprop_epochs: int = 0
    backprop_init: str = flag(
        "softhebb", "torch: torch.nn.Conv2d's default init", choices=("softhebb", "torch")
    )
    backprop_halve_at: str = flag(
        "", "e.g. '2,3,4': epochs at which the lr halves ('': the authors' rule)"
    )
    only_backprop: bool = flag(False, "skip the unsupervised pass and the probes")
    probes: str = flag(
        "softhebb,random",
        "frozen-feature probes: softhebb; random (random frozen weights, BatchNorm statistics "
        "calibrated on the data like the trained net's); random_uncalibrated (BatchNorm left at "
        "mean 0 / var 1, what training only the authors' classifier block would leave)",
    )
    limit_train: int = 0
    probe_train: int = flag(0, "0: probe on all (limited) training images")
    limit_test: int = 0
    seed: int = 0
    feature_dtype: str = "float16"
    softhebb_bn: str = flag(
        "train",
        "BatchNorm statistics of the SoftHebb features: train (the authors' way: the running "
        "averages of the unsupervised pass); calibrate (re-estimated with the final kernels on "
        "the batches used for the random control)",
        choices=("calibrate", "train"),
    )

    def __post_init__(self):
        _choice("data", self.data, data.LOADERS)
        _choice("preset", self.preset, nets.PRESETS)
        _choice("pool", self.pool, ("max", "avg", "soft"))
        _choice("training_mode", self.training_mode, ("consecutive", "successive"))
        _choice("backprop_init", self.backprop_init, ("softhebb", "torch"))
        _choice("softhebb_bn", self.softhebb_bn, ("calibrate", "train"))
        for name in ("batch_size", "epochs", "chunk_steps", "probe_epochs", "probe_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("backprop_epochs", "limit_train", "probe_train", "limit_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        unknown = set(self.probe_list) - set(PROBES)
        if unknown:
            raise ValueError(f"probes: unknown {sorted(unknown)} (known: {PROBES})")
        try:
            _ = self.halve_at
        except ValueError:
            raise ValueError(
                f"backprop_halve_at must be comma-separated epochs, got {self.backprop_halve_at!r}"
            ) from None
        np.dtype(self.feature_dtype)  # raises TypeError naming the dtype
        if self.only_backprop and not self.backprop_epochs:
            raise ValueError("only_backprop needs backprop_epochs >= 1")

    @property
    def probe_list(self) -> tuple[str, ...]:
        return tuple(p for p in self.probes.split(",") if p)

    @property
    def halve_at(self) -> tuple[int, ...] | None:
        return tuple(int(e) for e in self.backprop_halve_at.split(",") if e) or None

    def probe_config(self) -> train.ProbeConfig:
        return train.ProbeConfig(epochs=self.probe_epochs, batch_size=self.probe_batch)

    def trajectory(self) -> dict[str, Any]:
        """What fixes the sequence of unsupervised chunks: a checkpoint resumes only if it matches.

        A consecutive run may add epochs (its chunks are epoch-major); a successive run's stages
        depend on the epoch count.
        """
        t = {
            k: getattr(self, k)
            for k in ("data", "preset", "pool", "batch_size", "chunk_steps", "limit_train", "seed")
        }
        t["training_mode"] = self.training_mode
        if self.training_mode != "consecutive":
            t["epochs"] = self.epochs
        return t


class Keys(NamedTuple):
    """The run's PRNG keys, split as :func:`jaxsel.hebb.train.make_unsupervised_train` does."""

    init: jax.Array
    data: jax.Array
    probe: jax.Array
    backprop: jax.Array


def split_keys(key: jax.Array) -> Keys:
    k_init, k_data = jax.random.split(key)
    k_probe, k_bp = jax.random.split(jax.random.fold_in(key, 1))
    return Keys(k_init, k_data, k_probe, k_bp)


def load_data(cfg: ExperimentConfig) -> data.Split:
    """The data set with the ``limit_train`` / ``limit_test`` cuts applied."""
    x_tr, y_tr, x_te, y_te = data.load(cfg.data, cfg.data_dir)
    if cfg.limit_train:
        x_tr, y_tr = x_tr[: cfg.limit_train], y_tr[: cfg.limit_train]
    if cfg.limit_test:
        x_te, y_te = x_te[: cfg.limit_test], y_te[: cfg.limit_test]
    return data.Split(x_tr, y_tr, x_te, y_te)


def probe_split(cfg: ExperimentConfig, ds: data.Split) -> data.Split:
    """``ds`` with the training set cut to the first ``cfg.probe_train`` images (all if 0)."""
    if not cfg.probe_train:
        return ds
    return ds._replace(x_train=ds.x_train[: cfg.probe_train], y_train=ds.y_train[: cfg.probe_train])


def make_net_config(
    cfg: ExperimentConfig, in_shape: tuple[int, int, int], num_classes: int
) -> nets.NetConfig:
    """The preset's net for images of ``in_shape`` with ``num_classes`` outputs and ``cfg.pool``."""
    factory = nets.PRESETS[cfg.preset]
    net = factory(in_shape=in_shape) if cfg.preset in ("two_layer", "small") else factory()
    if tuple(net.in_shape) != tuple(in_shape):
        raise ValueError(
            f"preset {cfg.preset!r} expects images {net.in_shape}, data has {in_shape}"
        )
    net = dataclasses.replace(net, num_classes=num_classes)
    return net.with_pool(cfg.pool) if cfg.pool != "max" else net


def cpu_s() -> float:
    """User + system CPU seconds of this process (wall time is inflated on a shared machine)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------ unsupervised pass


class Unsupervised(NamedTuple):
    """Result of :func:`run_unsupervised`: the trained state, win counts per block, and timings."""

    state: nets.NetState
    wins: tuple[jax.Array, ...]
    stats: dict[str, Any]


def run_unsupervised(
    key: jax.Array,
    cfg: ExperimentConfig,
    net: nets.NetConfig,
    images: np.ndarray,
    *,
    ckpt_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Unsupervised:
    """The unsupervised pass as jitted chunks of ``cfg.chunk_steps`` batches.

    With ``ckpt_dir``, the state is saved after every chunk (with ``ckpt_run.json`` beside it, the
    :meth:`ExperimentConfig.trajectory` that wrote it); a later call resumes from it, and the result
    equals an uninterrupted run's. A checkpoint written by another trajectory raises ``ValueError``
    (pass ``resume=False`` to start over). ``key`` is the run's key (:func:`split_keys`).
    """
    keys = split_keys(key)
    x = jnp.asarray(images)
    state0 = nets.init_net(keys.init, net)
    wins0 = tuple(jnp.zeros((b.out_channels,), jnp.int32) for b in net.blocks)
    n_batches = x.shape[0] // cfg.batch_size
    stages = train.stage_schedule(net, cfg.training_mode)
    chunks = [
        (stage, e, s, min(s + cfg.chunk_steps, n_batches))
        for stage in range(len(stages))
        for e in range(cfg.epochs)
        for s in range(0, n_batches, cfg.chunk_steps)
    ]
    done, state, wins = 0, state0, wins0
    ckpt = meta = None
    if ckpt_dir is not None:
        ckpt = Path(ckpt_dir).absolute()
        meta = ckpt.with_name(ckpt.name + "_run.json")
        trajectory = cfg.trajectory()
        if not resume and ckpt.exists():
            shutil.rmtree(ckpt)
        if ckpt.exists() and meta.exists():
            old = json.loads(meta.read_text())
            if old != trajectory:
                raise ValueError(
                    f"{ckpt} was written by another run ({old}), not this one ({trajectory}); "
                    "start over (resume=False) or choose another folder"
                )
        meta.write_text(json.dumps(trajectory, indent=1) + "\n")
        if resume and ckpt.exists():
            like = {"state": state0, "wins": wins0, "chunk": np.zeros((), np.int64)}
            restored = restore_tree(ckpt, like)
            state, wins, done = restored["state"], restored["wins"], int(restored["chunk"])
            print(f"resumed from {ckpt} after chunk {done}/{len(chunks)}")

    chunk_fns = [
        jax.jit(
            lambda s, w, b, blocks=blocks: train.unsupervised_chunk(s, w, x, b, net, blocks=blocks)
        )
        for blocks, _ in stages
    ]
    compiled: dict[tuple[int, int], Callable] = {}
    t_compile = t_run = 0.0
    c0 = cpu_s()
    n_img = 0
    stage_s = [0.0] * len(stages)  # run time per stage (successive mode: one per block)
    todo = range(done, len(chunks))
    if progress:
        todo = tqdm(todo, desc="softhebb", unit="chunk", initial=done, total=len(chunks))
    for ci in todo:
        stage, e, s0, s1 = chunks[ci]
        stage_key = stages[stage][1]
        batches = train.stage_batches(keys.data, x.shape[0], cfg.batch_size, e, stage_key)[s0:s1]
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
        if ckpt is not None:
            save_tree(ckpt, {"state": state, "wins": wins, "chunk": np.asarray(ci + 1, np.int64)})
    stats = {
        "images": n_img,
        "run_s": t_run,
        "compile_s": t_compile,
        "cpu_s": cpu_s() - c0,
        "images_per_s": n_img / t_run if t_run else None,
        "resumed_at_chunk": done,
        "training_mode": cfg.training_mode,
        "stage_run_s": stage_s,
    }
    return Unsupervised(state, wins, stats)


def block_stats(state: nets.NetState, wins: tuple[jax.Array, ...], net: nets.NetConfig) -> list:
    """Per block: channels, winner statistics and how far the neuron norms are from 1."""
    out = []
    for i, (w, b) in enumerate(zip(state.weights, net.blocks)):
        norms = np.asarray(rules.neuron_norms(w))
        out.append(
            {
                "block": i,
                "channels": b.out_channels,
                **nets.winner_stats(wins[i]),
                "norm_mean": float(norms.mean()),
                "norm_max_dev_from_1": float(np.abs(norms - 1).max()),
            }
        )
    return out


# ------------------------------------------------------------------------------ probes, controls


def probe(key, feats_tr, y_tr, feats_te, y_te, pcfg: train.ProbeConfig, n_classes: int) -> dict:
    """Trains a linear probe on frozen features; test and train accuracy, wall and CPU seconds."""
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


def run_probes(
    key: jax.Array,
    cfg: ExperimentConfig,
    net: nets.NetConfig,
    state: nets.NetState,
    ds: data.Split,
    *,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """The frozen-feature probes of ``cfg.probes`` (SoftHebb ``state`` and random controls).

    ``ds`` is the (limited) data; the unsupervised pass's images calibrate BatchNorm, and the probe
    trains on the first ``cfg.probe_train`` of them (all if 0). ``on_row`` sees each row when done.
    """
    keys = split_keys(key)
    x_unsup = ds.x_train
    x_tr, y_tr, x_te, y_te = probe_split(cfg, ds)
    n_classes = int(max(ds.y_train.max(), ds.y_test.max())) + 1
    images = jnp.asarray(x_unsup)
    dt = np.dtype(cfg.feature_dtype)
    n_cal = min(100, x_unsup.shape[0])
    calib = train.batch_indices(keys.data, x_unsup.shape[0], n_cal, 0)[:100]
    calibrate = jax.jit(lambda s, b: train.calibrate_batch_norm(s, images, b, net))
    wanted = cfg.probe_list
    controls = []
    if "softhebb" in wanted:
        controls.append(
            ("softhebb", calibrate(state, calib) if cfg.softhebb_bn == "calibrate" else state)
        )
    # The random controls: the same initial kernels (same key), never trained.
    if "random" in wanted:
        controls.append(("random_frozen", calibrate(nets.init_net(keys.init, net), calib)))
    if "random_uncalibrated" in wanted:
        controls.append(("random_frozen_uncalibrated_bn", nets.init_net(keys.init, net)))
    rows = []
    for name, st in controls:
        t0, c0 = time.perf_counter(), cpu_s()
        f_tr = train.extract_features(st, x_tr, net, dtype=dt, progress=True)
        f_te = train.extract_features(st, x_te, net, dtype=dt)
        feat = {"features_s": time.perf_counter() - t0, "features_cpu_s": cpu_s() - c0}
        feat["features_images_per_s"] = (len(x_tr) + len(x_te)) / feat["features_s"]
        res = probe(keys.probe, f_tr, y_tr, f_te, y_te, cfg.probe_config(), n_classes)
        rows.append({"model": name, **res, **feat})
        if on_row is not None:
            on_row(rows[-1])
        del f_tr, f_te
    return rows


def run_backprop(
    key: jax.Array, cfg: ExperimentConfig, net: nets.NetConfig, ds: data.Split
) -> dict:
    """The same architecture trained end to end; the row holds test accuracy after every epoch.

    ``key`` is the run's key (:func:`split_keys`); ``ds`` the training and test data as probed
    (:func:`probe_split`).
    """
    x_tr, y_tr, x_te, y_te = ds
    bcfg = dataclasses.replace(
        cfg.probe_config(), epochs=cfg.backprop_epochs, halve_at=cfg.halve_at
    )
    n = x_tr.shape[0]
    spe = n // bcfg.batch_size
    k_i, k_d, k_k = jax.random.split(split_keys(key).backprop, 3)
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
    return {
        "model": f"backprop_{bcfg.epochs}ep_{cfg.backprop_init}_init",
        "test_accuracy": curve[-1],
        "test_accuracy_per_epoch": curve,
        "lr_halved_at_epochs": list(cfg.halve_at or train.lr_halving_epochs(bcfg.epochs)),
        "train_accuracy": None,
        "probe_s": time.perf_counter() - t0,
        "probe_cpu_s": cpu_s() - c0,
        "features_s": None,
    }
