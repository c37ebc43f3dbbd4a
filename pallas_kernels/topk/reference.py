"""Plain-JAX reference of row-wise top-k with deterministic ties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def topk_reference(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Largest ``k`` entries of each row of ``x`` (last axis), sorted descending; ties to the lower index.

    Order is IEEE total order on the values (as ``lax.top_k``): ``-0.0 < +0.0``; NaNs with the sign
    bit clear rank above ``+inf``, those with it set below ``-inf``.

    Args:
      x: ``[..., N]`` floating array.
      k: ``0 < k <= N``.

    Returns:
      ``(values [..., k], indices [..., k] int32)``.
    """
    keys = sortable_keys(x)
    idx = lax.broadcasted_iota(jnp.int32, keys.shape, keys.ndim - 1)
    # Sorting on (~key, index) is a stable descending sort: ~key reverses the int32 order exactly.
    _, order = lax.sort((~keys, idx), dimension=keys.ndim - 1, num_keys=2)
    indices = order[..., :k]
    return jnp.take_along_axis(x, indices, axis=-1), indices


def sortable_keys(x: jax.Array) -> jax.Array:
    """int32 keys whose signed order is the IEEE total order of ``x`` (f32, bf16 or f16).

    The float is widened to f32 (exact), bitcast to int32 ``b``; negative floats (``b < 0``) get their
    31 magnitude bits flipped so that a larger magnitude gives a smaller key:
    ``key = b ^ 0x7FFFFFFF if b < 0 else b``.
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating array, got {x.dtype=}")
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
