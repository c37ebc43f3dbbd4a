"""Training loops: the unsupervised SoftHebb pass, the linear probe, and the backprop control.

Each loop is ``make_*(config) -> train(key, ...)`` with ``lax.scan`` inside, so the whole run is one
``jit`` and seeds can be ``vmap``-ed. The chunked variants (``unsupervised_chunk``) run the same
scan body over a slice of the batches, for progress bars and checkpoints; with the same key they
reproduce the one-shot run exactly (the batch order comes from :func:`batch_indices`).

Protocol (Journé et al., ICLR 2023): one unsupervised epoch at batch 10 with all layers learning
together, then frozen features -> dropout 0.5 -> linear classifier trained with Adam (lr 1e-3,
batch 64), the lr halved at 20/35/50/60/70/80/90% of the epochs (the authors' ``CustomStepLR``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxsel.hebb import nets

# ------------------------------------------------------------------------------ unsupervised pass


def batch_indices(key: jax.Array, n: int, batch_size: int, epoch: int | jax.Array) -> jax.Array:
    """The shuffled batches of one epoch: ``(n // batch_size, batch_size)`` example indices."""
    if batch_size < 1 or batch_size > n:
        raise ValueError(f"need 1 <= {batch_size=} <= n={n}")
    nb = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    return perm[: nb * batch_size].reshape(nb, batch_size)


def _zero_wins(cfg: nets.NetConfig) -> tuple[jax.Array, ...]:
    return tuple(jnp.zeros((b.out_channels,), jnp.int32) for b in cfg.blocks)


def unsupervised_chunk(
    state: nets.NetState,
    wins: tuple[jax.Array, ...],
    images: jax.Array,
    batches: jax.Array,
    cfg: nets.NetConfig,
    *,
    blocks: tuple[int, ...] | None = None,
) -> tuple[nets.NetState, tuple[jax.Array, ...]]:
    """Hebbian steps of ``blocks`` (default all) over ``batches (steps, batch)`` of indices into
    ``images (N, H, W, C)``; see :func:`jaxsel.hebb.nets.hebbian_step`."""

    def body(carry, idx):
        s, w = carry
        s, stats = nets.hebbian_step(s, images[idx], cfg, blocks=blocks)
        return (s, tuple(a + b for a, b in zip(w, stats.wins))), None

    (state, wins), _ = lax.scan(body, (state, wins), batches)
    return state, wins


TrainingMode = Literal["consecutive", "successive"]


def stage_schedule(
    cfg: nets.NetConfig, mode: TrainingMode
) -> tuple[tuple[tuple[int, ...] | None, int | None], ...]:
    """The unsupervised stages: ``(learning blocks, batch-order key offset)`` per stage.

    "consecutive" (the paper): one stage, all blocks learn from the same forward pass.
    "successive" (the default of the authors' ``multi_layer.py``): block 0 alone for the given
    epochs, then block 1 with block 0 frozen (BatchNorm in eval mode), and so on; stage ``i``
    draws its own batch order (:func:`stage_batches` with ``stage_key=i``).
    """
    if mode == "consecutive":
        return ((None, None),)
    if mode == "successive":
        return tuple(((i,), i) for i in range(len(cfg.blocks)))
    raise ValueError(f"mode must be 'consecutive' or 'successive', got {mode=!r}")


def stage_batches(
    key: jax.Array, n: int, batch_size: int, epoch: int | jax.Array, stage_key: int | None
) -> jax.Array:
    """:func:`batch_indices` of one stage: from ``fold_in(key, 1000 + stage_key)``, or from
    ``key`` itself when ``stage_key`` is None (the consecutive mode's order, unchanged)."""
    k = key if stage_key is None else jax.random.fold_in(key, 1000 + stage_key)
    return batch_indices(k, n, batch_size, epoch)


def make_unsupervised_train(
    cfg: nets.NetConfig,
    *,
    batch_size: int = 10,
    epochs: int = 1,
    mode: TrainingMode = "consecutive",
) -> Callable[[jax.Array, jax.Array], tuple[nets.NetState, tuple[jax.Array, ...]]]:
    """``train(key, images) -> (state, wins)``: init, then ``epochs`` unsupervised passes.

    ``mode="consecutive"`` (the paper): all blocks learn together, ``epochs`` passes over the data.
    ``mode="successive"`` (the authors' script default): each block in turn learns for ``epochs``
    passes with the blocks below it frozen (:func:`stage_schedule`).
    ``images`` are ``(N, H, W, C)`` floats in [0, 1]; ``wins[i]`` counts, per neuron of block i,
    how often it was the argmax while block i learned (collapsed neurons never win).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs=}")
    stages = stage_schedule(cfg, mode)

    def train(key: jax.Array, images: jax.Array):
        k_init, k_data = jax.random.split(key)
        carry = (nets.init_net(k_init, cfg), _zero_wins(cfg))
        for blocks, stage_key in stages:
            # Epochs are a scan too (not a Python loop): one copy of the step in the program, so
            # the compile time does not grow with ``epochs``.
            def epoch(carry, e, blocks=blocks, stage_key=stage_key):
                batches = stage_batches(k_data, images.shape[0], batch_size, e, stage_key)
                return unsupervised_chunk(*carry, images, batches, cfg, blocks=blocks), None

            carry, _ = lax.scan(epoch, carry, jnp.arange(epochs))
        return carry

    return train


def calibrate_batch_norm(
    state: nets.NetState, images: jax.Array, batches: jax.Array, cfg: nets.NetConfig
) -> nets.NetState:
    """Running BatchNorm statistics from forward passes over ``batches``, weights untouched.

    Gives the random-weights control the same kind of statistics a trained net has.
    """

    def body(s, idx):
        _, s = nets.forward(s, images[idx], cfg, train=True)
        return s, None

    state, _ = lax.scan(body, state, batches)
    return state


@functools.lru_cache(maxsize=16)
def _flat_features(cfg: nets.NetConfig, dtype: str) -> Callable:
    # One jitted function per (hashable, frozen) config and storage dtype: every state and split
    # reuses its compile. The cast happens inside the program, so a float16 store moves half
    # the bytes from the device buffer to NumPy.
    return jax.jit(lambda s, x: nets.features(s, x, cfg).reshape(x.shape[0], -1).astype(dtype))


def extract_features(
    state: nets.NetState,
    images: np.ndarray | jax.Array,
    cfg: nets.NetConfig,
    *,
    batch_size: int = 250,
    dtype=np.float32,
    progress: bool = False,
) -> np.ndarray:
    """Frozen, flattened features of ``images (N, H, W, C)``: ``(N, H'' * W'' * C'')`` (NumPy).

    Forward only (no Hebbian correlation), in eval mode, so the result does not depend on
    ``batch_size``. The next batch is dispatched before the previous one is copied to the host,
    so the copy overlaps with compute instead of stalling the device between batches.
    """
    dtype = np.dtype(dtype)
    fn = _flat_features(cfg, dtype.name)
    n = images.shape[0]
    n_feat = int(np.prod(cfg.feature_shape()))
    out = np.empty((n, n_feat), dtype)

    def launch(s: int):
        x = np.asarray(images[s : s + batch_size], np.float32)
        pad = batch_size - x.shape[0]
        if pad:  # keep one compiled shape; BatchNorm is in eval mode so padding cannot leak
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        return s, batch_size - pad, fn(state, x)

    starts = list(range(0, n, batch_size))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(starts), desc="features", unit="batch")
    pending = launch(starts[0]) if starts else None
    for nxt in [*starts[1:], None]:
        s, m, f = pending
        pending = launch(nxt) if nxt is not None else None
        out[s : s + m] = np.asarray(f)[:m]
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return out


# ------------------------------------------------------------------------------------ linear probe


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Linear classifier on frozen features (the authors' supervised stage)."""

    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    dropout: float = 0.5
    # Epochs at whose start the lr is halved; None: the authors' rule (:func:`lr_halving_epochs`).
    halve_at: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"bad probe config: {self}")
        if self.halve_at is not None and any(not 0 < e < self.epochs for e in self.halve_at):
            raise ValueError(
                f"halve_at epochs must lie in (0, {self.epochs=}), got {self.halve_at}"
            )


