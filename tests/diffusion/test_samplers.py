"""Samplers: DDPM/DDIM against their closed forms, masked diffusion against exact chains."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel import diffusion as D
from jaxsel.diffusion import toys


def test_vp_schedule_matches_formula():
    sched = D.vp_schedule(10, beta_min=0.1, beta_max=20.0)
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(sched.alpha_bars, np.exp(-0.1 * t - 0.5 * 19.9 * t**2), rtol=1e-5)
    assert sched.num_steps == 10 and sched.alpha_bars[0] == 1.0


def test_ddpm_step_equals_ddim_eta_one():
    key = jax.random.key(0)
    x_t, x0 = jnp.array([0.3, -1.2, 2.0]), jnp.array([1.0, 0.5, -0.5])
    a = D.ddpm_step(key, x_t, x0, 0.4, 0.7)
    b = D.ddim_step(key, x_t, x0, 0.4, 0.7, eta=1.0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ddim_eta_zero_is_deterministic_and_reaches_x0_hat():
    x_t, x0 = jnp.array([0.3, -1.2]), jnp.array([1.0, 0.5])
    a = D.ddim_step(jax.random.key(0), x_t, x0, 0.4, 0.7, eta=0.0)
    b = D.ddim_step(jax.random.key(1), x_t, x0, 0.4, 0.7, eta=0.0)
    np.testing.assert_allclose(a, b)
    # final step (abar_s = 1) returns x0_hat exactly
    np.testing.assert_allclose(D.ddim_step(jax.random.key(2), x_t, x0, 0.4, 1.0), x0, atol=1e-6)


def test_predict_x0_from_eps_inverts_forward():
    x0 = jnp.array([0.7, -0.2])
    xt, eps = D.vp_marginal(jax.random.key(0), x0, 5, D.vp_schedule(10))
    ab = D.vp_schedule(10).alpha_bars[5]
    np.testing.assert_allclose(D.predict_x0(eps, xt, ab, prediction="eps"), x0, atol=1e-5)
    with pytest.raises(ValueError, match="prediction"):
        D.predict_x0(eps, xt, ab, prediction="v")


# Monte Carlo checks compare a statistic with its expected value within z standard errors, the
# standard error taken from the samples (or the known variance). z is set for a two-sided
# false-failure probability of 1e-6 over all the statistics one test compares (Bonferroni). The
# keys are fixed and threefry draws the same bits on every machine, so machines differ only by
# float rounding of the samples (~1e-6), never by a fresh draw: the tolerance is about the
# statistics, not about the machine.
Z_4 = 5.16  # scipy.stats.norm.isf(0.5e-6 / 4)
Z_9 = 5.31  # scipy.stats.norm.isf(0.5e-6 / 9)

# The 40-step DDPM sampler's own moments minus the mixture's (its discretisation bias: with few
# steps it shrinks the spread, O(1/T)). A property of the algorithm, the same on every machine;
# estimated once from 10^6 samples (keys 1000..1004 x 2e5), with these standard errors.
DDPM40_BIAS = {
    "mean": np.array([-0.0132, -0.0326]),  # s.e. 0.002
    "cov": np.array([[-0.187, -0.0007], [-0.0007, -0.238]]),  # s.e. 0.0023, 0.0036, 0.0034
    "quadrant": np.array([0.0098, 0.0004, -0.0045, -0.0057]),  # s.e. 0.0005
}
DDPM40_BIAS_SE = {"mean": 0.002, "cov": 0.0037, "quadrant": 0.0005}


def _within(got, want, tol):
    np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - want), tol)


def test_ddpm_gmm_moments_match_mixture(fast_jit):
    g = toys.default_gmm()
    proc = D.vp_process(toys.gmm_denoiser, D.vp_schedule(40), (2,))
    n = 30000
    xs = fast_jit(jax.vmap(lambda k: D.sample(k, g, proc)))(jax.random.split(jax.random.key(0), n))
    xs = np.asarray(xs, np.float64)
    mean, cov = (np.asarray(a, np.float64) for a in toys.gmm_moments(g))
    # 9 statistics (2 means, 3 covariances, 4 quadrant frequencies) against the mixture's values
    # plus the sampler's bias, within Z_9 standard errors (the bias estimate's in quadrature).
    # With n = 30000 the tolerances are ~0.06 (mean), ~0.1 (covariance) and ~0.015
    # (quadrants): a mixture weight off by 0.02, or every component mean off by 0.1, fails.
    se = lambda x, key: Z_9 * np.hypot(x.std(0) / np.sqrt(n), DDPM40_BIAS_SE[key])
    _within(xs.mean(0), mean + DDPM40_BIAS["mean"], se(xs, "mean"))
    xc = xs - xs.mean(0)
    prods = (xc[:, :, None] * xc[:, None, :]).reshape(n, 4)
    _within(np.cov(xs.T).ravel(), (cov + DDPM40_BIAS["cov"]).ravel(), se(prods, "cov"))
    # mixture weights: quadrant occupancy
    quad = (xs[:, 0] > 0) * 1 + (xs[:, 1] > 0) * 2
    want = np.asarray(g.weights, np.float64) + DDPM40_BIAS["quadrant"]
    tol = Z_9 * np.hypot(np.sqrt(want * (1 - want) / n), DDPM40_BIAS_SE["quadrant"])
    _within(np.bincount(quad, minlength=4) / n, want, tol)


@pytest.mark.slow
@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_eps_prediction_gives_same_samples_as_x0_prediction(eta, fast_jit):
    g = toys.default_gmm()
    sched = D.vp_schedule(12)

    def eps_fn(params, x, t):
        ab = D.vp_alpha_bar(t)
        return (x - jnp.sqrt(ab) * toys.gmm_denoiser(params, x, t)) / jnp.sqrt(1 - ab)

    keys = jax.random.split(jax.random.key(3), 8)
    p0 = D.vp_process(toys.gmm_denoiser, sched, (2,), eta=eta)
    pe = D.vp_process(eps_fn, sched, (2,), prediction="eps", eta=eta)
    both = fast_jit(jax.vmap(lambda k: (D.sample(k, g, p0), D.sample(k, g, pe))))
    a, b = both(keys)
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_masked_step_probabilities(fast_jit):
    V, mask = 3, 3
    logits = jnp.array([[0.2, 1.0, -0.5], [0.0, 0.0, 0.0]])
    z = jnp.array([mask, 1])
    t, s = 0.6, 0.4
    draws = fast_jit(jax.vmap(lambda k: D.masked_step(k, z, logits, t, s, mask_id=mask)))(
        jax.random.split(jax.random.key(0), 20000)
    )
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    expect = np.concatenate([(0.6 - 0.4) / 0.6 * p, [0.4 / 0.6]])
    freq = np.bincount(np.asarray(draws[:, 0]), minlength=V + 1) / 20000
    # 4 frequencies, each within Z_4 binomial standard errors (0.0075 to 0.017): swapping the
    # keep and unmask probabilities, or a softmax off by 0.02 in any token, fails.
    _within(freq, expect, Z_4 * np.sqrt(expect * (1 - expect) / 20000))
    assert np.all(draws[:, 1] == 1)  # unmasked tokens are carried through
    final = D.masked_step(jax.random.key(1), z, logits, 0.1, 0.0, mask_id=mask)
    assert int(final[0]) != mask  # s = 0 unmasks everything
    with pytest.raises(ValueError, match="logits"):
        D.masked_step(jax.random.key(1), z, logits[0], t, s, mask_id=mask)


def test_masked_sampler_with_exact_marginals_recovers_chain(fast_jit):
    chain = toys.default_chain()
    L, V = 3, 4
    proc = D.masked_process(toys.chain_denoiser, 24, L, V)
    xs = fast_jit(jax.vmap(lambda k: D.sample(k, chain, proc)))(
        jax.random.split(jax.random.key(0), 4000)
    )
    seqs = toys.enumerate_sequences(V, L)
    p = np.exp(np.asarray(jax.vmap(lambda x: toys.chain_log_prob(chain, x))(jnp.asarray(seqs))))
    idx = np.asarray(toys.sequence_index(xs, V))
    emp = np.bincount(idx, minlength=V**L) / len(idx)
    assert 0.5 * np.abs(emp - p).sum() < 0.08


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_steps"):
        D.vp_schedule(0)
    with pytest.raises(ValueError, match="eta"):
        D.vp_process(toys.gmm_denoiser, D.vp_schedule(4), (2,), eta=-1.0)
    proc = D.vp_process(lambda p, x, t: x[:1], D.vp_schedule(4), (2,))
    with pytest.raises(ValueError, match="denoise_fn returned shape"):
        D.sample(jax.random.key(0), None, proc)
    mproc = D.masked_process(lambda p, z, t: jnp.zeros((3, 5)), 4, 3, 4)
    with pytest.raises(ValueError, match="denoise_fn returned shape"):
        D.sample(jax.random.key(0), None, mproc)
