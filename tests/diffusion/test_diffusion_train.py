"""Training loops and networks: shapes, loss decrease, value-regression target, orbax round trip."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel import diffusion as D
from jaxsel.diffusion import toys, train


def test_networks_shapes_and_vmap(fast_jit):
    p = train.mlp_init(jax.random.key(0), 3, hidden=16, depth=2)
    out = jax.vmap(train.mlp_apply, in_axes=(None, 0, 0))(
        p, jnp.ones((5, 3)), jnp.linspace(0, 1, 5)
    )
    assert out.shape == (5, 3)
    tp = train.transformer_init(jax.random.key(1), 6, 4, width=16, depth=1)
    logits = fast_jit(train.transformer_apply)(tp, jnp.array([4, 0, 1, 4, 2, 3]), 0.5)
    assert logits.shape == (6, 4) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.slow
def test_vp_training_reduces_loss_and_value_regression_learns_linear_reward():
    g = toys.default_gmm()
    fit = train.make_train_vp(
        train.mlp_apply,
        partial(train.mlp_init, dim=2, hidden=32, depth=2),
        lambda k, n: toys.gmm_sample(k, g, n),
        steps=150,
        batch_size=128,
        lr=3e-3,
    )
    _, losses = jax.jit(fit)(jax.random.key(0))
    assert float(losses[-20:].mean()) < 0.8 * float(losses[:20].mean())
    # SVDD-MC regression on exact-denoiser rollouts: near t = 0 the value must track r(x_t)
    w = jnp.array([1.0, 0.5])
    proc = D.vp_process(toys.gmm_denoiser, D.vp_schedule(10), (2,))
    vfit = train.make_train_value(
        train.scalar_mlp_apply,
        partial(train.mlp_init, dim=2, hidden=32, depth=2, out_dim=1),
        proc,
        g,
        toys.linear_reward(w),
        num_rollouts=256,
        steps=300,
        batch_size=128,
        lr=3e-3,
    )
    vparams, vlosses = jax.jit(vfit)(jax.random.key(1))
    assert float(vlosses[-30:].mean()) < 0.7 * float(vlosses[:30].mean())
    x = toys.gmm_sample(jax.random.key(2), g, 64)
    v = jax.vmap(lambda xx: train.scalar_mlp_apply(vparams, xx, 0.1))(x)
    assert float(np.corrcoef(v, x @ w)[0, 1]) > 0.9
    with pytest.raises(ValueError, match="scalar per sample"):
        train.make_train_value(
            train.mlp_apply,
            partial(train.mlp_init, dim=2, hidden=8, depth=1, out_dim=1),
            proc,
            g,
            toys.linear_reward(w),
            num_rollouts=8,
            steps=2,
            batch_size=4,
        )(jax.random.key(0))


def test_orbax_round_trip(tmp_path):
    p = train.mlp_init(jax.random.key(0), 2, hidden=8, depth=1)
    train.save_params(tmp_path / "ckpt", p)
    q = train.load_params(tmp_path / "ckpt")
    jax.tree.map(np.testing.assert_array_equal, p, q)
