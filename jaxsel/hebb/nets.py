"""The configurable SoftHebb conv net: configs, presets, init, forward, one Hebbian step.

Presets follow the authors' ``presets.json`` ("4SoftHebbCnnCIFAR": three softkrotov blocks, reflect
padding, Triangle, max/max/avg pooling, BatchNorm without affine before every conv, then dropout 0.5
and a linear classifier). By default all layers learn together from one forward pass per batch:
every block's update is computed from the same (pre-update) weights, then all are applied;
:func:`hebbian_step` can also train a subset with the blocks below it frozen.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxsel.hebb import layers, rules


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One SoftHebb conv block (the authors' preset string, e.g. ``softkrotov-c96-k5-p2-t1-lr0.08``)."""

    out_channels: int
    kernel_size: int
    t_invert: float
    lr: float
    triangle_power: float = 1.0
    power_lr: float = 0.5
    rule: rules.Rule = "softkrotov"
    padding: int | None = None  # None: kernel_size // 2 ("same" size)
    stride: int = 1
    pool: layers.PoolKind = "max"
    pool_window: int = 4
    pool_stride: int = 2
    pool_padding: int = 1
    init_radius: float = 25.0

    def __post_init__(self):
        if self.out_channels < 1 or self.kernel_size < 1 or self.stride < 1:
            raise ValueError(f"bad block geometry: {self}")
        if self.rule not in rules.RULES:
            raise ValueError(f"rule must be one of {rules.RULES}, got {self.rule=!r}")
        if self.pool not in layers.POOLS:
            raise ValueError(f"pool must be one of {layers.POOLS}, got {self.pool=!r}")

    @property
    def pad(self) -> int:
        return self.kernel_size // 2 if self.padding is None else self.padding


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """A stack of SoftHebb blocks over images ``(H, W, C)``, then dropout and a linear head."""

    blocks: tuple[BlockConfig, ...]
    in_shape: tuple[int, int, int]
    num_classes: int = 10
    dropout: float = 0.5

    def __post_init__(self):
        if not self.blocks:
            raise ValueError("NetConfig needs at least one block")
        if len(self.in_shape) != 3:
            raise ValueError(f"in_shape must be (H, W, C), got {self.in_shape=}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout=}")

    def with_pool(self, pool: layers.PoolKind) -> NetConfig:
        """The same net with every "max" pooling replaced by ``pool`` (e.g. "soft")."""
        blocks = tuple(
            dataclasses.replace(b, pool=pool) if b.pool == "max" else b for b in self.blocks
        )
        return dataclasses.replace(self, blocks=blocks)

    def feature_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, W, C)`` of the last block's output (evaluated abstractly)."""
        state = jax.eval_shape(lambda k: init_net(k, self), jax.random.key(0))
        x = jax.ShapeDtypeStruct((2, *self.in_shape), jnp.float32)
        out = jax.eval_shape(lambda s, x: features(s, x, self), state, x)
        return tuple(out.shape[1:])


_CIFAR_BLOCKS = (
    BlockConfig(
        96,
        5,
        t_invert=1.0,
        lr=0.08,
        triangle_power=0.7,
        pool="max",
        pool_window=4,
        pool_stride=2,
        pool_padding=1,
    ),
    BlockConfig(
        384,
        3,
        t_invert=0.65,
        lr=0.005,
        triangle_power=1.4,
        pool="max",
        pool_window=4,
        pool_stride=2,
        pool_padding=1,
    ),
    BlockConfig(
        1536,
        3,
        t_invert=0.25,
        lr=0.01,
        triangle_power=1.0,
        pool="avg",
        pool_window=2,
        pool_stride=2,
        pool_padding=0,
    ),
)


def cifar10_preset() -> NetConfig:
    """The authors' CIFAR-10 net ("4SoftHebbCnnCIFAR"): 96 -> 384 -> 1536 channels, 32x32x3 input."""
    return NetConfig(blocks=_CIFAR_BLOCKS, in_shape=(32, 32, 3))


