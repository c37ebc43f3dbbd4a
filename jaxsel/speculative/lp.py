"""The optimal token-level selection as a linear program (reference only; NumPy and SciPy).

Khisti et al., "Multi-Draft Speculative Sampling: Canonical Architectures and Theoretical Limits",
ICLR 2025 (arXiv:2410.18234), following Sun et al. (SpecTr, arXiv:2310.15141). A selection scheme is
a conditional law ``pi(y | x_1..K)``; the optimal one solves

    maximize   sum_x Q(x) sum_{y in {x_1..x_K}} pi(y | x)
    subject to sum_y pi(y | x) = 1  for every x,      sum_x Q(x) pi(y | x) = p(y)  for every y,
               pi >= 0,

with ``Q(x) = prod_i q_i(x_i)``: ``V^K * V`` variables, so small ``V`` and ``K`` only. Its canonical
two-step form for ``K = 2`` (:func:`optimal_two_step_table_lp`) optimizes the selection table
``beta[a, b]`` of :func:`jaxsel.speculative.two_step_select` instead:

    maximize sum_y t_y  subject to  t_y <= p(y),  t_y <= p_I(y; beta),  0 <= beta <= 1,

which is linear because ``p_I`` is linear in ``beta``. SciPy is imported when a function is called,
never at package import.
"""

from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike


def _linprog():
    try:
        from scipy.optimize import linprog
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the LP reference needs scipy (pip install 'jaxsel[test]')") from err
    return linprog


def _rows(
    target_probs: ArrayLike, draft_probs: ArrayLike, num_drafts: int
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(target_probs, np.float64)
    q = np.asarray(draft_probs, np.float64)
    if p.ndim != 1:
        raise ValueError(f"target_probs must be 1-d [V], got {p.shape=}")
    if q.ndim == 1:
        q = np.broadcast_to(q, (num_drafts, q.shape[0]))
    if q.shape != (num_drafts, p.shape[0]):
        raise ValueError(f"draft_probs must be [V] or [{num_drafts}, {p.shape[0]}], got {q.shape=}")
    if np.any(p < 0) or np.any(q < 0):
        raise ValueError("target_probs and draft_probs must be non-negative")
    # Renormalize in float64: float32 inputs that sum to 1 +- 1e-7 would make the equalities infeasible.
    return p / p.sum(), q / q.sum(axis=1, keepdims=True)


def optimal_acceptance_lp(
    target_probs: ArrayLike, draft_probs: ArrayLike, *, num_drafts: int
) -> tuple[float, np.ndarray]:
    """Solve the token-level LP; returns ``(optimal P(accept), pi [V^K, V])``.

    Rows of ``pi`` follow :func:`jaxsel.speculative.draft_tuples`. ``draft_probs`` is ``[V]``
    (i.i.d. drafts) or ``[K, V]``.
    """
    p, q = _rows(target_probs, draft_probs, num_drafts)
    v = p.shape[0]
    tuples = np.indices((v,) * num_drafts).reshape(num_drafts, -1).T
    n = tuples.shape[0]
    weight = np.prod(q[np.arange(num_drafts)[None, :], tuples], axis=1)
    member = np.any(tuples[:, :, None] == np.arange(v)[None, None, :], axis=1)  # [n, V]
    cost = -(weight[:, None] * member).ravel()
    rows_sum = np.kron(np.eye(n), np.ones((1, v)))  # sum_y pi(y|x) = 1
    rows_law = np.kron(weight[None, :], np.eye(v))  # sum_x Q(x) pi(y|x) = p(y)
    res = _linprog()(
        cost,
        A_eq=np.vstack([rows_sum, rows_law]),
        b_eq=np.concatenate([np.ones(n), p]),
        bounds=(0.0, 1.0),
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    return float(-res.fun), res.x.reshape(n, v)


def optimal_two_step_table_lp(
    target_probs: ArrayLike, draft_probs: ArrayLike
) -> tuple[float, np.ndarray]:
    """Optimal selection table for the two-step scheme with K = 2; returns ``(P(accept), beta [V, V])``.

    ``beta[a, b]`` is the probability of choosing draft 0 when the drafts are ``(a, b)``;
    ``draft_probs`` is ``[V]`` or ``[2, V]``.
    """
    p, q = _rows(target_probs, draft_probs, 2)
    v = p.shape[0]
    nb = v * v  # beta[a, b] at a * v + b, then t_y
    # p_I(y) = q0(y) sum_b q1(b) beta[y, b] + q1(y) sum_a q0(a) (1 - beta[a, y]).
    a_ub = np.zeros((v, nb + v))
    b_ub = np.zeros(v)
    for y in range(v):
        a_ub[y, nb + y] = 1.0
        for b in range(v):
            a_ub[y, y * v + b] -= q[0, y] * q[1, b]
        for a in range(v):
            a_ub[y, a * v + y] += q[0, a] * q[1, y]
        b_ub[y] = q[1, y] * q[0].sum()
    bounds = [(0.0, 1.0)] * nb + [(0.0, float(py)) for py in p]
    cost = np.concatenate([np.zeros(nb), -np.ones(v)])
    res = _linprog()(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    return float(-res.fun), res.x[:nb].reshape(v, v)
