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


def test_ddpm_gmm_moments_match_mixture(fast_jit):
    g = toys.default_gmm()
    proc = D.vp_process(toys.gmm_denoiser, D.vp_schedule(40), (2,))
    xs = fast_jit(jax.vmap(lambda k: D.sample(k, g, proc)))(
        jax.random.split(jax.random.key(0), 3000)
    )
    mean, cov = toys.gmm_moments(g)
    # standard error of the mean is ~sqrt(4/3000) = 0.04
    np.testing.assert_allclose(xs.mean(0), mean, atol=0.15)
    np.testing.assert_allclose(np.cov(np.asarray(xs).T), cov, atol=0.35)
    # mixture weights: quadrant occupancy
    quad = np.asarray((xs[:, 0] > 0) * 1 + (xs[:, 1] > 0) * 2)
    np.testing.assert_allclose(np.bincount(quad, minlength=4) / len(quad), g.weights, atol=0.04)


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
    np.testing.assert_allclose(freq, expect, atol=0.012)
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