def lr_halving_epochs(epochs: int) -> tuple[int, ...]:
    """Epochs at whose start the lr is halved (the authors' ``CustomStepLR``)."""
    if epochs < 20:
        return ()
    fracs = (0.5, 0.75) if epochs < 50 else (0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9)
    return tuple(sorted({int(epochs * f) for f in fracs}))


def probe_schedule(cfg: ProbeConfig, steps_per_epoch: int) -> optax.Schedule:
    halve = lr_halving_epochs(cfg.epochs) if cfg.halve_at is None else sorted(set(cfg.halve_at))
    return optax.piecewise_constant_schedule(cfg.lr, {e * steps_per_epoch: 0.5 for e in halve})


class LinearHead(NamedTuple):
    w: jax.Array  # (features, classes)
    b: jax.Array  # (classes,)


def init_linear(key: jax.Array, n_in: int, n_out: int) -> LinearHead:
    """``U(-1/sqrt(n_in), 1/sqrt(n_in))`` like ``torch.nn.Linear``."""
    kw, kb = jax.random.split(key)
    lim = 1.0 / np.sqrt(n_in)
    return LinearHead(
        jax.random.uniform(kw, (n_in, n_out), minval=-lim, maxval=lim),
        jax.random.uniform(kb, (n_out,), minval=-lim, maxval=lim),
    )


