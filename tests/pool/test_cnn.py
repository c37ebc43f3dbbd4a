"""The CNN used by scripts/bench_softpool.py: trains several seeds at once under vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.pool.cnn import CNNConfig, Data, apply, init_params, make_train


def _digits(n_train=600, n_test=300):
    sklearn = pytest.importorskip("sklearn.datasets")
    d = sklearn.load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    return Data(
        jnp.asarray(x[:n_train]),
        jnp.asarray(y[:n_train]),
        jnp.asarray(x[-n_test:]),
        jnp.asarray(y[-n_test:]),
    )


def test_train_traces_under_vmap():
    """Several seeds at once: shapes only (compiling vmapped conv backward is slow on XLA CPU)."""
    config = CNNConfig(pool="soft", channels=(2, 3), steps=7, batch_size=4)
    data = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _digits(20, 10))
    keys = jax.ShapeDtypeStruct((3,), jax.random.key(0).dtype)
    out = jax.eval_shape(jax.vmap(make_train(config), in_axes=(0, None)), keys, data)
    assert out.losses.shape == (3, 7)
    assert out.test_accuracy.shape == (3,)


@pytest.mark.slow
def test_vmapped_seeds_learn_digits():
    config = CNNConfig(pool="soft", channels=(4, 8), steps=150, batch_size=32, learning_rate=1e-2)
    train = jax.jit(jax.vmap(make_train(config), in_axes=(0, None)))
    out = train(jax.random.split(jax.random.key(0), 2), _digits())
    assert out.losses.shape == (2, 150)
    assert out.test_accuracy.shape == (2,)
    assert np.all(out.losses[:, -20:].mean(1) < 0.5 * out.losses[:, :5].mean(1))
    assert np.all(out.test_accuracy > 0.5)  # chance is 0.1
    assert not np.allclose(out.losses[0], out.losses[1])  # the seeds differ


@pytest.mark.parametrize("pool", ["max", "avg", "soft"])
def test_apply_shapes(pool):
    config = CNNConfig(pool=pool, channels=(2, 3))
    params = init_params(jax.random.key(0), (28, 27, 1), config)
    logits = jax.eval_shape(lambda p, v: apply(p, v, pool=pool), params, jnp.zeros((5, 28, 27, 1)))
    assert logits.shape == (5, 10)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="pool"):
        CNNConfig(pool="median")
