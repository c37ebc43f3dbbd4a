"""A small CNN classifier with pluggable pooling, for comparing max / avg / SoftPool accuracy.

Two 3x3 conv layers (ReLU), each followed by 2x2 stride-2 pooling, then a linear head; trained
with Adam on cross-entropy. Pure functions throughout: ``make_train(config)`` returns
``train(key, data)``, whose whole loop is one ``lax.scan`` under ``jit``, so
``jax.vmap(train, in_axes=(0, None))(keys, data)`` trains several seeds at once (purejaxrl style).
The data are an argument, not a closure, so XLA never embeds (and constant-folds) the data set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxsel.pool.softpool import soft_pool

PoolKind = Literal["max", "avg", "soft"]

POOLS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "max": lambda h: nn.max_pool(h, (2, 2), (2, 2), "SAME"),
    "avg": lambda h: nn.avg_pool(h, (2, 2), (2, 2), "SAME", count_include_pad=False),
    "soft": lambda h: soft_pool(h, (2, 2), (2, 2), "SAME"),
}


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """Static hyperparameters (the learning rate is traced, so it could be vmapped too)."""

    pool: PoolKind = "soft"
    channels: tuple[int, int] = (8, 16)
    steps: int = 500
    batch_size: int = 128
    learning_rate: float = 3e-3
    n_classes: int = 10

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {sorted(POOLS)}, got pool={self.pool!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps and batch_size must be >= 1, got {self.steps=}, {self.batch_size=}"
            )


class Data(NamedTuple):
    x_train: jax.Array  # (N, H, W, C) float32
    y_train: jax.Array  # (N,) int32
    x_test: jax.Array
    y_test: jax.Array


def init_params(key: jax.Array, image_shape: tuple[int, int, int], config: CNNConfig) -> dict:
    """He-initialised conv kernels ``(3, 3, in, out)`` and the linear head."""
    h, w, c = image_shape
    c1, c2 = config.channels
    k1, k2, k3 = jax.random.split(key, 3)
    half = lambda v: -(-v // 2)  # size after one SAME stride-2 pooling
    flat = half(half(h)) * half(half(w)) * c2
    he = lambda k, shape, fan_in: jax.random.normal(k, shape) * jnp.sqrt(2.0 / fan_in)
    return {
        "conv1": he(k1, (3, 3, c, c1), 9 * c),
        "b1": jnp.zeros((c1,)),
        "conv2": he(k2, (3, 3, c1, c2), 9 * c1),
        "b2": jnp.zeros((c2,)),
        "head": he(k3, (flat, config.n_classes), flat) / jnp.sqrt(2.0),
        "b3": jnp.zeros((config.n_classes,)),
    }


def _conv(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + b)


def apply(params: dict, x: jax.Array, *, pool: PoolKind) -> jax.Array:
    """Logits ``(B, n_classes)`` for images ``(B, H, W, C)``."""
    pool_fn = POOLS[pool]
    h = pool_fn(_conv(x, params["conv1"], params["b1"]))
    h = pool_fn(_conv(h, params["conv2"], params["b2"]))
    return h.reshape(h.shape[0], -1) @ params["head"] + params["b3"]


class TrainOut(NamedTuple):
    losses: jax.Array  # (steps,) training loss per step
    test_accuracy: jax.Array  # () on the whole test set


def make_train(config: CNNConfig) -> Callable[[jax.Array, Data], TrainOut]:
    """``train(key, data) -> TrainOut``: Adam on minibatches drawn with replacement, one scan."""
    optimizer = optax.adam(config.learning_rate)

    def loss_fn(params, x, y):
        logits = apply(params, x, pool=config.pool)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train(key: jax.Array, data: Data) -> TrainOut:
        n = data.x_train.shape[0]
        k_init, k_data = jax.random.split(key)
        params = init_params(k_init, data.x_train.shape[1:], config)
        opt_state = optimizer.init(params)

        def step(carry, k):
            params, opt_state = carry
            idx = jax.random.randint(k, (config.batch_size,), 0, n)
            loss, grads = jax.value_and_grad(loss_fn)(params, data.x_train[idx], data.y_train[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(k_data, config.steps)
        (params, _), losses = lax.scan(step, (params, opt_state), keys)

        def correct(chunk):
            x, y = chunk
            return jnp.sum(jnp.argmax(apply(params, x, pool=config.pool), -1) == y)

        # Evaluate in chunks of 500 to bound memory on the 10k Fashion-MNIST test set.
        m = data.x_test.shape[0] // 500 * 500
        hits = lax.map(
            correct,
            (
                data.x_test[:m].reshape(-1, 500, *data.x_test.shape[1:]),
                data.y_test[:m].reshape(-1, 500),
            ),
        ).sum()
        if m < data.x_test.shape[0]:
            hits = hits + correct((data.x_test[m:], data.y_test[m:]))
        return TrainOut(losses, hits / data.x_test.shape[0])

    return train