def _fair_coins(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Independent Bernoulli(1/2) booleans, one random BIT each (unpacked from uint32 words).

    ``jax.random.bernoulli`` draws a 32-bit word per element; on XLA:CPU threefry then dominates
    a probe step.
    """
    n = int(np.prod(shape))
    words = jax.random.bits(key, (-(-n // 32),), jnp.uint32)
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    return (bits.reshape(-1)[:n] == 1).reshape(shape)


def _dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    if rate == 0.0:
        return x
    if rate == 0.5:  # the authors' rate: one random bit per element is exact and ~50x cheaper
        keep = _fair_coins(key, x.shape)
    else:
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_probe_train(
    cfg: ProbeConfig, num_classes: int
) -> Callable[[jax.Array, jax.Array, jax.Array], LinearHead]:
    """``train(key, feats (N, F), labels (N,)) -> LinearHead``: dropout, Adam, step schedule."""

    def train(key: jax.Array, feats: jax.Array, labels: jax.Array) -> LinearHead:
        n, f = feats.shape
        spe = n // cfg.batch_size
        if spe < 1:
            raise ValueError(f"need at least one batch: n={n}, {cfg.batch_size=}")
        k_init, k_data, k_drop = jax.random.split(key, 3)
        head = init_linear(k_init, f, num_classes)
        tx = optax.adam(probe_schedule(cfg, spe))
        opt = tx.init(head)

        def loss_fn(h, x, y, k):
            x = _dropout(k, x.astype(jnp.float32), cfg.dropout)
            return _xent(x @ h.w + h.b, y)

        def step(carry, inp):
            h, o = carry
            idx, k = inp
            g = jax.grad(loss_fn)(h, feats[idx], labels[idx], k)
            upd, o = tx.update(g, o, h)
            return (optax.apply_updates(h, upd), o), None

        def epoch(carry, e):
            batches = batch_indices(k_data, n, cfg.batch_size, e)
            keys = jax.random.split(jax.random.fold_in(k_drop, e), spe)
            carry, _ = lax.scan(step, carry, (batches, keys))
            return carry, None

        (head, _), _ = lax.scan(epoch, (head, opt), jnp.arange(cfg.epochs))
        return head

    return train


@jax.jit
def _count_correct(head: LinearHead, x: jax.Array, y: jax.Array) -> jax.Array:
    # Module-level jit with the head as an argument: one compile per feature shape, shared by
    # every head (a closure over ``head`` recompiled on each call).
    return jnp.sum(jnp.argmax(x.astype(jnp.float32) @ head.w + head.b, -1) == y)


def probe_accuracy(
    head: LinearHead, feats: jax.Array, labels: jax.Array, chunk: int = 2000
) -> float:
    """Test accuracy of a linear head (no dropout)."""
    total = 0
    for s in range(0, feats.shape[0], chunk):
        x, y = np.asarray(feats[s : s + chunk]), np.asarray(labels[s : s + chunk])
        if x.shape[0] < chunk and feats.shape[0] > chunk:  # pad the tail: one compiled shape
            pad = chunk - x.shape[0]
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.full((pad,), -1, y.dtype)])  # -1 never equals a class
        total += int(_count_correct(head, x, y))
    return total / feats.shape[0]


# ------------------------------------------------------------------------------ backprop control


class BackpropState(NamedTuple):
    net: nets.NetState
    head: LinearHead
    opt: optax.OptState


def _backprop_tx(probe: ProbeConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    return optax.adam(probe_schedule(probe, steps_per_epoch))


BackpropInit = Literal["softhebb", "torch"]


def backprop_init(
    key: jax.Array,
    cfg: nets.NetConfig,
    probe: ProbeConfig,
    steps_per_epoch: int,
    *,
    init: BackpropInit = "softhebb",
) -> BackpropState:
    """Kernels and a linear head for the backprop control.

    ``init="softhebb"``: the SoftHebb initialisation (``init_net`` of the same key, neuron norms
    ~25). ``init="torch"``: ``torch.nn.Conv2d``'s default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    (neuron norms ~0.58), what a backprop user of this architecture would start from.
    """
    if init not in ("softhebb", "torch"):
        raise ValueError(f"init must be 'softhebb' or 'torch', got {init=!r}")
    k_net, k_head = jax.random.split(key)
    net = nets.init_net(k_net, cfg)
    if init == "torch":
        keys = jax.random.split(k_net, len(net.weights))
        net = nets.NetState(
            tuple(
                jax.random.uniform(k, w.shape, w.dtype, -1.0, 1.0) / np.sqrt(np.prod(w.shape[:-1]))
                for k, w in zip(keys, net.weights)
            ),
            net.bn,
        )
    head = init_linear(k_head, int(np.prod(cfg.feature_shape())), cfg.num_classes)
    return BackpropState(net, head, _backprop_tx(probe, steps_per_epoch).init((net.weights, head)))


def backprop_chunk(
    params: BackpropState,
    images: jax.Array,
    labels: jax.Array,
    batches: jax.Array,
    keys: jax.Array,
    cfg: nets.NetConfig,
    probe: ProbeConfig,
    steps_per_epoch: int,
) -> BackpropState:
    """Adam steps of end-to-end backprop over ``batches (steps, batch)`` with dropout ``keys``."""
    tx = _backprop_tx(probe, steps_per_epoch)

    def loss_fn(trainable, bn, x, y, k):
        weights, head = trainable
        outs, st = nets.forward(nets.NetState(weights, bn), x, cfg, train=True)
        h = _dropout(k, outs[-1].out.reshape(x.shape[0], -1), probe.dropout)
        return _xent(h @ head.w + head.b, y), st.bn

    def step(p, inp):
        idx, k = inp
        trainable = (p.net.weights, p.head)
        g, bn = jax.grad(loss_fn, has_aux=True)(trainable, p.net.bn, images[idx], labels[idx], k)
        upd, opt = tx.update(g, p.opt, trainable)
        weights, head = optax.apply_updates(trainable, upd)
        return BackpropState(nets.NetState(weights, bn), head, opt), None

    params, _ = lax.scan(step, params, (batches, keys))
    return params


def make_backprop_train(
    cfg: nets.NetConfig, probe: ProbeConfig, *, init: BackpropInit = "softhebb"
) -> Callable[[jax.Array, jax.Array, jax.Array], BackpropState]:
    """The same architecture trained end to end by backprop (kernels and head; Adam, dropout).

    BatchNorm uses batch statistics while training and running statistics at test time, as for
    SoftHebb; kernels start from ``init`` (see :func:`backprop_init`). ``train(key, images, labels)``
    runs ``probe.epochs`` epochs with the probe's batch size and lr schedule.
    """

    def train(key: jax.Array, images: jax.Array, labels: jax.Array) -> BackpropState:
        n = images.shape[0]
        spe = n // probe.batch_size
        k_init, k_data, k_drop = jax.random.split(key, 3)
        params = backprop_init(k_init, cfg, probe, spe, init=init)
        for e in range(probe.epochs):
            batches = batch_indices(k_data, n, probe.batch_size, e)
            keys = jax.random.split(jax.random.fold_in(k_drop, e), spe)
            params = backprop_chunk(params, images, labels, batches, keys, cfg, probe, spe)
        return params

    return train


def backprop_accuracy(
    params: BackpropState, images: np.ndarray, labels: np.ndarray, cfg: nets.NetConfig
) -> float:
    """Test accuracy of the backprop control (frozen running BatchNorm statistics)."""
    feats = extract_features(params.net, images, cfg)
    return probe_accuracy(params.head, feats, labels)
