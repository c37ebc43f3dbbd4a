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
