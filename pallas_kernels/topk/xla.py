"""Plain-JAX (XLA) top-k backends."""

from __future__ import annotations

from typing import Any

import jax
from jax import lax

from pallas_kernels.topk.config import BlockSizes
from pallas_kernels.topk.radix import order_by_value, topk_set_radix


def topk_xla(
    x: jax.Array, k: int, *, block_sizes: BlockSizes | None = None, interpret: Any = False
) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` (stable: ties to the lower index on every XLA backend we target)."""
    del block_sizes, interpret
    return lax.top_k(x, k)


def topk_xla_radix(
    x: jax.Array, k: int, *, block_sizes: BlockSizes | None = None, interpret: Any = False
) -> tuple[jax.Array, jax.Array]:
    """Radix select in plain JAX, then a sort of the ``k`` winners only."""
    del interpret
    bits = (block_sizes or BlockSizes()).radix_bits
    return order_by_value(x, topk_set_radix(x, k, radix_bits=bits))