def two_layer_preset(in_shape: tuple[int, int, int] = (28, 28, 1)) -> NetConfig:
    """The first two blocks of the CIFAR preset (96 and 384 channels), e.g. for Fashion-MNIST."""
    return NetConfig(blocks=_CIFAR_BLOCKS[:2], in_shape=in_shape)


def small_preset(in_shape: tuple[int, int, int] = (28, 28, 1), width: int = 1) -> NetConfig:
    """A cheap two-block net (32·width, 128·width channels) with the CIFAR hyperparameters."""
    b0, b1 = _CIFAR_BLOCKS[:2]
    return NetConfig(
        blocks=(
            dataclasses.replace(b0, out_channels=32 * width),
            dataclasses.replace(b1, out_channels=128 * width),
        ),
        in_shape=in_shape,
    )


def digits_preset(channels: int = 32) -> NetConfig:
    """Two blocks for scikit-learn's 8x8 digits: ``channels`` then ``4 * channels``, 2x2 max pools.

    The CIFAR hyperparameters of the first two blocks with 3x3 kernels; features 2x2x(4C).
    """
    b0, b1 = _CIFAR_BLOCKS[:2]
    pool = dict(pool="max", pool_window=2, pool_stride=2, pool_padding=0)
    return NetConfig(
        blocks=(
            dataclasses.replace(b0, out_channels=channels, kernel_size=3, **pool),
            dataclasses.replace(b1, out_channels=4 * channels, kernel_size=3, **pool),
        ),
        in_shape=(8, 8, 1),
    )


PRESETS = {
    "cifar10": cifar10_preset,
    "two_layer": two_layer_preset,
    "small": small_preset,
    "digits": digits_preset,
}


class NetState(NamedTuple):
    """Everything a SoftHebb net learns without labels: kernels and BatchNorm running statistics."""

    weights: tuple[jax.Array, ...]  # block i: (k, k, in_i, out_i)
    bn: tuple[layers.BatchNormState, ...]  # block i: statistics of its input channels


def init_net(key: jax.Array, cfg: NetConfig) -> NetState:
    """Kernels ``N(0, (radius / sqrt(fan_in))^2)`` and fresh BatchNorm statistics."""
    keys = jax.random.split(key, len(cfg.blocks))
    weights, bns = [], []
    c_in = cfg.in_shape[-1]
    for k, b in zip(keys, cfg.blocks):
        shape = (b.kernel_size, b.kernel_size, c_in, b.out_channels)
        weights.append(rules.init_weights(k, shape, radius=b.init_radius))
        bns.append(layers.batch_norm_init(c_in))
        c_in = b.out_channels
    return NetState(tuple(weights), tuple(bns))


def _check_images(x: jax.Array, cfg: NetConfig) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(cfg.in_shape):
        raise ValueError(f"images must be (batch, *{cfg.in_shape}), got {x.shape=}")


def _block(x, w, bn, b: BlockConfig, train: bool) -> layers.ConvBlockOut:
    return layers.conv_block(
        x,
        w,
        bn,
        train=train,
        padding=b.pad,
        triangle_power=b.triangle_power,
        pool=b.pool,
        pool_window=b.pool_window,
        pool_stride=b.pool_stride,
        pool_padding=b.pool_padding,
        strides=(b.stride, b.stride),
    )


def forward(
    state: NetState,
    x: jax.Array,
    cfg: NetConfig,
    *,
    train: bool | tuple[bool, ...],
    depth: int | None = None,
) -> tuple[list[layers.ConvBlockOut], NetState]:
    """The first ``depth`` blocks (default all) on a batch ``x (B, H, W, C)``.

    ``train`` (one flag, or one per block) makes a block's BatchNorm use batch statistics and
    update its running ones; a block with ``False`` uses (and keeps) its running statistics.
    """
    _check_images(x, cfg)
    n = len(cfg.blocks)
    depth = n if depth is None else depth
    flags = (train,) * n if isinstance(train, bool) else tuple(train)
    if len(flags) != n or not 1 <= depth <= n:
        raise ValueError(
            f"need one train flag per block ({n}) and 1 <= depth <= {n}: {train=}, {depth=}"
        )
    outs, bns = [], list(state.bn)
    h = x
    for i in range(depth):
        o = _block(h, state.weights[i], state.bn[i], cfg.blocks[i], flags[i])
        outs.append(o)
        bns[i] = o.bn
        h = o.out
    return outs, NetState(state.weights, tuple(bns))


