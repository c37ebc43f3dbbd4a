"""SoftPool: exponentially weighted pooling over 1, 2 or 3 (or more) spatial dimensions.

Stergiou, Poppe and Kalliatakis, "Refining activation downsampling with SoftPool", ICCV 2021
(arXiv:2101.00440). Per window R and channel,

    y = sum_{i in R} w_i x_i,      w_i = e^{x_i} / sum_{j in R} e^{x_j},

i.e. the softmax-weighted mean of the window. Its exact gradient is

    dy/dx_i = w_i (1 + x_i - y).

What differs from the authors' code: the weights are computed as
``e^{x_i - m} / sum_j e^{x_j - m}`` with ``m`` the window maximum, so any finite input is safe (the
denominator is >= 1: no overflow and no 0/0); the gradient is the true one above (their CUDA
backward returns only ``w_i``); padded cells get zero weight; any stride; one code path on every
backend; f16/bf16 inputs are accumulated in float32 and the output is cast back.

Two ways to read the windows, both linear maps of the (padded) input, chosen per pass:

- ``"blocks"``: one reshape splits every spatial axis into (blocks of ``stride`` cells); window
  cells are the first ``k`` cells of ``ceil(k / s)`` consecutive blocks. With non-overlapping
  windows (stride >= window) this is a single view, and the backward pass is one elementwise pass
  over the input followed by the inverse reshape: the fast path for the common case.
- ``"slices"`` (the general path): one strided slice per cell offset of the window, each of
  output shape, combined elementwise, so nothing of size ``output * window`` is materialised and
  the forward pass is one fused loop over the output.

``implementation="auto"`` reads the forward pass as slices (the faster on CPU, see
results/pool/bench_softpool_speed.json) and the backward pass as blocks when windows do not
overlap, as slices when they do.

The gradient is a custom VJP that recomputes the weights from the input and the saved per-window
max, softmax denominator and ``y``; it is written in differentiable JAX, so ``grad`` of ``grad`` works.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Literal, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding: TypeAlias = str | Sequence[tuple[int, int]]
Implementation: TypeAlias = Literal["auto", "blocks", "slices"]
Gradient: TypeAlias = Literal["custom", "autodiff"]

__all__ = ["soft_pool", "soft_pool_output_shape"]


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Static description of one pooling call (hashable: used as a non-differentiable argument)."""

    shape: tuple[int, ...]  # full input shape: (*batch, *spatial, channels)
    window: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    out: tuple[int, ...]  # output spatial sizes
    forward: Literal["blocks", "slices"]  # how the forward pass reads the windows
    backward: Literal["blocks", "slices"]  # and the backward pass

    @property
    def n_batch(self) -> int:
        return len(self.shape) - len(self.window) - 1

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[self.n_batch : self.n_batch + len(self.window)]

    @property
    def padded(self) -> bool:
        return any(lo or hi for lo, hi in self.pads)

    @property
    def n_cells(self) -> int:
        return math.prod(self.window)

    @property
    def cell_axes(self) -> tuple[int, ...]:
        """Cell axes of a view, (*batch, o_1, c_1, ..., o_n, c_n, C)."""
        return tuple(self.n_batch + 2 * d + 1 for d in range(len(self.window)))

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (*self.shape[: self.n_batch], *self.out, self.shape[-1])


def _as_int_tuple(value: object, name: str, n: int | None) -> tuple[int, ...]:
    if isinstance(value, int | np.integer) or not isinstance(value, Sequence):
        raise ValueError(
            f"{name} must be a sequence of ints, one per spatial dimension, got {name}={value!r}"
        )
    out = tuple(value)
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in out):
        raise ValueError(f"{name} must contain ints, got {name}={value!r}")
    if n is not None and len(out) != n:
        raise ValueError(
            f"{name} must have one entry per spatial dimension ({n}), got {name}={value!r}"
        )
    if any(v < 1 for v in out):
        raise ValueError(f"{name} entries must be >= 1, got {name}={value!r}")
    return tuple(int(v) for v in out)


