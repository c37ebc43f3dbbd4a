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


def _np_posterior(g, x, ab):
    """p(x0 | x_t) = sum_k gamma_k N(m_k, S_k) in float64, and z with gamma = softmax(z)."""
    w, mus, covs = (np.asarray(a, np.float64) for a in g)
    z, ms, ss = [], [], []
    for wk, mu, S in zip(w, mus, covs):
        C = ab * S + (1 - ab) * np.eye(2)
        r = x - np.sqrt(ab) * mu
        z.append(np.log(wk) + multivariate_normal(np.zeros(2), C).logpdf(r))
        ms.append(mu + np.sqrt(ab) * S @ np.linalg.solve(C, r))
        ss.append(S - ab * S @ np.linalg.solve(C, S))
    z = np.array(z)
    gam = np.exp(z - z.max())
    return gam / gam.sum(), z, np.array(ms), np.array(ss)


U32 = 2.0**-24  # float32 unit roundoff
EXP_ERR = LOG_ERR = 4 * U32  # XLA's float32 exp and log: a few units


def _soft_value_rounding(gam, z, rk, lam):
    """Bound on the float32 rounding of gmm_soft_value_linear = logsumexp(a) / lam at small lam.

    a_k = log_softmax(z)_k + lam r_k (r_k = w.m_k). log_softmax and logsumexp each subtract the
    max (u |z_k - max|), exponentiate (EXP_ERR), add 4 positive terms (3u), take a log (LOG_ERR,
    absolute: the sum is in [1, 4]) and subtract it (u |result|); a_k takes two additions
    (2u |a_k|). These absolute errors in a, weighted by gamma (the gradient of logsumexp), are
    divided by lam. Errors of z and r_k themselves barely move V (dV/dz_k = gamma_k (r_k - E r),
    dV/dr_k = gamma_k): 16u sum_k gamma_k (1 + |z_k| + |r_k|) (1 + |r_k|) covers them and the
    posterior mean's own rounding.
    """
    lse = EXP_ERR + 3 * U32 + LOG_ERR
    log_gamma = z - z.max() - np.log(np.exp(z - z.max()).sum())
    a = log_gamma + lam * rk
    d_log_gamma = U32 * (np.abs(z - z.max()) + np.abs(log_gamma)) + lse
    d_a = d_log_gamma + 2 * U32 * np.abs(a)
    d_lse = (
        gam @ (d_a + U32 * np.abs(a - a.max())) + lse + U32 * np.abs(np.log(gam @ np.exp(lam * rk)))
    )
    small = 16 * U32 * gam @ ((1 + np.abs(z) + np.abs(rk)) * (1 + np.abs(rk)))
    return d_lse / lam + small


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
        # lam -> 0 is the SVDD-PM value w . E[x0 | x_t]. With r = w.x0 under the posterior, the
        # cumulant expansion gives V_lam = E r + lam Var r / 2 + lam^2 k3 / 6 + O(lam^3): at
        # lam = 1e-3 the gap to w . E[x0 | x_t] is lam Var / 2 (up to 2.3e-3 here), to within
        # lam^2 |k3| / 3; float32 adds the rounding of a logsumexp divided by lam (~1e-4).
        lam0 = 1e-3
        small = _soft_value(g, jnp.asarray(x_t), ab, jnp.asarray(w), lam0)
        pm = _denoise(g, jnp.asarray(x_t)[None], jnp.float32(ab))[0] @ w
        gam, z, ms, ss = _np_posterior(g, x_t, ab)
        rk, vk = ms @ w, np.einsum("i,kij,j->k", w, ss, w)
        mean = gam @ rk
        var = gam @ (vk + (rk - mean) ** 2)
        k3 = gam @ ((rk - mean) ** 3 + 3 * (rk - mean) * vk)
        tol = lam0**2 * abs(k3) / 3 + _soft_value_rounding(gam, z, rk, lam0)
        gap = float(small) - float(pm)
        np.testing.assert_allclose(gap, lam0 * var / 2, rtol=0, atol=tol)


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
