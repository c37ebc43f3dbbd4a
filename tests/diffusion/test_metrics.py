"""Sliced W1 against cases with a known answer: point masses and a shifted Gaussian.

For a direction u, W1 between two point masses at a and b is |u.(a - b)|, and between N(mu, S) and
N(mu + delta, S) it is |u.delta| (a shift of the same law). Averaged over u uniform on the sphere,
E|u.v| = 2|v|/pi in 2D and |v|/2 in 3D (|u_1| is uniform on [0, 1] on the 2-sphere), with
standard deviations |v| sqrt(1/2 - 4/pi^2) and |v| sqrt(1/12): the Monte-Carlo error of
``num_proj`` directions is that over sqrt(num_proj), and tolerances are 4 of those. The grid
integration adds at most 0.005 (the grid step) per unit of jumping mass and slice.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import ndtr

from jaxsel.diffusion.metrics import GRID, sliced_w1_to_gmm
from jaxsel.diffusion.toys import GMM

STEP = GRID[1] - GRID[0]
SD_2D = math.sqrt(0.5 - 4 / math.pi**2)  # std of |u.v| / |v|, u uniform on the circle
SD_3D = math.sqrt(1 / 12)  # on the 2-sphere


def point_masses(*points, weights=None) -> GMM:
    """A mixture of (numerically) point masses: covariances 1e-12 I."""
    mus = np.atleast_2d(np.asarray(points, np.float64))
    k, d = mus.shape
    w = np.full(k, 1 / k) if weights is None else np.asarray(weights, np.float64)
    return GMM(w, mus, np.tile(1e-12 * np.eye(d), (k, 1, 1)))


def test_1d_point_masses_give_the_distance_and_weights_scale_it():
    # in 1D every direction is +-1, so the sliced W1 is the plain W1, with no Monte-Carlo error
    a, b = 0.3, -1.4
    at_a = np.full((5, 1), a)
    assert sliced_w1_to_gmm(at_a, point_masses([b]), num_proj=4) == pytest.approx(1.7, abs=STEP)
    # all the mass at a against 1/4 at a and 3/4 at b: 3/4 of the mass moves |a - b|
    target = point_masses([a], [b], weights=[0.25, 0.75])
    assert sliced_w1_to_gmm(at_a, target, num_proj=4) == pytest.approx(0.75 * 1.7, abs=STEP)
    # the same proportions as the target: nothing to move
    cloud = np.array([[a], [b], [b], [b]])
    assert sliced_w1_to_gmm(cloud, target, num_proj=4) == pytest.approx(0.0, abs=STEP)


@pytest.mark.parametrize(
    "a, delta, mean_abs, sd",
    [
        ([0.5, 1.0], [1.2, -1.6], 2 * 2.0 / math.pi, 2.0 * SD_2D),
        ([0.0, 0.0, 0.0], [1.0, -2.0, 2.0], 3.0 / 2, 3.0 * SD_3D),
    ],
    ids=["2d", "3d"],
)
def test_point_masses_average_over_uniform_directions(a, delta, mean_abs, sd):
    # Axis-aligned or unnormalised directions would give 1.4 / 1.6 (2D) and 1.67 / 2.39 (3D).
    num_proj = 4000
    a = np.asarray(a)
    got = sliced_w1_to_gmm(a[None], point_masses(a + np.asarray(delta)), num_proj=num_proj, seed=1)
    assert got == pytest.approx(mean_abs, abs=4 * sd / math.sqrt(num_proj) + 2 * STEP)


def test_shifted_gaussian_costs_the_projected_shift():
    rng = np.random.default_rng(3)
    n, num_proj = 4000, 1000
    mu, cov = np.array([0.5, -1.0]), np.array([[1.5, 0.6], [0.6, 0.7]])
    delta = np.array([0.6, 0.8])  # |delta| = 1
    x = rng.multivariate_normal(mu, cov, n)
    same = sliced_w1_to_gmm(x, GMM(np.ones(1), mu[None], cov[None]), num_proj=num_proj, seed=4)
    shifted = GMM(np.ones(1), (mu + delta)[None], cov[None])
    got = sliced_w1_to_gmm(x, shifted, num_proj=num_proj, seed=4)
    # Sampling noise: E W1(empirical_n, N(m, s^2)) ~ sqrt(2 / (pi n)) s int sqrt(Phi (1 - Phi));
    # with the largest projected s it bounds the mean over directions.
    c = quad(lambda z: math.sqrt(ndtr(z) * (1 - ndtr(z))), -np.inf, np.inf)[0]
    floor = math.sqrt(2 / (math.pi * n)) * math.sqrt(np.linalg.eigvalsh(cov).max()) * c
    assert same <= 1.5 * floor
    # per direction, |W1(x, shifted) - |u.delta|| <= W1(x, same) (triangle inequality, exact for
    # the grid sums too, the directions being the same for the same seed)
    tol = same + 4 * SD_2D / math.sqrt(num_proj) + 1e-3
    assert got == pytest.approx(2 / math.pi, abs=tol)


def test_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="means"):
        sliced_w1_to_gmm(np.zeros((3, 2)), point_masses([0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="point cloud"):
        sliced_w1_to_gmm(np.zeros(3), point_masses([0.0]))
