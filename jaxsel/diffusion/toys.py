"""Models with ground truth, so steering is measured against the exact tilted target.

(a) Gaussian mixture p(x) = sum_k pi_k N(mu_k, Sigma_k). Under the VP forward process
    p_t(x) = sum_k pi_k N(x; sqrt(abar) mu_k, C_k),  C_k = abar Sigma_k + (1 - abar) I,
and the posterior mean (the optimal x0-denoiser) is

    E[x0 | x_t] = sum_k gamma_k(x_t) (mu_k + sqrt(abar) Sigma_k C_k^{-1} (x_t - sqrt(abar) mu_k)),

with gamma_k the component responsibilities under p_t. For a linear reward r(x) = w.x,

    exp(lambda w.x) N(x; mu, Sigma) = N(x; mu + lambda Sigma w, Sigma) exp(lambda w.mu + lambda^2 w'Sigma w/2),

so the tilted target exp(lambda r) p / Z is again a mixture: means shifted by lambda Sigma_k w, same
covariances, weights pi_k' ∝ pi_k exp(lambda w.mu_k + lambda^2 w'Sigma_k w / 2).

(d) Markov chain x_1..x_L with initial law pi0 and transitions A. Conditioning on any set of unmasked
tokens, the exact marginals p(x_i | unmasked) follow from forward-backward, which is the optimal
masked-diffusion denoiser. An additive reward r(x) = sum_i c(x_i) (+ sum_i e(x_i, x_{i+1})) tilts the
chain into another (inhomogeneous) Markov chain; for short L we enumerate all V^L sequences and get
the tilted law exactly.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsel.diffusion.samplers import vp_alpha_bar

Array = jax.Array


# --------------------------------------------------------------------------------------------
# (a) Gaussian mixture
# --------------------------------------------------------------------------------------------


class GMM(NamedTuple):
    """weights (K,), means (K, d), covs (K, d, d)."""

    weights: Array
    means: Array
    covs: Array


def default_gmm() -> GMM:
    """A 2D mixture of four anisotropic components used by tests and benchmarks."""
    means = jnp.array([[-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]])
    covs = jnp.array(
        [
            [[0.30, 0.10], [0.10, 0.20]],
            [[0.20, -0.05], [-0.05, 0.30]],
            [[0.25, 0.0], [0.0, 0.25]],
            [[0.15, 0.05], [0.05, 0.35]],
        ]
    )
    weights = jnp.array([0.4, 0.3, 0.2, 0.1])
    return GMM(weights, means, covs)


def _check_gmm(gmm: GMM) -> None:
    K = gmm.weights.shape[0]
    if (
        gmm.means.ndim != 2
        or gmm.means.shape[0] != K
        or gmm.covs.shape
        != (
            K,
            gmm.means.shape[1],
            gmm.means.shape[1],
        )
    ):
        raise ValueError(
            "GMM needs weights (K,), means (K, d), covs (K, d, d); got "
            f"{gmm.weights.shape=}, {gmm.means.shape=}, {gmm.covs.shape=}"
        )


def _mvn_logpdf(x: Array, mean: Array, cov: Array) -> Array:
    d = x.shape[-1]
    chol = jnp.linalg.cholesky(cov)
    z = jax.scipy.linalg.solve_triangular(chol, x - mean, lower=True)
    return -0.5 * (z @ z) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * d * jnp.log(2 * jnp.pi)


def gmm_log_prob(gmm: GMM, x: Array) -> Array:
    """log p(x) for one point x (d,)."""
    _check_gmm(gmm)
    lp = jax.vmap(_mvn_logpdf, in_axes=(None, 0, 0))(x, gmm.means, gmm.covs)
    return jax.nn.logsumexp(lp + jnp.log(gmm.weights))


def gmm_sample(key: Array, gmm: GMM, num: int) -> Array:
    """``num`` exact draws (num, d)."""
    _check_gmm(gmm)
    kc, kz = jax.random.split(key)
    comp = jax.random.choice(kc, gmm.weights.shape[0], (num,), p=gmm.weights)
    z = jax.random.normal(kz, (num, gmm.means.shape[1]))
    chol = jnp.linalg.cholesky(gmm.covs)[comp]
    return gmm.means[comp] + jnp.einsum("nij,nj->ni", chol, z)


def gmm_moments(gmm: GMM) -> tuple[Array, Array]:
    """Mean (d,) and covariance (d, d) of the mixture."""
    mean = gmm.weights @ gmm.means
    dm = gmm.means - mean
    cov = jnp.einsum("k,kij->ij", gmm.weights, gmm.covs) + jnp.einsum(
        "k,ki,kj->ij", gmm.weights, dm, dm
    )
    return mean, cov


def gmm_denoise_at(gmm: GMM, x_t: Array, alpha_bar: Array) -> Array:
    """Exact E[x0 | x_t] (d,) for the VP process at noise level ``alpha_bar``.

    Uses the eigenbasis Sigma_k = U diag(s) U', where C_k = U diag(abar s + 1 - abar) U', so no
    per-sample factorisation is needed (fast under vmap over many particles).
    """
    s, U = jnp.linalg.eigh(gmm.covs)  # (K, d), (K, d, d); independent of x_t
    sa = jnp.sqrt(alpha_bar)
    c = alpha_bar * s + (1.0 - alpha_bar)  # eigenvalues of C_k
    r = jnp.einsum("kji,kj->ki", U, x_t - sa * gmm.means)  # residual in each eigenbasis
    d = x_t.shape[-1]
    lp = -0.5 * jnp.sum(r**2 / c + jnp.log(c), axis=-1) - 0.5 * d * jnp.log(2 * jnp.pi)
    gamma = jax.nn.softmax(lp + jnp.log(gmm.weights))
    m = gmm.means + jnp.einsum("kij,kj->ki", U, sa * s / c * r)
    return gamma @ m


def gmm_soft_value_linear(gmm: GMM, x_t: Array, alpha_bar: Array, w: Array, lam: float) -> Array:
    """Exact soft value (1 / lam) log E[exp(lam w.x0) | x_t] for the VP process (scalar).

    The posterior p(x0 | x_t) is the mixture sum_k gamma_k N(m_k, S_k) with
    S_k = Sigma_k - abar Sigma_k C_k^{-1} Sigma_k, so
        E[exp(lam w.x0) | x_t] = sum_k gamma_k exp(lam w.m_k + lam^2 w'S_k w / 2).
    This is the value SVDD needs to target exp(lam r) p exactly (Li et al. 2024, Sec. 3); SVDD-PM
    uses w.E[x0 | x_t] instead, its lam -> 0 limit. In the eigenbasis Sigma_k = U diag(s) U',
    S_k = U diag(s (1 - abar) / c) U' with c = abar s + 1 - abar.
    """
    s, U = jnp.linalg.eigh(gmm.covs)
    sa = jnp.sqrt(alpha_bar)
    c = alpha_bar * s + (1.0 - alpha_bar)
    r = jnp.einsum("kji,kj->ki", U, x_t - sa * gmm.means)
    d = x_t.shape[-1]
    lp = -0.5 * jnp.sum(r**2 / c + jnp.log(c), axis=-1) - 0.5 * d * jnp.log(2 * jnp.pi)
    log_gamma = jax.nn.log_softmax(lp + jnp.log(gmm.weights))
    m = gmm.means + jnp.einsum("kij,kj->ki", U, sa * s / c * r)
    wu = jnp.einsum("kji,j->ki", U, w)  # w in each eigenbasis
    wsw = jnp.sum(wu**2 * s * (1.0 - alpha_bar) / c, axis=-1)
    return jax.nn.logsumexp(log_gamma + lam * (m @ w) + 0.5 * lam**2 * wsw) / lam


def gmm_denoiser(
    gmm: GMM, x_t: Array, t: Array, *, beta_min: float = 0.1, beta_max: float = 20.0
) -> Array:
    """Closed-form x0-denoiser with the ``denoise_fn(params, x_t, t)`` signature (params = gmm)."""
    return gmm_denoise_at(gmm, x_t, vp_alpha_bar(t, beta_min=beta_min, beta_max=beta_max))


def gmm_tilt_linear(gmm: GMM, w: Array, lam: float) -> GMM:
    """Exact tilted target exp(lam w.x) p(x) / Z as a mixture (see module docstring)."""
    _check_gmm(gmm)
    if w.shape != gmm.means.shape[1:]:
        raise ValueError(f"w must have shape (d,) = {gmm.means.shape[1:]}, got {w.shape=}")
    Sw = gmm.covs @ w
    means = gmm.means + lam * Sw
    logw = jnp.log(gmm.weights) + lam * gmm.means @ w + 0.5 * lam**2 * (Sw @ w)
    return GMM(jax.nn.softmax(logw), means, gmm.covs)


def linear_reward(w: Array):
    """Black-box r(x) = w.x for one point x (d,)."""
    return lambda x: jnp.dot(x, w)


# --------------------------------------------------------------------------------------------
# (d) Markov chain over tokens
# --------------------------------------------------------------------------------------------


class MarkovChain(NamedTuple):
    """init (V,) initial probabilities, trans (V, V) row-stochastic transitions."""

    init: Array
    trans: Array


def default_chain() -> MarkovChain:
    """A sticky 4-token chain (think A, C, G, T) where token 2 is rare: a reward counting it has room."""
    init = jnp.array([0.3, 0.3, 0.1, 0.3])
    trans = jnp.array(
        [
            [0.6, 0.2, 0.05, 0.15],
            [0.2, 0.5, 0.1, 0.2],
            [0.1, 0.2, 0.5, 0.2],
            [0.2, 0.2, 0.05, 0.55],
        ]
    )
    return MarkovChain(init, trans)


def chain_log_prob(chain: MarkovChain, x: Array) -> Array:
    """Exact log p(x) of a full sequence x (L,) int."""
    lp0 = jnp.log(chain.init[x[0]])
    return lp0 + jnp.sum(jnp.log(chain.trans[x[:-1], x[1:]]))


def chain_sample(key: Array, chain: MarkovChain, length: int) -> Array:
    """One exact draw (L,) int32."""
    k0, key = jax.random.split(key)
    x0 = jax.random.categorical(k0, jnp.log(chain.init))

    def body(prev, k):
        nxt = jax.random.categorical(k, jnp.log(chain.trans[prev]))
        return nxt, nxt

    _, rest = lax.scan(body, x0, jax.random.split(key, length - 1))
    return jnp.concatenate([x0[None], rest]).astype(jnp.int32)


def chain_masked_marginals(chain: MarkovChain, z: Array, *, mask_id: int) -> Array:
    """Exact log p(x_i = v | unmasked tokens of z) for every position: (L, V) logits.

    Forward-backward with evidence o_i(v) = 1 if z_i is masked else [v == z_i]; messages are
    renormalised each step so long chains stay finite.
    """
    V = chain.init.shape[0]
    obs = jnp.where((z == mask_id)[:, None], 1.0, jax.nn.one_hot(z, V))

    def fwd(f, o):
        f = (f @ chain.trans) * o
        return f / jnp.sum(f), f / jnp.sum(f)

    f0 = chain.init * obs[0]
    f0 = f0 / jnp.sum(f0)
    _, fs = lax.scan(fwd, f0, obs[1:])
    fs = jnp.concatenate([f0[None], fs])

    def bwd(b, o):
        b = chain.trans @ (o * b)
        return b / jnp.sum(b), b / jnp.sum(b)

    bL = jnp.ones((V,))
    _, bs = lax.scan(bwd, bL, obs[1:], reverse=True)
    bs = jnp.concatenate([bs, bL[None]])
    p = fs * bs
    p = p / jnp.sum(p, axis=-1, keepdims=True)
    return jnp.log(jnp.maximum(p, 1e-30))


def chain_denoiser(chain: MarkovChain, z: Array, t: Array) -> Array:
    """Closed-form masked denoiser with the ``denoise_fn(params, z_t, t)`` signature (params = chain)."""
    del t  # the exact posterior depends on the unmasked tokens only
    return chain_masked_marginals(chain, z, mask_id=chain.init.shape[0])


def token_count_reward(token: int):
    """Black-box additive reward r(x) = #{i : x_i = token}."""
    return lambda x: jnp.sum(x == token).astype(jnp.float32)


def enumerate_sequences(vocab_size: int, length: int) -> np.ndarray:
    """All V^L sequences, (V^L, L) int32, lexicographic (so index = base-V number)."""
    if vocab_size**length > 2**22:
        raise ValueError(f"V^L = {vocab_size}^{length} is too many sequences to enumerate")
    return np.array(list(itertools.product(range(vocab_size), repeat=length)), np.int32)


def sequence_index(x: Array, vocab_size: int) -> Array:
    """Index of x (L,) in :func:`enumerate_sequences` order."""
    L = x.shape[-1]
    return jnp.sum(x * vocab_size ** jnp.arange(L - 1, -1, -1), axis=-1)


def chain_tilted_log_probs(
    chain: MarkovChain, length: int, reward_fn, lam: float
) -> tuple[np.ndarray, Array]:
    """Exact tilted law log [exp(lam r(x)) p(x) / Z] over all sequences; returns (seqs, logq)."""
    seqs = enumerate_sequences(chain.init.shape[0], length)

    @jax.jit  # one compiled program instead of op-by-op dispatch over V^L sequences
    def tilted(chain, xs, lam):
        logits = jax.vmap(chain_log_prob, in_axes=(None, 0))(chain, xs) + lam * jax.vmap(reward_fn)(
            xs
        )
        return logits - jax.nn.logsumexp(logits)

    return seqs, tilted(chain, jnp.asarray(seqs), lam)
