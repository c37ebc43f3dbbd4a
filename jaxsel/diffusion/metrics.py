"""Distances from samples to the exact targets of :mod:`jaxsel.diffusion.toys` (host-side NumPy).

:func:`sliced_w1_to_gmm` needs scipy (installed with the ``data`` and ``test`` extras); it is
imported when the function is called, so ``import jaxsel.diffusion`` does not need it.
"""

from __future__ import annotations

import numpy as np

from jaxsel.diffusion.toys import GMM

__all__ = ["sliced_w1_to_gmm"]

#: The grid on which each projected W1 is integrated: [-15, 15], step 0.005.
GRID = np.linspace(-15.0, 15.0, 6001)


def sliced_w1_to_gmm(x: np.ndarray, target: GMM, *, num_proj: int = 64, seed: int = 0) -> float:
    """Sliced 1-Wasserstein between a point cloud (n, d) and a Gaussian mixture, exactly per slice.

    The directions are ``num_proj`` draws, uniform on the unit sphere (normalised standard
    normals from ``np.random.default_rng(seed)``: the same directions for every call with the same
    ``seed`` and ``d``). Each projection u of the mixture is the 1D mixture
    sum_k pi_k N(u.mu_k, u'Sigma_k u), so W1 = integral |F_emp(z) - F(z)| dz is computed against
    the exact CDF (no reference-sample noise; the only noise is the n samples themselves) by a
    Riemann sum on :data:`GRID`: projections must lie well inside [-15, 15], and each atom of the
    point cloud adds at most its weight times the step 0.005 of error. The result is the mean over
    the directions, an estimate of E_u W1(u.x, u.target) for u uniform on the sphere.
    """
    from scipy.special import ndtr

    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be a point cloud (n, d), got shape {x.shape}")
    wts, mus, covs = (np.asarray(a, np.float64) for a in target)
    if mus.ndim != 2 or mus.shape[1] != x.shape[1]:
        raise ValueError(f"target means must be (K, {x.shape[1]}) like x, got {mus.shape}")
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(num_proj, x.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    z = GRID
    total = 0.0
    for u in dirs:
        m, sd = mus @ u, np.sqrt(np.einsum("i,kij,j->k", u, covs, u))
        cdf = ndtr((z[:, None] - m) / sd) @ wts
        emp = np.searchsorted(np.sort(x @ u), z, side="right") / len(x)
        total += np.abs(emp - cdf).sum() * (z[1] - z[0])
    return float(total / num_proj)