def features(state: NetState, x: jax.Array, cfg: NetConfig) -> jax.Array:
    """Frozen features (running BatchNorm statistics): ``(B, H'', W'', C_last)``."""
    outs, _ = forward(state, x, cfg, train=False)
    return outs[-1].out


def plasticity(cfg: NetConfig) -> tuple[optax.GradientTransformation, ...]:
    """One :func:`jaxsel.hebb.rules.softhebb` optimizer per block (its own lr and lr power)."""
    return tuple(rules.softhebb(b.lr, power_lr=b.power_lr) for b in cfg.blocks)


class StepStats(NamedTuple):
    """Per-block statistics of one Hebbian step."""

    wins: tuple[jax.Array, ...]  # (out_i,) how often each neuron was the argmax, summed over b, pos


def hebbian_step(
    state: NetState, x: jax.Array, cfg: NetConfig, *, blocks: tuple[int, ...] | None = None
) -> tuple[NetState, StepStats]:
    """One unsupervised SoftHebb step on a batch ``x (B, H, W, C)``.

    ``blocks`` are the blocks that learn (default all: the paper's "consecutive" training, every
    block from the same forward pass). A single forward pass yields every learning block's
    ``(input, u)``; each block's raw change (:func:`rules.conv_delta` of its rule's targets) goes
    through its :func:`rules.softhebb` optimizer, and all are applied together. Blocks that do not
    learn are frozen: their BatchNorm uses running statistics, their kernels and win counts
    stay as they are (counts of this step: zero); blocks after the last learning one are not run
    at all. ``blocks=(i,)`` is one step of a stage of the authors' "successive" mode.
    """
    n = len(cfg.blocks)
    learn = tuple(range(n)) if blocks is None else tuple(sorted(set(blocks)))
    if not learn or not all(0 <= i < n for i in learn):
        raise ValueError(f"blocks must be indices in [0, {n}), got {blocks=}")
    flags = tuple(i in learn for i in range(n))
    outs, state = forward(state, x, cfg, train=flags, depth=learn[-1] + 1)
    new_w, wins = list(state.weights), []
    txs = plasticity(cfg)
    for i, b in enumerate(cfg.blocks):
        if i not in learn:
            wins.append(jnp.zeros((b.out_channels,), jnp.int32))
            continue
        o, w, tx = outs[i], state.weights[i], txs[i]
        y = rules.hebbian_targets(o.u, rule=b.rule, t_invert=b.t_invert)
        dw = rules.conv_delta(o.x_in, y, o.u, w, strides=(b.stride, b.stride))
        step, _ = tx.update(dw, tx.init(w), w)
        new_w[i] = optax.apply_updates(w, step)
        winner = jnp.argmax(o.u, axis=-1).reshape(-1)
        wins.append(jnp.zeros((b.out_channels,), jnp.int32).at[winner].add(1))
    return NetState(tuple(new_w), state.bn), StepStats(tuple(wins))


def winner_stats(wins: jax.Array) -> dict[str, float]:
    """Summary of a winner histogram ``(out,)``: dead neurons, shares, normalised entropy."""
    import numpy as np

    w = np.asarray(wins, dtype=np.float64)
    total = max(w.sum(), 1.0)
    p = w / total
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(len(w))) if len(w) > 1 else 1.0
    return {
        "neurons": len(w),
        "never_won": int((w == 0).sum()),
        "min_share": float(p.min()),
        "max_share": float(p.max()),
        "uniform_share": 1.0 / len(w),
        "normalized_entropy": entropy,
    }
