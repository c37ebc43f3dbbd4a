"""Flax NNX wrapper around :func:`jaxsel.pool.soft_pool`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

from jaxsel.pool.softpool import Gradient, Implementation, Padding, soft_pool

__all__ = ["SoftPool"]


class SoftPool(nnx.Module):
    """SoftPool layer: ``y = sum_i softmax(x_R)_i x_i`` per window ``R`` and channel.

    A thin wrapper: the pure function :func:`jaxsel.pool.soft_pool` is the source of truth and
    ``pool_fn`` may replace it (e.g. ``flax.linen.max_pool`` for an ablation). Arguments follow
    ``flax.linen.max_pool``; note that ``strides=None`` means 1 in every dimension.

    Example:
      >>> pool = SoftPool((2, 2), strides=(2, 2))
      >>> pool(jnp.ones((8, 28, 28, 16))).shape
      (8, 14, 14, 16)
    """

    def __init__(
        self,
        window_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: Padding = "VALID",
        *,
        implementation: Implementation = "auto",
        gradient: Gradient = "custom",
        pool_fn: Callable[..., jax.Array] | None = None,
    ):
        self.window_shape = tuple(window_shape)
        self.strides = None if strides is None else tuple(strides)
        if self.strides is not None and len(self.strides) != len(self.window_shape):
            raise ValueError(
                f"strides must have one entry per window dimension, got "
                f"window_shape={self.window_shape}, strides={self.strides}"
            )
        self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))
        self.implementation = implementation
        self.gradient = gradient
        self.pool_fn = pool_fn

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(*batch, *spatial, C) -> (*batch, *out, C)``."""
        if self.pool_fn is not None:
            return self.pool_fn(x, self.window_shape, self.strides, self.padding)
        return soft_pool(
            x,
            self.window_shape,
            self.strides,
            self.padding,
            implementation=self.implementation,
            gradient=self.gradient,
        )
