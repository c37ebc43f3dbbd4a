"""Ground-truth models: closed forms checked against plain NumPy references."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from jaxsel.diffusion import toys


def _np_posterior_mean(g, x, ab):
    """E[x0 | x_t] by the textbook formula with explicit inverses (NumPy)."""
    w, mus, covs = (np.asarray(a, np.float64) for a in g)
    out, logs = [], []
    for mu, S in zip(mus, covs):
        C = ab * S + (1 - ab) * np.eye(2)
        r = x - np.sqrt(ab) * mu
        logs.append(-0.5 * r @ np.linalg.solve(C, r) - 0.5 * np.log(np.linalg.det(C)))
        out.append(mu + np.sqrt(ab) * S @ np.linalg.solve(C, r))
    lg = np.log(w) + np.array(logs)
    gam = np.exp(lg - lg.max())
    return (gam / gam.sum()) @ np.array(out)


# compiled once and shared by the parametrised cases (eager dispatch compiles op by op)
_denoise = jax.jit(jax.vmap(toys.gmm_denoise_at, in_axes=(None, 0, None)))
_soft_value = jax.jit(toys.gmm_soft_value_linear)


@pytest.mark.parametrize("ab", [0.05, 0.5, 0.99])
def test_gmm_denoiser_matches_numpy(ab):
    g = toys.default_gmm()
    xs = np.array([[0.3, -0.4], [2.5, 1.0], [-3.0, 2.0]])
    got = _denoise(g, jnp.asarray(xs), jnp.float32(ab))
    want = np.stack([_np_posterior_mean(g, x, ab) for x in xs])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ab", [0.02, 0.3, 0.9])
def test_gmm_soft_value_matches_grid_posterior(ab):
    """(1/lam) log E[exp(lam w.x0) | x_t] against a grid integral of p(x0) N(x_t; sqrt(ab) x0, 1-ab)."""
    g = toys.default_gmm()
    w, lam = np.array([1.0, 0.5]), 1.5
    grid = np.linspace(-7, 9, 321)
    X, Y = np.meshgrid(grid, grid)
    pts = np.stack([X.ravel(), Y.ravel()], 1)
    wts, mus, covs = (np.asarray(a, np.float64) for a in g)
    logp = np.logaddexp.reduce(
        [np.log(wk) + multivariate_normal(m, c).logpdf(pts) for wk, m, c in zip(wts, mus, covs)]
    )
    for x_t in (np.array([0.3, -0.4]), np.array([1.5, 1.0])):
        log_post = logp - 0.5 * ((x_t - np.sqrt(ab) * pts) ** 2).sum(1) / (1 - ab)
        post = np.exp(log_post - log_post.max())
        post /= post.sum()
        want = np.log(post @ np.exp(lam * pts @ w)) / lam
        got = _soft_value(g, jnp.asarray(x_t), ab, jnp.asarray(w), lam)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
        # lam -> 0 is the SVDD-PM value w . E[x0 | x_t]
        # (lam Var / 2 bias of size ~1e-3 at lam = 1e-3; float32 cancellation ~1e-4)
        small = _soft_value(g, jnp.asarray(x_t), ab, jnp.asarray(w), 1e-3)
        pm = _denoise(g, jnp.asarray(x_t)[None], jnp.float32(ab))[0] @ w
        np.testing.assert_allclose(small, pm, atol=5e-3)


# one grid and one compiled log-density shared by the grid tests
GRID = np.linspace(-8, 10, 361)
GRID_PTS = np.stack([a.ravel() for a in np.meshgrid(GRID, GRID)], 1)
_grid_log_prob = jax.jit(jax.vmap(toys.gmm_log_prob, in_axes=(None, 0)))


def test_gmm_log_prob_integrates_to_one():
    g = toys.default_gmm()
    grid = GRID
    p = np.exp(np.asarray(_grid_log_prob(g, jnp.asarray(GRID_PTS))))
    assert abs(p.sum() * (grid[1] - grid[0]) ** 2 - 1.0) < 1e-3


def test_tilted_gmm_matches_grid_integration():
    """exp(lam w.x) p(x) / Z computed on a grid has the moments of gmm_tilt_linear."""
    g = toys.default_gmm()
    w, lam = jnp.array([1.0, 0.5]), 1.3
    pts = GRID_PTS
    logp = np.asarray(_grid_log_prob(g, jnp.asarray(pts)))
    lt = logp + lam * pts @ np.asarray(w)
    q = np.exp(lt - lt.max())
    q /= q.sum()
    mean = q @ pts
    cov = (pts - mean).T @ ((pts - mean) * q[:, None])
    tilted = toys.gmm_tilt_linear(g, w, lam)
    m2, c2 = toys.gmm_moments(tilted)
    np.testing.assert_allclose(m2, mean, atol=2e-3)
    np.testing.assert_allclose(c2, cov, atol=5e-3)
    with pytest.raises(ValueError, match="w must have shape"):
        toys.gmm_tilt_linear(g, jnp.ones(3), lam)


def _np_chain_marginals(chain, z, mask_id):
    init, A = (np.asarray(a, np.float64) for a in chain)
    V, L = len(init), len(z)
    P = np.zeros((L, V))
    for x in itertools.product(range(V), repeat=L):
        if any(zi != mask_id and zi != xi for zi, xi in zip(z, x)):
            continue
        p = init[x[0]] * np.prod([A[a, b] for a, b in itertools.pairwise(x)])
        for i, xi in enumerate(x):
            P[i, xi] += p
    return P / P.sum(1, keepdims=True)


@pytest.mark.parametrize("z", [[4, 4, 4, 4, 4], [4, 2, 4, 4, 0], [1, 4, 3, 4, 4], [0, 1, 2, 3, 0]])
def test_chain_masked_marginals_match_enumeration(z):
    chain = toys.default_chain()
    got = np.exp(np.asarray(toys.chain_masked_marginals(chain, jnp.array(z), mask_id=4)))
    np.testing.assert_allclose(got, _np_chain_marginals(chain, z, 4), atol=1e-5)


def test_chain_sample_and_tilt(fast_jit):
    chain = toys.default_chain()
    L, V = 4, 4
    sampler = fast_jit(jax.vmap(lambda k: toys.chain_sample(k, chain, L)))
    xs = sampler(jax.random.split(jax.random.key(0), 20000))
    seqs = toys.enumerate_sequences(V, L)
    lp = np.asarray(jax.jit(jax.vmap(toys.chain_log_prob, in_axes=(None, 0)))(chain, seqs))
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-5)
    emp = np.bincount(np.asarray(toys.sequence_index(xs, V)), minlength=V**L) / len(xs)
    assert 0.5 * np.abs(emp - np.exp(lp)).sum() < 0.05
    reward = toys.token_count_reward(2)
    _, logq = toys.chain_tilted_log_probs(chain, L, reward, 0.7)
    r = (seqs == 2).sum(1)
    want = lp + 0.7 * r
    want = want - np.log(np.exp(want).sum())
    np.testing.assert_allclose(logq, want, atol=1e-5)