def _resolve_pads(
    padding: Padding, spatial: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return tuple((0, 0) for _ in window)
        if mode == "SAME":
            pads = []
            for n, k, s in zip(spatial, window, strides):
                out = -(-n // s)
                total = max((out - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(
            f"padding must be 'VALID', 'SAME' or a sequence of (low, high) pairs, got {padding=}"
        )
    try:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError(
            f"padding must be 'VALID', 'SAME' or a sequence of (low, high) pairs, got {padding=}"
        ) from None
    if len(pads) != len(window):
        raise ValueError(
            f"padding must give one (low, high) pair per spatial dimension ({len(window)}), "
            f"got {padding=}"
        )
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ValueError(f"padding must be non-negative, got {padding=}")
    return pads


def _geometry(
    shape: tuple[int, ...],
    window_shape: Sequence[int],
    strides: Sequence[int] | None,
    padding: Padding,
    implementation: Implementation,
) -> _Geometry:
    window = _as_int_tuple(window_shape, "window_shape", None)
    n = len(window)
    if n == 0:
        raise ValueError(
            f"window_shape must name at least one spatial dimension, got {window_shape=}"
        )
    strides_t = (1,) * n if strides is None else _as_int_tuple(strides, "strides", n)
    if len(shape) < n + 1:
        raise ValueError(
            f"x must have shape (*batch, *spatial, channels) with {n} spatial dimension(s) for "
            f"{window_shape=}, i.e. rank >= {n + 1}; got x.shape={shape}"
        )
    n_batch = len(shape) - n - 1
    spatial = shape[n_batch : n_batch + n]
    pads = _resolve_pads(padding, spatial, window, strides_t)
    out = []
    for d, (size, k, s, (lo, hi)) in enumerate(zip(spatial, window, strides_t, pads)):
        total = size + lo + hi
        if k > total:
            raise ValueError(
                f"window_shape[{d}]={k} is larger than the padded input ({size} + {lo} + {hi} = "
                f"{total}) along spatial dimension {d}; x.shape={shape}, {window_shape=}, "
                f"{padding=}"
            )
        o = (total - k) // s + 1
        # A window lying wholly in the padding has no cell to weigh (0/0): refuse it.
        if k <= lo or (o - 1) * s >= lo + size:
            raise ValueError(
                f"padding {(lo, hi)} along spatial dimension {d} leaves a window with no input "
                f"cell (window {k}, stride {s}, size {size}); use padding smaller than the window"
            )
        out.append(o)
    if implementation == "auto":
        # Measured on CPU (scripts/bench_softpool.py): strided slices make the fastest forward
        # (one fused elementwise pass); for the backward, the reshape is faster when windows do
        # not overlap and the slices' transpose (pads) is faster when they do.
        overlap = any(s < k for k, s in zip(window, strides_t))
        forward, backward = ("slices", "slices") if overlap else ("slices", "blocks")
    elif implementation in ("blocks", "slices"):
        forward = backward = implementation
    else:
        raise ValueError(
            f"implementation must be 'auto', 'blocks' or 'slices', got {implementation=}"
        )
    return _Geometry(tuple(shape), window, strides_t, pads, tuple(out), forward, backward)


def soft_pool_output_shape(
    shape: Sequence[int],
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> tuple[int, ...]:
    """Output shape of :func:`soft_pool` for an input of ``shape`` (same rules as ``max_pool``)."""
    return _geometry(tuple(shape), window_shape, strides, padding, "auto").out_shape


# --------------------------------------------------------------------------- window views
#
# Both ways of reading the windows return a list of "views", each of shape
# (*batch, o_1, c_1, ..., o_n, c_n, C): output positions interleaved with cell axes, so that one
# formula (reduce over the cell axes, then combine the views elementwise) serves both, and so does
# its transpose (jax.linear_transpose of the view map) in the backward pass.


def _valid_1d(geom: _Geometry, d: int, length: int) -> np.ndarray:
    """True where padded position p (0 <= p < length) holds an input cell along dimension d."""
    lo = geom.pads[d][0]
    p = np.arange(length)
    return (p >= lo) & (p < lo + geom.spatial[d])


def _pad(xf: jax.Array, geom: _Geometry, lengths: Sequence[int]) -> jax.Array:
    """Zero-pads low by ``pads[d][0]`` and pads or crops high to ``lengths[d]`` cells."""
    b = geom.n_batch
    config = [(0, 0, 0)] * b
    for size, (lo, _), length in zip(geom.spatial, geom.pads, lengths):
        config.append((lo, length - size - lo, 0))  # negative high padding crops
    config.append((0, 0, 0))
    if all(c == (0, 0, 0) for c in config):
        return xf
    return lax.pad(xf, jnp.zeros((), xf.dtype), config)


def _block_groups(geom: _Geometry) -> tuple[tuple[int, ...], ...]:
    """Per dimension, the cell count of each block row q: min(s, k - q s), q < ceil(k / s)."""
    return tuple(
        tuple(min(s, k - q * s) for q in range(-(-k // s)))
        for k, s in zip(geom.window, geom.strides)
    )


def _block_views(xf: jax.Array, geom: _Geometry) -> list[jax.Array]:
    """Splits every spatial axis into (blocks, stride) by one reshape; view q takes blocks q..q+o-1.

    Window o along a dimension is cells [o s, o s + k), i.e. block rows o, ..., o + ceil(k/s) - 1,
    the last one cut to k - q s cells; with stride >= window there is a single view (no overlap).
    """
    b = geom.n_batch
    groups = _block_groups(geom)
    lengths = [(o + len(g) - 1) * s for o, g, s in zip(geom.out, groups, geom.strides)]
    xp = _pad(xf, geom, lengths)
    split = [*xf.shape[:b]]
    for length, s in zip(lengths, geom.strides):
        split += [length // s, s]
    blocks = xp.reshape(*split, xf.shape[-1])
    views = []
    for qs in itertools.product(*(range(len(g)) for g in groups)):
        start, limit = [0] * b, [*xf.shape[:b]]
        for q, g, o in zip(qs, groups, geom.out):
            start += [q, 0]
            limit += [q + o, g[q]]
        views.append(lax.slice(blocks, (*start, 0), (*limit, xf.shape[-1])))
    return views


def _block_masks(geom: _Geometry) -> list[np.ndarray | None]:
    groups = _block_groups(geom)
    masks = []
    for qs in itertools.product(*(range(len(g)) for g in groups)):
        mask = np.ones((), bool)
        for d, (q, g, o, s) in enumerate(zip(qs, groups, geom.out, geom.strides)):
            pos = (np.arange(o)[:, None] + q) * s + np.arange(g[q])[None, :]
            valid = _valid_1d(geom, d, int(pos.max()) + 1)[pos]
            mask = mask[..., None, None] & valid
        masks.append(None if mask.all() else mask[..., None])
    return masks


def _slice_offsets(geom: _Geometry) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Cell offsets j = q s + r of the window as (phase r, shift q) pairs, grouped by phase."""
    out = []
    for r in itertools.product(*(range(min(k, s)) for k, s in zip(geom.window, geom.strides))):
        shifts = [range(-(-(k - rd) // s)) for rd, k, s in zip(r, geom.window, geom.strides)]
        out += [(r, q) for q in itertools.product(*shifts)]
    return out


def _slice_views(xf: jax.Array, geom: _Geometry) -> list[jax.Array]:
    """One strided slice per cell offset of the window, each (*batch, o_1, 1, ..., o_n, 1, C).

    Offset j = q s + r is read as the phase-r subgrid ``xp[r::s]`` shifted by q. The result is the
    same strided slice, but the transpose (the backward pass) then adds the shifted cotangents on
    each small subgrid and interleaves only ``prod(min(s, k))`` phases back, instead of scattering
    every one of the ``prod(k)`` offsets into the full input (slower to run and to compile).
    """
    b = geom.n_batch
    lengths = [(o - 1) * s + k for o, k, s in zip(geom.out, geom.window, geom.strides)]
    xp = _pad(xf, geom, lengths)
    cells = tuple(b + 2 * d + 1 for d in range(len(geom.window)))
    views, phases = [], {}
    for r, q in _slice_offsets(geom):
        if r not in phases:
            sub = [
                -(-(k - rd) // s) + o - 1
                for rd, k, s, o in zip(r, geom.window, geom.strides, geom.out)
            ]
            limit = [rd + (n - 1) * s + 1 for rd, n, s in zip(r, sub, geom.strides)]
            phases[r] = lax.slice(
                xp,
                (0,) * b + r + (0,),
                (*xp.shape[:b], *limit, xp.shape[-1]),
                (1,) * b + geom.strides + (1,),
            )
        grid = phases[r]
        v = lax.slice(
            grid,
            (0,) * b + q + (0,),
            (*grid.shape[:b], *(qd + o for qd, o in zip(q, geom.out)), grid.shape[-1]),
        )
        views.append(jnp.expand_dims(v, cells))
    return views


def _slice_masks(geom: _Geometry) -> list[np.ndarray | None]:
    masks = []
    for r, q in _slice_offsets(geom):
        mask = np.ones((), bool)
        for d, (rd, qd, o, s) in enumerate(zip(r, q, geom.out, geom.strides)):
            j = qd * s + rd
            valid = _valid_1d(geom, d, j + (o - 1) * s + 1)[j::s]
            mask = mask[..., None, None] & valid[:, None]
        masks.append(None if mask.all() else mask[..., None])
    return masks


def _views(xf: jax.Array, geom: _Geometry, kind: str) -> list[jax.Array]:
    return _block_views(xf, geom) if kind == "blocks" else _slice_views(xf, geom)


def _masks(geom: _Geometry, kind: str) -> list[np.ndarray | None]:
    if not geom.padded:
        n_views = math.prod(map(len, _block_groups(geom))) if kind == "blocks" else geom.n_cells
        return [None] * n_views
    return _block_masks(geom) if kind == "blocks" else _slice_masks(geom)


# --------------------------------------------------------------------------- forward / backward


def _masked_sub(v: jax.Array, shift: jax.Array, mask: np.ndarray | None) -> jax.Array:
    """v - shift, with -inf in padded cells so that exp() gives them exactly zero weight."""
    d = v - shift
    return d if mask is None else jnp.where(mask, d, -jnp.inf)


def _stats(xf: jax.Array, geom: _Geometry, kind: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-window ``(y, m, den)`` in the accumulation dtype: ``den = sum_j e^{x_j - m}``.

    Shapes ``(*batch, o_1, 1, ..., o_n, 1, C)``. ``m`` (the window max) and ``den`` are kept apart
    rather than as ``m + log(den)``: at ``|m| ~ 1e3`` the rounding of that sum alone would cost
    ~1e-5 relative in the weights.
    """
    views = _views(xf, geom, kind)
    masks = _masks(geom, kind)
    cells = geom.cell_axes
    m = functools.reduce(
        jnp.maximum,
        [
            jnp.max(v if mk is None else jnp.where(mk, v, -jnp.inf), axis=cells, keepdims=True)
            for v, mk in zip(views, masks)
        ],
    )
    # The result does not depend on the shift m, so its gradient is exactly zero.
    m = lax.stop_gradient(m)
    den, num = 0.0, 0.0
    for v, mk in zip(views, masks):
        e = jnp.exp(_masked_sub(v, m, mk))
        den = den + jnp.sum(e, axis=cells, keepdims=True)
        num = num + jnp.sum(v * e, axis=cells, keepdims=True)
    return num / den, m, den


def _acc_dtype(dtype: jnp.dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _soft_pool_autodiff(x: jax.Array, geom: _Geometry) -> jax.Array:
    y, _, _ = _stats(x.astype(_acc_dtype(x.dtype)), geom, geom.forward)
    return y.squeeze(geom.cell_axes).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _soft_pool_custom(x: jax.Array, geom: _Geometry) -> jax.Array:
    return _soft_pool_autodiff(x, geom)


def _custom_fwd(x: jax.Array, geom: _Geometry):
    y, m, den = _stats(x.astype(_acc_dtype(x.dtype)), geom, geom.forward)
    return y.squeeze(geom.cell_axes).astype(x.dtype), (x, y, m, den)


def _custom_bwd(geom: _Geometry, res, g: jax.Array):
    """dL/dx_i = sum over windows R containing i of g_R w_i (1 + x_i - y_R)."""
    x, y, m, den = res
    acc = _acc_dtype(x.dtype)
    xf = x.astype(acc)
    g = jnp.expand_dims(g.astype(acc), geom.cell_axes) / den
    kind = geom.backward
    cts = [
        g * jnp.exp(_masked_sub(v, m, mk)) * (1 + v - y)
        for v, mk in zip(_views(xf, geom, kind), _masks(geom, kind))
    ]
    (dx,) = jax.linear_transpose(functools.partial(_views, geom=geom, kind=kind), xf)(cts)
    return (dx.astype(x.dtype),)


_soft_pool_custom.defvjp(_custom_fwd, _custom_bwd)


def soft_pool(
    x: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: Padding = "VALID",
    *,
    implementation: Implementation = "auto",
    gradient: Gradient = "custom",
) -> jax.Array:
    r"""SoftPool: the softmax-weighted mean of every pooling window, per channel.

    .. math::
        y_R = \sum_{i \in R} \frac{e^{x_i}}{\sum_{j \in R} e^{x_j}} x_i, \qquad
        \frac{\partial y_R}{\partial x_i} = w_i (1 + x_i - y_R)

    (Stergiou et al., "Refining activation downsampling with SoftPool", ICCV 2021.) Computed with
    the window maximum subtracted, so it is finite for any finite input; f16/bf16 inputs are
    accumulated in float32 and the result is cast back to ``x.dtype``.

    Arguments follow :func:`flax.linen.max_pool`: channels last, any number of leading batch
    dimensions (including none), ``strides`` defaulting to 1 in every dimension (note: *not* to the
    window, unlike PyTorch), and ``padding`` either ``"VALID"``, ``"SAME"`` or one ``(low, high)``
    pair per spatial dimension. Padded cells get zero weight (they are not zeros that are pooled).

    Args:
      x: ``(*batch, *spatial, channels)`` floating array, ``len(spatial) == len(window_shape)``.
      window_shape: window size per spatial dimension, e.g. ``(2, 2)``.
      strides: step per spatial dimension; ``None`` means ``(1, ..., 1)`` (as in flax).
      padding: ``"VALID"``, ``"SAME"`` or ``((low, high), ...)`` per spatial dimension.
      implementation: ``"auto"`` (see the module docstring), or ``"blocks"`` / ``"slices"`` to read
        the windows that way in both passes; all give the same values.
      gradient: ``"custom"`` (closed-form VJP, recomputes the weights; the default and the faster
        one on CPU, see ``scripts/bench_softpool.py``) or ``"autodiff"``.

    Returns:
      ``(*batch, *out, channels)`` in ``x.dtype``, ``out[d] = (n_d + lo_d + hi_d - k_d) // s_d + 1``.

    Raises:
      ValueError: bad ranks, window larger than the padded input, a window lying wholly in the
        padding, non-floating ``x``, or unknown options.

    Example:
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> soft_pool(x, (2, 2), strides=(2, 2)).shape
      (1, 2, 2, 1)
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"soft_pool needs a floating-point x, got x.dtype={x.dtype}")
    geom = _geometry(tuple(x.shape), window_shape, strides, padding, implementation)
    if gradient == "custom":
        return _soft_pool_custom(x, geom)
    if gradient == "autodiff":
        return _soft_pool_autodiff(x, geom)
    raise ValueError(f"gradient must be 'custom' or 'autodiff', got {gradient=}")
