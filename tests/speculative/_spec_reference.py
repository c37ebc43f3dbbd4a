"""Float64 NumPy references for the selection schemes, written from the papers' definitions.

They share no code with ``jaxsel.speculative``: each returns the output law given the drafts,
``(P(out = y), P(out = y, accepted))``, with the scheme's randomness summed out by hand.
"""

from __future__ import annotations

import itertools

import numpy as np


def _residual(r, q):
    d = np.maximum(r - q, 0.0)
    return d / d.sum() if d.sum() > 0 else r


def _accept(t, q):
    return min(1.0, t / q) if q > 0 else float(t > 0)


def rows(q, k):
    q = np.asarray(q, np.float64)
    return np.broadcast_to(q, (k, q.shape[-1])) if q.ndim == 1 else q


def speculative(p, q, x):
    return recursive_rejection(p, q, x)


def recursive_rejection(p, q, x, valid=None):
    p = np.asarray(p, np.float64)
    q = rows(q, len(x))
    valid = np.ones(len(x), bool) if valid is None else valid
    acc, r, stay = np.zeros_like(p), p.copy(), 1.0
    for i, xi in enumerate(x):
        if not valid[i]:
            continue
        a = _accept(r[xi], q[i, xi])
        acc[xi] += stay * a
        stay *= 1.0 - a
        r = _residual(r, q[i])
    return acc + stay * r, acc


def spectr_rho(p, q, k):
    def f(rho):
        beta = np.minimum(p / rho, q).sum()
        return rho * beta - 1.0 + (1.0 - beta) ** k

    lo, hi = 1.0, float(max(k, 1))
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if f(mid) >= 0 else (mid, hi)
    return hi


def k_sequential(p, q, x, valid=None):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    q = q[0] if q.ndim == 2 else q  # i.i.d. drafts: one law
    valid = np.ones(len(x), bool) if valid is None else valid
    k = int(valid.sum())
    rho = spectr_rho(p, q, k)
    alpha = np.minimum(p / rho, q)
    beta = alpha.sum()
    c = (1.0 - (1.0 - beta) ** k) / beta if beta > 0 else k
    res = np.maximum(p - c * alpha, 0.0)
    res = res / res.sum() if res.sum() > 0 else p
    acc, stay = np.zeros_like(p), 1.0
    for i, xi in enumerate(x):
        if valid[i]:
            a = _accept(p[xi] / rho, q[xi])
            acc[xi] += stay * a
            stay *= 1.0 - a
    return acc + stay * res, acc


def _select(w, valid):
    w = np.where(valid, w, 0.0)
    if w.sum() > 0:
        return w / w.sum()
    return valid / max(valid.sum(), 1)


def _two_step(p, p_i, x, sel):
    acc = np.zeros_like(p)
    for i, xi in enumerate(x):
        acc[xi] += sel[i] * _accept(p[xi], p_i[xi])
    return acc + (1.0 - acc.sum()) * _residual(p, p_i), acc


def is_intermediate(q, w, valid):
    """p_I by the definition: sum over every draft tuple of its probability times the choice."""
    k, v = q.shape
    p_i = np.zeros(v)
    live = [i for i in range(k) if valid[i]]
    for xs in itertools.product(range(v), repeat=len(live)):
        prob = np.prod([q[i, xi] for i, xi in zip(live, xs)])
        sel = _select(np.array([w[i, xi] for i, xi in zip(live, xs)]), np.ones(len(live), bool))
        for s, xi in zip(sel, xs):
            p_i[xi] += prob * s
    return p_i


_INTERMEDIATE_CACHE: dict = {}


def _cached_intermediate(q, w, valid):
    key = (q.tobytes(), w.tobytes(), valid.tobytes(), q.shape)
    if key not in _INTERMEDIATE_CACHE:
        _INTERMEDIATE_CACHE[key] = is_intermediate(q, w, valid)
    return _INTERMEDIATE_CACHE[key]


def importance(p, q, x, weights=None, valid=None):
    p = np.asarray(p, np.float64)
    q = rows(q, len(x))
    valid = np.ones(len(x), bool) if valid is None else valid
    if weights is None:
        w = np.where(q > 0, p / np.where(q > 0, q, 1.0), 0.0)
    else:
        w = rows(weights, len(x))
    p_i = _cached_intermediate(np.ascontiguousarray(q), np.ascontiguousarray(w), valid)
    sel = _select(np.array([w[i, xi] for i, xi in enumerate(x)]), valid)
    return _two_step(p, p_i, x, sel)


def pair_intermediate(q, table):
    q = rows(q, 2)
    v = q.shape[1]
    p_i = np.zeros(v)
    for a in range(v):
        for b in range(v):
            p_i[a] += q[0, a] * q[1, b] * table[a, b]
            p_i[b] += q[0, a] * q[1, b] * (1.0 - table[a, b])
    return p_i


def two_step(p, q, x, selection_table):
    table = np.asarray(selection_table, np.float64)
    p = np.asarray(p, np.float64)
    t = table[x[0], x[1]]
    return _two_step(p, pair_intermediate(q, table), x, np.array([t, 1.0 - t]))


def enumerate_law(law_fn, p, q, k, **kw):
    """``(law, accept law, P(out in drafts))`` summed over all draft tuples in float64."""
    q = rows(q, k)
    v = q.shape[1]
    law, acc, hit = np.zeros(v), np.zeros(v), 0.0
    for xs in itertools.product(range(v), repeat=k):
        prob = np.prod([q[i, xi] for i, xi in enumerate(xs)])
        lx, ax = law_fn(p, q, np.array(xs), **kw)
        law += prob * lx
        acc += prob * ax
        hit += prob * lx[list(set(xs))].sum()
    return law, acc, hit


def subset_bound(p, q, k):
    """min over every token set S of p(S) + 1 - q(S)^k, by brute force."""
    v = len(p)
    best = 1.0
    for mask in range(1 << v):
        s = np.array([(mask >> j) & 1 for j in range(v)], bool)
        best = min(best, p[s].sum() + 1.0 - q[s].sum() ** k)
    return best


def instances(v: int, n_random: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(p, q)`` pairs in float64: Dirichlet draws, then p == q, disjoint supports, zeros in each."""
    rng = np.random.default_rng(seed)
    out = [
        (rng.dirichlet(np.full(v, 0.7)), rng.dirichlet(np.full(v, 0.7))) for _ in range(n_random)
    ]
    uniform = np.full(v, 1.0 / v)
    half = np.zeros(v)
    half[: v // 2] = 1.0 / (v // 2)
    other = np.zeros(v)
    other[v // 2 :] = 1.0 / (v - v // 2)
    spike = np.zeros(v)
    spike[0] = 1.0
    out += [(uniform, uniform), (half, other), (uniform, half), (half, uniform), (spike, uniform)]
    return out
