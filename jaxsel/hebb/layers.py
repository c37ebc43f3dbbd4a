"""Building blocks of a SoftHebb conv net, channels-last (NHWC), as pure functions.

A block (Journé et al., ICLR 2023, and the authors' ``layer.py``/``hebbconv.py``) is

    x -> BatchNorm (no affine) -> reflect pad -> conv (no bias) = u -> Triangle -> pool

and learns from ``(padded BN output, u)`` with :mod:`jaxsel.hebb.rules`. BatchNorm follows
``torch.nn.BatchNorm2d(affine=False)``: batch statistics (biased variance) while the block is
trained, running statistics (momentum 0.1, unbiased variance) when it is frozen.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsel.hebb import rules

PoolKind = Literal["max", "avg", "soft", "none"]
POOLS: tuple[str, ...] = ("max", "avg", "soft", "none")
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


class BatchNormState(NamedTuple):
    """Running statistics of a BatchNorm without affine parameters: ``mean, var`` of ``(C,)``."""

    mean: jax.Array
    var: jax.Array


def batch_norm_init(channels: int, dtype=jnp.float32) -> BatchNormState:
    return BatchNormState(jnp.zeros((channels,), dtype), jnp.ones((channels,), dtype))


def batch_norm(
    x: jax.Array, state: BatchNormState, *, train: bool
) -> tuple[jax.Array, BatchNormState]:
    """``(x - mean) / sqrt(var + 1e-5)`` over all axes but the last.

    Args:
      x: ``(..., C)``.
      state: running statistics.
      train: use (and fold into the running statistics) the batch statistics.

    Returns:
      the normalised ``x`` and the (possibly updated) state.
    """
    if x.shape[-1] != state.mean.shape[0]:
        raise ValueError(f"batch_norm: {x.shape=} does not end in {state.mean.shape[0]} channels")
    if not train:
        return (x - state.mean) * lax.rsqrt(state.var + BN_EPS), state
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    unbiased = var * (n / max(n - 1, 1))
    new = BatchNormState(
        (1 - BN_MOMENTUM) * state.mean + BN_MOMENTUM * mean,
        (1 - BN_MOMENTUM) * state.var + BN_MOMENTUM * unbiased,
    )
    return (x - mean) * lax.rsqrt(var + BN_EPS), new


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """Reflect-pads the two spatial axes of an NHWC batch by ``pad`` on each side."""
    if pad == 0:
        return x
    if pad >= min(x.shape[1], x.shape[2]):
        raise ValueError(f"reflect padding needs {pad=} < spatial size, got {x.shape=}")
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def pool2d(
    x: jax.Array, *, kind: PoolKind, window: int, stride: int, padding: int = 0
) -> jax.Array:
    """Spatial pooling of an NHWC batch with PyTorch's semantics.

    "max" pads with -inf; "avg" counts the zero padding (``count_include_pad=True``); "soft" is
    SoftPool (Stergiou et al. 2021) from :mod:`jaxsel.pool`, imported lazily; "none" is identity.
    """
    if kind not in POOLS:
        raise ValueError(f"pooling must be one of {POOLS}, got {kind=!r}")
    if kind == "none":
        return x
    if window < 1 or stride < 1 or padding < 0:
        raise ValueError(f"bad pool geometry: {window=}, {stride=}, {padding=}")
    dims = (1, window, window, 1)
    strides = (1, stride, stride, 1)
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    if kind == "max":
        # Separable (rows, then columns): the same maximum, and XLA:CPU runs two 1-D windows
        # faster than one 2-D window (results/hebb/README.md, "Implementation notes").
        rows = ((0, 0), (padding, padding), (0, 0), (0, 0))
        cols = ((0, 0), (0, 0), (padding, padding), (0, 0))
        x = lax.reduce_window(x, -jnp.inf, lax.max, (1, window, 1, 1), (1, stride, 1, 1), rows)
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, window, 1), (1, 1, stride, 1), cols)
    if kind == "avg":
        return lax.reduce_window(x, 0.0, lax.add, dims, strides, pads) / (window * window)
    try:
        from jaxsel.pool import soft_pool
    except ImportError as err:  # pragma: no cover - depends on the pool area being present
        raise ImportError(
            "pooling='soft' needs jaxsel.pool.soft_pool (SoftPool), which is not available"
        ) from err
    return soft_pool(
        x, (window, window), strides=(stride, stride), padding=((padding, padding),) * 2
    )


class ConvBlockOut(NamedTuple):
    """What one block computes: ``out`` (after pooling) and what its plasticity needs."""

    out: jax.Array  # (B, H'', W'', out) after Triangle and pooling
    x_in: jax.Array  # (B, H+2p, W+2p, in) BatchNorm-ed, padded conv input
    u: jax.Array  # (B, H', W', out) linear pre-activation
    bn: BatchNormState


def conv_block(
    x: jax.Array,
    w: jax.Array,
    bn: BatchNormState,
    *,
    train: bool,
    padding: int,
    triangle_power: float,
    pool: PoolKind,
    pool_window: int,
    pool_stride: int,
    pool_padding: int,
    strides: tuple[int, int] = (1, 1),
) -> ConvBlockOut:
    """One SoftHebb conv block, ``x (B, H, W, in)`` -> ``out (B, H'', W'', out)``."""
    xn, bn = batch_norm(x, bn, train=train)
    xp = reflect_pad(xn, padding)
    u = rules.conv2d(xp, w, strides=strides)
    a = rules.triangle(u, power=triangle_power)
    out = pool2d(a, kind=pool, window=pool_window, stride=pool_stride, padding=pool_padding)
    return ConvBlockOut(out, xp, u, bn)
