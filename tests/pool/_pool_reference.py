"""Independent SoftPool references for the tests: a float64 NumPy loop and the paper's formula in torch.

Neither shares code with ``jaxsel.pool``: window geometry comes from ``jax.lax.padtype_to_pads`` (the
rule ``flax.linen.max_pool`` uses) or from the explicit pairs.
"""

from __future__ import annotations

import itertools

import numpy as np
from jax import lax


def resolve_pads(spatial, window, strides, padding):
    if isinstance(padding, str):
        return [tuple(p) for p in lax.padtype_to_pads(spatial, window, strides, padding)]
    return [tuple(p) for p in padding]


def numpy_soft_pool(x, window, strides, padding):
    """Float64 loop over windows; the window max is subtracted so that any finite x is fine.

    ``x``: ``(*batch, *spatial, C)``. Padded cells are left out of the window (zero weight).
    """
    x = np.asarray(x, np.float64)
    n = len(window)
    strides = strides or (1,) * n
    batch = x.shape[: x.ndim - n - 1]
    spatial = x.shape[x.ndim - n - 1 : -1]
    pads = resolve_pads(spatial, window, strides, padding)
    out = [(spatial[d] + sum(pads[d]) - window[d]) // strides[d] + 1 for d in range(n)]
    y = np.zeros((*batch, *out, x.shape[-1]))
    lead = (Ellipsis,)
    for o in itertools.product(*map(range, out)):
        cells = []
        for j in itertools.product(*map(range, window)):
            p = [o[d] * strides[d] + j[d] - pads[d][0] for d in range(n)]
            if all(0 <= p[d] < spatial[d] for d in range(n)):
                cells.append(x[(*lead, *p, slice(None))])
        c = np.stack(cells, 0)
        w = np.exp(c - c.max(0))
        y[(*lead, *o, slice(None))] = (w * c).sum(0) / w.sum(0)
    return y


def torch_soft_pool(torch, x_cf, window, strides, pads):
    """The paper's formula, unstabilised, channels-first ``(N, C, *spatial)`` torch float64 tensor.

    y = avgpool(x e^x) / avgpool(e^x) on zero-padded e^x and x e^x, so padded cells weigh nothing.
    """
    f = torch.nn.functional
    n = len(window)
    e = torch.exp(x_cf)
    num, den = x_cf * e, e
    flat = [v for lo_hi in reversed(pads) for v in lo_hi]  # F.pad wants the last dim first
    if any(flat):
        num, den = f.pad(num, flat), f.pad(den, flat)
    pool = {1: f.avg_pool1d, 2: f.avg_pool2d, 3: f.avg_pool3d}[n]
    return pool(num, window, strides) / pool(den, window, strides)


# Float32 unit roundoff; a bound on the relative error of XLA's float32 exp (a few units); the
# smallest normal float32 (exp may flush anything smaller to zero).
U32 = 2.0**-24
EXP_ERR = 4 * U32
TINY32 = 2.0**-126


def _windows(shape, window, strides, padding):
    """(output index, [cell indices]) of every pooling window of an array of this shape."""
    n = len(window)
    strides = strides or (1,) * n
    spatial = shape[len(shape) - n - 1 : -1]
    pads = resolve_pads(spatial, window, strides, padding)
    out = [(spatial[d] + sum(pads[d]) - window[d]) // strides[d] + 1 for d in range(n)]
    for o in itertools.product(*map(range, out)):
        cells = []
        for j in itertools.product(*map(range, window)):
            p = [o[d] * strides[d] + j[d] - pads[d][0] for d in range(n)]
            if all(0 <= p[d] < spatial[d] for d in range(n)):
                cells.append((Ellipsis, *p, slice(None)))
        yield (Ellipsis, *o, slice(None)), cells


def _window_rounding(c):
    """Float64 weights w, output y, and the float32 error terms eps, ebar, dy of one window c."""
    n = len(c)
    e = np.exp(c - c.max(0))
    w = e / e.sum(0)
    y = (w * c).sum(0)
    eps = EXP_ERR + U32 * (c.max(0) - c)
    ebar = (w * eps).sum(0) + n * U32
    dy = (w * np.abs(c) * (eps + (n + 1) * U32)).sum(0) + np.abs(y) * ebar
    return w, y, eps, ebar, dy


def numpy_soft_pool_bound(x, window, strides, padding, *, input_rounding=False):
    """Per-output bound on |soft_pool(x) - exact| for a float32 evaluation (dy below).

    Per window of n cells, e_j = exp(x_j - m) is off by eps_j = EXP_ERR + u |x_j - m| (relative:
    the exponential, and the rounding of its argument), the normaliser sum_j e_j by
    ebar = sum_j w_j eps_j + n u (n - 1 additions, a division), and y = sum_j e_j x_j / sum_j e_j
    by dy <= sum_j w_j |x_j| (eps_j + (n + 1) u) + |y| ebar (products, additions, the division).
    ``input_rounding``: x is exact and the implementation sees it rounded to float32 (u |x_j|
    each), which moves y by sum_j (dy / dx_j) u |x_j| = sum_j w_j |1 + x_j - y| u |x_j| more.
    Errors of order u^2 are left out.
    """
    x = np.asarray(x, np.float64)
    windows = list(_windows(x.shape, window, strides, padding))
    out_shape = tuple(np.max([np.array(o[1:-1]) for o, _ in windows], 0) + 1)
    bound = np.zeros((*x.shape[: x.ndim - len(window) - 1], *out_shape, x.shape[-1]))
    for o, cells in windows:
        c = np.stack([x[at] for at in cells], 0)
        w, y, _, _, dy = _window_rounding(c)
        if input_rounding:
            dy = dy + (w * np.abs(1 + c - y) * U32 * np.abs(c)).sum(0)
        bound[o] = dy
    return bound


def numpy_soft_pool_grad(x, window, strides, padding, ct=None, *, input_rounding=False):
    """The VJP of soft_pool at x with cotangent ``ct`` (default: ones, the gradient of the sum) as
    a float64 loop, and a bound on a float32 evaluation's error.

    Per window (e_j, eps_j, ebar and dy as in :func:`numpy_soft_pool_bound`) with cotangent g,
    the cell's term g w_i (1 + x_i - y) is off by at most
    |g| w_i [(1 + |x_i| + |y|) (eps_i + ebar + 4u) + dy]. The first factor is 1 + |x_i| + |y|,
    not |1 + x_i - y|, because autodiff forms w_i (1 + x_i) and w_i y apart and subtracts them.
    An e_j that underflows adds |g| TINY32 (1 + |x_i| + |y|) absolute. A cell's terms from its c
    windows are summed with c - 1 more roundings, each at most u * sum |terms|.
    ``input_rounding``: x and ct are exact and the implementation sees them rounded to float32
    (u |x_j|, u |g| each). With dw_i/dx_j = w_i (d_ij - w_j) and dy/dx_j = w_j (1 + x_j - y), that
    moves the term by |g| w_i [u |x_i| (|1 + x_i - y| + 1) + sum_j w_j u |x_j| (|1 + x_i - y| +
    |1 + x_j - y|)] + u |term|. Errors of order u^2 are left out.
    """
    x = np.asarray(x, np.float64)
    g, bound, abs_sum, count = (np.zeros_like(x) for _ in range(4))
    for o, cells in _windows(x.shape, window, strides, padding):
        c = np.stack([x[at] for at in cells], 0)
        w, y, eps, ebar, dy = _window_rounding(c)
        ct_r = 1.0 if ct is None else np.asarray(ct, np.float64)[o]
        size = 1 + np.abs(c) + np.abs(y)
        term = ct_r * w * (1 + c - y)
        err = np.abs(ct_r) * (w * (size * (eps + ebar + 4 * U32) + dy) + TINY32 * size)
        if input_rounding:
            a = np.abs(1 + c - y)
            wux = (w * U32 * np.abs(c)).sum(0)
            wuxa = (w * U32 * np.abs(c) * a).sum(0)
            err += np.abs(ct_r) * w * (U32 * np.abs(c) * (a + 1) + wux * a + wuxa)
            err += U32 * np.abs(term)
        for i, at in enumerate(cells):
            g[at] += term[i]
            abs_sum[at] += np.abs(term[i])
            count[at] += 1
            bound[at] += err[i]
    bound += np.maximum(count - 1, 0) * U32 * abs_sum
    return g, bound
