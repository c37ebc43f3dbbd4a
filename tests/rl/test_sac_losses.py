"""SAC pure pieces: tanh-Gaussian log-prob vs numerical integration, losses vs hand-computed cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.rl import sac


# -- tanh-Gaussian ---------------------------------------------------------------------------------
def _density_on_grid(mean, log_std, low, high, n=200_001):
    """p(a) on a fine grid of the open action interval, via u = atanh((a - bias) / scale)."""
    scale, bias = (high - low) / 2, (high + low) / 2
    a = np.linspace(low, high, n)[1:-1]
    u = np.arctanh((a - bias) / scale)
    logp = jax.vmap(
        lambda ui: sac.tanh_gaussian_log_prob(
            ui[None], jnp.array([mean]), jnp.array([log_std]), low=low, high=high
        )
    )(jnp.asarray(u, jnp.float32))
    return a, np.exp(np.asarray(logp, np.float64))


@pytest.mark.parametrize(
    ("mean", "log_std", "low", "high"),
    [(0.3, -0.5, -1.0, 1.0), (-1.0, 0.2, -2.0, 2.0), (0.5, -1.0, 0.0, 3.0)],
)
def test_log_prob_integrates_to_one_and_matches_samples(mean, log_std, low, high):
    a, p = _density_on_grid(mean, log_std, low, high)
    # Trapezoid rule on the action interval: a density integrates to 1.
    np.testing.assert_allclose(np.trapezoid(p, a), 1.0, atol=2e-3)
    # Its mean agrees with the mean of reparameterised samples.
    keys = jax.random.split(jax.random.key(0), 100_000)
    sample = lambda k: sac.tanh_gaussian_sample(
        k, jnp.array([mean]), jnp.array([log_std]), low=low, high=high
    )[0]
    samples = np.asarray(jax.jit(jax.vmap(sample))(keys))[:, 0]
    assert samples.min() >= low and samples.max() <= high
    np.testing.assert_allclose(np.trapezoid(a * p, a), samples.mean(), atol=0.01 * (high - low))


def test_log_prob_matches_change_of_variables_and_sample():
    """Against the textbook formula log N(u) - sum log(scale * (1 - tanh(u)^2)) in float64."""
    rng = np.random.default_rng(0)
    mean, log_std, u = rng.normal(size=(3, 4))
    low, high = np.array([-2.0, -1, 0, -3]), np.array([2.0, 1, 1, 1])
    scale = (high - low) / 2
    std = np.exp(log_std)
    ref = np.sum(
        -0.5 * ((u - mean) / std) ** 2
        - np.log(std)
        - 0.5 * np.log(2 * np.pi)
        - np.log(scale * (1 - np.tanh(u) ** 2))
    )
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    got = sac.tanh_gaussian_log_prob(f32(u), f32(mean), f32(log_std), low=f32(low), high=f32(high))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    # The sample's log-prob is the log-prob of the pre-tanh point it came from.
    key = jax.random.key(3)
    a, logp = sac.tanh_gaussian_sample(key, f32(mean), f32(log_std), low=f32(low), high=f32(high))
    u_s = f32(mean) + jnp.exp(f32(log_std)) * jax.random.normal(key, (4,))
    np.testing.assert_allclose(a, sac.squash_action(u_s, low=f32(low), high=f32(high)), rtol=1e-6)
    np.testing.assert_allclose(
        logp,
        sac.tanh_gaussian_log_prob(u_s, f32(mean), f32(log_std), low=f32(low), high=f32(high)),
        rtol=1e-6,
    )


def test_log_det_jacobian_is_stable_for_large_u():
    u = jnp.array([-100.0, -20.0, 0.0, 20.0, 100.0])
    got = sac.tanh_log_det_jacobian(u)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[2], 0.0, atol=1e-7)  # log(1 - tanh(0)^2) = 0
    # log(1 - tanh(u)^2) ~ 2 log 2 - 2|u| for large |u|.
    np.testing.assert_allclose(np.asarray(got)[[0, 4]], 2 * math.log(2) - 200.0, rtol=1e-6)
    g = jax.grad(lambda x: sac.tanh_log_det_jacobian(x).sum())(u)
    assert np.all(np.isfinite(g))


# Float32 unit roundoff, and a bound on the relative error of XLA's float32 tanh: measured max
# 5.7u over [-12, 12] under --xla_cpu_max_isa=SSE4_2 (4.7u with AVX2/AVX-512); 16u leaves room
# for other CPUs' polynomial evaluation.
U32 = 2.0**-24
TANH_ERR = 16 * U32


def test_deterministic_action_and_jit_vmap():
    mean = jnp.array([[0.0], [10.0], [-0.5]])
    low, high = jnp.array([-2.0]), jnp.array([2.0])
    det = jax.vmap(lambda m: sac.deterministic_action(m, low=low, high=high))(mean)
    # 2 tanh(m) in float32: only tanh rounds (the scale 2 is exact, the bias 0)
    np.testing.assert_allclose(det[:, 0], 2 * np.tanh([0.0, 10.0, -0.5]), rtol=TANH_ERR)
    ls = jnp.full((3, 1), -0.3)
    keys = jax.random.split(jax.random.key(0), 3)
    f = jax.vmap(lambda k, m, s: sac.tanh_gaussian_sample(k, m, s, low=low, high=high))
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6),
        f(keys, mean, ls),
        jax.jit(f)(keys, mean, ls),
    )


# -- losses: hand-computed small cases ------------------------------------------------------------
def test_soft_q_target_hand_computed():
    # y = 1 + 0.9 * (min(2, 3) - 0.5 * (-1)) = 1 + 0.9 * 2.5 = 3.25
    y = sac.soft_q_target(1.0, 0.9, jnp.array([2.0, 3.0]), -1.0, alpha=0.5)
    np.testing.assert_allclose(y, 3.25, rtol=1e-6)
    # Terminal: discount 0 leaves the reward.
    np.testing.assert_allclose(
        sac.soft_q_target(1.0, 0.0, jnp.array([2.0, 3.0]), -1.0, alpha=0.5), 1.0
    )
    # Min over a subset {1, 2} of three critics: min(3, 4) = 3 -> 1 + 0.9 * (3 + 0.5) = 4.15
    y = sac.soft_q_target(
        1.0,
        0.9,
        jnp.array([2.0, 3.0, 4.0]),
        -1.0,
        alpha=0.5,
        critic_mask=jnp.array([False, True, True]),
    )
    np.testing.assert_allclose(y, 4.15, rtol=1e-6)
    # Band-limited: K=2 perturbed actions -> mean of per-action minima: (2 + 4) / 2 = 3 -> 1 + 0.9 * 3.5
    q = jnp.array([[2.0, 5.0], [6.0, 4.0]])
    np.testing.assert_allclose(
        sac.soft_q_target(1.0, 0.9, q, -1.0, alpha=0.5), 1 + 0.9 * 3.5, rtol=1e-6
    )


def test_critic_actor_temperature_losses_hand_computed():
    # 0.5 * ((1 - 3)^2 + (2 - 3)^2) = 2.5
    np.testing.assert_allclose(sac.critic_loss(jnp.array([1.0, 2.0]), 3.0), 2.5)
    # 0.2 * (-1.5) - min(4, 3) = -3.3
    np.testing.assert_allclose(
        sac.actor_loss(-1.5, jnp.array([4.0, 3.0]), alpha=0.2), -3.3, rtol=1e-6
    )
    # -log_alpha * (log_prob + target_entropy) = -(0.5) * (-1.5 - 1) = 1.25
    np.testing.assert_allclose(
        sac.temperature_loss(jnp.array(0.5), -1.5, target_entropy=-1.0), 1.25
    )
    # d/dlog_alpha = -(log_prob + target): entropy 1.5 > 1 (target) -> gradient > 0 -> alpha shrinks.
    g = jax.grad(lambda la: sac.temperature_loss(la, -1.5, target_entropy=-1.0))(jnp.array(0.5))
    np.testing.assert_allclose(g, 2.5)
    new = sac.polyak_update({"w": jnp.array([0.0, 10.0])}, {"w": jnp.array([1.0, 0.0])}, tau=0.1)
    np.testing.assert_allclose(new["w"], [0.1, 9.0], rtol=1e-6)


def test_no_gradient_through_targets():
    q_next = jnp.array([2.0, 3.0])
    g = jax.grad(lambda qn, lp: sac.soft_q_target(1.0, 0.9, qn, lp, alpha=0.5), argnums=(0, 1))(
        q_next, -1.0
    )
    np.testing.assert_array_equal(g[0], 0.0)
    assert float(g[1]) == 0.0
    # The critic loss differentiates the prediction only.
    gq, gy = jax.grad(sac.critic_loss, argnums=(0, 1))(jnp.array([1.0, 2.0]), 3.0)
    np.testing.assert_allclose(gq, [-2.0, -1.0])
    assert float(gy) == 0.0
    # Actor loss: alpha is a constant; the temperature loss: log-prob is a constant.
    ga = jax.grad(lambda a: sac.actor_loss(-1.5, jnp.array([4.0, 3.0]), alpha=a))(0.2)
    assert float(ga) == 0.0
    glp = jax.grad(lambda lp: sac.temperature_loss(jnp.array(0.5), lp, target_entropy=-1.0))(-1.5)
    assert float(glp) == 0.0


def test_n_step_return_hand_computed():
    r = jnp.array([1.0, 2.0, 4.0])
    f = jnp.zeros(3, bool)
    n_step = jax.jit(lambda *a: sac.n_step_return(*a, gamma=0.5))
    g, d, last = n_step(r, f, f)
    np.testing.assert_allclose([g, d, last], [1 + 1 + 1, 0.125, 2])
    # Terminated at step 1: cut after it, no bootstrap.
    g, d, last = n_step(r, jnp.array([False, True, False]), f)
    np.testing.assert_allclose([g, d, last], [2.0, 0.0, 1])
    # Truncated at step 0: cut after it but still bootstrap from its next observation.
    g, d, last = n_step(r, f, jnp.array([True, False, False]))
    np.testing.assert_allclose([g, d, last], [1.0, 0.5, 0])
    # vmap and jit agree.
    R = jnp.stack([r, r[::-1]])
    T = jnp.array([[False, True, False], [False, False, False]])
    fn = jax.vmap(lambda a, b, c: sac.n_step_return(a, b, c, gamma=0.5))
    jax.tree.map(np.testing.assert_allclose, fn(R, T, ~T & False), jax.jit(fn)(R, T, ~T & False))


def test_losses_under_jit_and_vmap():
    rng = np.random.default_rng(1)
    q_tm1, q_next = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
    r, lp = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
    disc = jnp.full((5,), 0.99)

    def batch_loss(q_tm1, q_next, r, lp):
        y = jax.vmap(lambda *a: sac.soft_q_target(*a, alpha=0.1))(r, disc, q_next, lp)
        return jax.vmap(sac.critic_loss)(q_tm1, y)

    eager = batch_loss(q_tm1, q_next, r, lp)
    f64 = lambda a: np.asarray(a, np.float64)
    min_q, lp64 = f64(q_next).min(-1), f64(lp)
    d = f64(q_tm1) - (f64(r) + 0.99 * (min_q - 0.1 * lp64))[:, None]
    # A float32 evaluation errs from this float64 one by at most: in y = r + 0.99 (min q' - 0.1 lp),
    # four roundings and the float32 constants 0.99 and 0.1, each at most
    # u (|r| + |min q'| + |0.1 lp|); in each d = q - y, one rounding of u |d|; then the squares
    # (u d^2) and the 3-term sum (2u sum d^2). jit and eager run the same operations, but jit may
    # fuse (an FMA) or reorder them, so they differ by up to twice that.
    u = 2.0**-24
    dy = 6 * u * (np.abs(f64(r)) + np.abs(min_q) + np.abs(0.1 * lp64))
    one_eval = (np.abs(d) * (dy[:, None] + u * np.abs(d)) + 3 * u * d**2).sum(-1)
    jitted = f64(jax.jit(batch_loss)(q_tm1, q_next, r, lp))
    np.testing.assert_array_less(np.abs(jitted - f64(eager)), 2 * one_eval)
    np.testing.assert_array_less(np.abs(f64(eager) - 0.5 * np.sum(d**2, -1)), one_eval)


def test_perturb_actions_band_limited():
    a = jnp.array([0.9, -0.2])
    out = sac.perturb_actions(jax.random.key(0), a, num_samples=4096, sigma=0.1, low=-1.0, high=1.0)
    assert out.shape == (4096, 2)
    assert float(out.max()) <= 1.0 and float(out.min()) >= -1.0
    # Unclipped (a = -0.2 is 8 sigma from the bounds), so out[:, 1] is N(-0.2, 0.1^2): its sample
    # std has standard error 0.1 / sqrt(2 (n - 1)) = 1.1e-3. Allow z = 4.89 of them (two-sided
    # false-failure probability 1e-6): rtol 0.054, which still catches a missing or doubled
    # (high - low) / 2 or sigma factor. The key is fixed and threefry gives every machine the same
    # draws, so machines differ only by float rounding (~1e-7 relative), not by the sampling.
    n = out.shape[0]
    np.testing.assert_allclose(np.asarray(out[:, 1]).std(), 0.1, rtol=4.89 / np.sqrt(2 * (n - 1)))
    with pytest.raises(ValueError, match="num_samples"):
        sac.perturb_actions(jax.random.key(0), a, num_samples=0, sigma=0.1)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="q_tm1"):
        sac.critic_loss(jnp.ones((2, 2)), 1.0)
    with pytest.raises(ValueError, match="mean"):
        sac.tanh_gaussian_log_prob(jnp.ones(2), jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="critic_mask"):
        sac.soft_q_target(1.0, 0.9, jnp.ones(3), 0.0, alpha=0.1, critic_mask=jnp.ones(2, bool))
    with pytest.raises(ValueError, match="q_next"):
        sac.soft_q_target(1.0, 0.9, jnp.ones((2, 2, 2)), 0.0, alpha=0.1)


def test_from_noise_is_the_sample_for_that_noise():
    key = jax.random.key(3)
    mean, log_std = jnp.array([0.2, -1.0]), jnp.array([-0.3, 0.5])
    eps = jax.random.normal(key, (2,))
    a, logp = sac.tanh_gaussian_sample(key, mean, log_std, low=-2.0, high=2.0)
    b, logq = sac.tanh_gaussian_from_noise(eps, mean, log_std, low=-2.0, high=2.0)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(logp, logq, rtol=1e-6)
    u = mean + jnp.exp(log_std) * eps
    # the same float32 u on both sides: only tanh rounds (the scale 2 is exact)
    np.testing.assert_allclose(b, 2.0 * np.tanh(np.asarray(u, np.float64)), rtol=TANH_ERR)
