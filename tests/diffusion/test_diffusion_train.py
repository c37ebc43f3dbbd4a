"""Training loops and networks: shapes, loss decrease, value-regression target, orbax round trip."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel import diffusion as D
from jaxsel.diffusion import toys, train
from jaxsel.utils import restore_tree, save_tree


def test_networks_shapes_and_vmap(fast_jit):
    def build(key):  # one compiled program: eager init would compile every op separately
        k1, k2 = jax.random.split(key)
        p = train.mlp_init(k1, 3, hidden=16, depth=2)
        out = jax.vmap(train.mlp_apply, in_axes=(None, 0, 0))(
            p, jnp.ones((5, 3)), jnp.linspace(0, 1, 5)
        )
        tp = train.transformer_init(k2, 6, 4, width=16, depth=1)
        logits = train.transformer_apply(tp, jnp.array([4, 0, 1, 4, 2, 3]), 0.5)
        pair = train.two_mlp_apply(train.two_mlp_init(k1, 3, hidden=8, depth=1), jnp.ones(3), 0.2)
        return out, logits, pair

    out, logits, pair = fast_jit(build)(jax.random.key(0))
    assert out.shape == (5, 3) and pair.shape == (2,)
    assert logits.shape == (6, 4) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.slow
def test_vp_training_reduces_loss_and_value_regression_learns_linear_reward():
    g = toys.default_gmm()
    fit = train.make_train_vp(
        train.VPTrainConfig(steps=150, batch_size=128, lr=3e-3),
        train.mlp_apply,
        partial(train.mlp_init, dim=2, hidden=32, depth=2),
        lambda k, n: toys.gmm_sample(k, g, n),
    )
    _, losses = jax.jit(fit)(jax.random.key(0))
    assert float(losses[-20:].mean()) < 0.8 * float(losses[:20].mean())
    # SVDD-MC regression on exact-denoiser rollouts: near t = 0 the value must track r(x_t)
    w = jnp.array([1.0, 0.5])
    proc = D.vp_process(toys.gmm_denoiser, D.vp_schedule(10), (2,))
    vfit = train.make_train_value(
        train.ValueTrainConfig(num_rollouts=256, steps=300, batch_size=128, lr=3e-3),
        train.scalar_mlp_apply,
        partial(train.mlp_init, dim=2, hidden=32, depth=2, out_dim=1),
        proc,
        g,
        toys.linear_reward(w),
    )
    vparams, vlosses = jax.jit(vfit)(jax.random.key(1))
    assert float(vlosses[-30:].mean()) < 0.7 * float(vlosses[:30].mean())
    x = toys.gmm_sample(jax.random.key(2), g, 64)
    value_fn = train.value_fn_from(train.scalar_mlp_apply, 10)
    v = jax.vmap(lambda xx: value_fn(vparams, xx, 1))(x)
    assert float(np.corrcoef(v, x @ w)[0, 1]) > 0.9


def test_soft_value_loss_minimiser_is_the_soft_value():
    """argmin_v mean l(v; r) = (1/lam) log mean exp(lam r) (NumPy), for any offset; finite tails."""
    from scipy.optimize import minimize_scalar

    r = np.random.default_rng(0).normal(1.0, 1.5, size=400)
    risk = jax.jit(
        lambda v, lam, c: jnp.mean(train.soft_value_loss(v, jnp.asarray(r), lam=lam, offset=c))
    )
    for lam, offset in ((1.0, 0.0), (2.0, 3.0), (0.3, -2.0)):
        best = minimize_scalar(
            lambda v, lam=lam, c=offset: float(risk(v, lam, c)), bracket=(-5.0, 5.0), tol=1e-10
        ).x
        want = np.log(np.mean(np.exp(lam * r))) / lam
        assert best == pytest.approx(want, abs=1e-3), (lam, offset)
        assert want > r.mean() + 0.4 * lam * r.var()  # soft value > mean value (Jensen)
    big = train.soft_value_loss(jnp.array(1e4), jnp.array(0.0), lam=1.0)
    grad = jax.grad(lambda v: train.soft_value_loss(v, jnp.array(0.0), lam=1.0))(jnp.array(1e4))
    assert bool(jnp.isfinite(big)) and bool(jnp.isfinite(grad)) and float(grad) > 0


def test_make_train_value_checks_inputs():
    """Wrong value-net output shapes and bad lam are named at trace time (no compile)."""
    g = toys.default_gmm()
    proc = D.vp_process(toys.gmm_denoiser, D.vp_schedule(4), (2,))
    w = jnp.array([1.0, 0.5])

    def fit(apply, out_dim, lam):
        return train.make_train_value(
            train.ValueTrainConfig(lam=lam, num_rollouts=8, steps=2, batch_size=4),
            apply,
            partial(train.mlp_init, dim=2, hidden=8, depth=1, out_dim=out_dim),
            proc,
            g,
            toys.linear_reward(w),
        )

    with pytest.raises(ValueError, match=r"shape \(\) per sample \(scalar\)"):
        jax.eval_shape(fit(train.mlp_apply, 1, None), jax.random.key(0))
    with pytest.raises(ValueError, match=r"shape \(2,\) per sample \(mean and soft heads\)"):
        jax.eval_shape(fit(train.scalar_mlp_apply, 1, 1.0), jax.random.key(0))
    with pytest.raises(ValueError, match="lam must be None"):
        fit(train.mlp_apply, 2, -1.0)
    out = jax.eval_shape(fit(train.mlp_apply, 2, 1.0), jax.random.key(0))
    assert out[0]["offset"].shape == () and out[1].shape == (2,)


@pytest.mark.slow
def test_learned_soft_value_matches_exact_gmm_soft_value(fast_jit):
    """SVDD-MC soft value regressed on rollouts of the exact-denoiser sampler vs the closed form.

    The closed form (toys.gmm_soft_value_linear) is the continuous-time value; the T = 50 sampler's
    own law differs a little (its rare high-reward mode is under-weighted), which shows as a
    per-step constant, irrelevant to SVDD's selection among candidates of one step. So the check is
    on values centred per step: the soft head must follow the closed form much better than the
    mean value w.E[x0 | x_t] (SVDD-PM's value) does where they differ, and the mean head must
    follow w.E[x0 | x_t].
    """
    g = toys.default_gmm()
    T, lam = 50, 1.0
    sched = D.vp_schedule(T)
    proc = D.vp_process(toys.gmm_denoiser, sched, (2,))
    w = jnp.array([1.0, 0.5])
    fit = train.make_train_value(
        train.ValueTrainConfig(lam=lam, num_rollouts=4096, steps=3000, batch_size=256, lr=3e-3),
        train.two_mlp_apply,
        partial(train.two_mlp_init, dim=2, hidden=64, depth=2),
        proc,
        g,
        toys.linear_reward(w),
    )
    params, _ = fast_jit(fit)(jax.random.key(1))
    value_fn = train.value_fn_from(train.two_mlp_apply, T)
    paths = fast_jit(jax.vmap(lambda k: D.sample_trajectory(k, g, proc)))(
        jax.random.split(jax.random.key(5), 512)
    )

    def centred_err(a, b):
        d = np.asarray(a - b)
        return float(np.mean(np.abs(d - d.mean())))

    exact_fn = jax.vmap(toys.gmm_soft_value_linear, in_axes=(None, 0, None, None, None))
    pm_fn = jax.vmap(toys.gmm_denoise_at, in_axes=(None, 0, None))
    soft_fn = jax.vmap(value_fn, in_axes=(None, 0, None))
    head_fn = jax.vmap(train.two_mlp_apply, in_axes=(None, 0, None))
    for n in (37, 25, 12):
        x, ab = paths[:, T - n], sched.alpha_bars[n]
        exact = exact_fn(g, x, ab, w, lam)
        pm = pm_fn(g, x, ab) @ w
        soft = soft_fn(params, x, n)
        mean_head = params["offset"] + head_fn(params["net"], x, n / T)[:, 0]
        assert centred_err(soft, exact) < 0.2, n
        assert float(np.mean(np.abs(soft - exact))) < 0.3, n  # level, incl. the discretisation
        assert centred_err(mean_head, pm) < 0.2, n
        if n == 25:  # where soft and mean values differ most
            assert centred_err(pm, exact) > 0.25
            assert centred_err(soft, exact) < 0.5 * centred_err(pm, exact)


def test_orbax_round_trip(tmp_path):
    p = train.mlp_init(jax.random.key(0), 2, hidden=8, depth=1)
    save_tree(tmp_path / "ckpt", p)
    q = restore_tree(tmp_path / "ckpt")
    jax.tree.map(np.testing.assert_array_equal, p, q)
