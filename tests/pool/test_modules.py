"""The NNX SoftPool layer is the pure function, and drops into a small CNN under nnx.jit / grad."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxsel.pool import SoftPool, soft_pool


def test_layer_equals_function():
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    layer = SoftPool((3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    want = jax.jit(lambda v: soft_pool(v, (3, 3), (2, 2), [(1, 1), (1, 1)]))(x)
    np.testing.assert_allclose(nnx.jit(lambda m, v: m(v))(layer, x), want, rtol=1e-6, atol=1e-6)


def test_pool_fn_hook_swaps_the_pooling():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    layer = SoftPool((2, 2), strides=(2, 2), pool_fn=nn.max_pool)
    np.testing.assert_array_equal(
        nnx.jit(lambda m, v: m(v))(layer, x), jax.jit(lambda v: nn.max_pool(v, (2, 2), (2, 2)))(x)
    )


def test_bad_strides_raise():
    with pytest.raises(ValueError, match="strides"):
        SoftPool((2, 2), strides=(2,))


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.pool = SoftPool((2, 2), strides=(2, 2))
        self.head = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

    def __call__(self, x):
        h = self.pool(nnx.relu(self.conv(x)))
        return self.head(h.reshape(h.shape[0], -1))


def test_trains_inside_a_cnn():
    """Gradients flow through the layer: a few Adam steps fit a tiny batch."""
    model = _Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(2), (6, 8, 8, 1))
    labels = jnp.arange(6) % 3

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(20)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]
