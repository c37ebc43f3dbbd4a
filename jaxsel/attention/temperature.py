"""Adaptive-temperature softmax (Veličković et al., "softmax is not enough (for sharp
out-of-distribution)", arXiv:2410.01104).

Softmax disperses as the number of items grows, so attention trained at one length blurs at longer
ones. At inference time the logits are sharpened by an entropy-dependent inverse temperature:

    p    = softmax(x),   H = -sum_i p_i log p_i          (nats)
    beta = max(1, -0.037 H^4 + 0.481 H^3 - 2.3 H^2 + 4.917 H - 1.791)   if H > 0.5, else 1
    out  = softmax(beta * x)

The polynomial is the paper's fit; beta >= 1 means it only ever sharpens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels._xla_math import masked_softmax

BETA_POLY = (-0.037, 0.481, -2.3, 4.917, -1.791)
ENTROPY_THRESHOLD = 0.5


def adaptive_inverse_temperature(entropy: jax.Array) -> jax.Array:
    """``beta(H)``: the paper's quartic fit where ``H > 0.5``, clamped to ``>= 1``; 1 elsewhere."""
    entropy = jnp.asarray(entropy, jnp.float32)
    beta = jnp.polyval(jnp.asarray(BETA_POLY, jnp.float32), entropy)
    return jnp.where(entropy > ENTROPY_THRESHOLD, jnp.maximum(beta, 1.0), 1.0)


def adaptive_temperature_softmax(
    logits: jax.Array, axis: int = -1, *, where: jax.Array | None = None
) -> jax.Array:
    """``softmax(beta(H(softmax(x))) * x)`` along ``axis`` (arXiv:2410.01104).

    Args:
      logits: any shape; ``-inf`` entries get probability 0.
      axis: the axis to normalise over.
      where: optional bool mask broadcastable to ``logits``; masked-out entries get probability 0
        and do not count in the entropy.

    Returns:
      float32 probabilities of the shape of ``logits``. Finite for any finite or ``-inf`` logits,
      including bf16/fp16 inputs (computed in f32).

    Example:
      >>> p = adaptive_temperature_softmax(jnp.array([1.0, 1.1, 0.9, 1.0, 5.0]))
    """
    if where is not None:
        where = jnp.broadcast_to(where, jnp.shape(logits))
    x = jnp.asarray(logits, jnp.float32)
    p = masked_softmax(x, where, axis=axis)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    entropy = -jnp.sum(plogp, axis=axis, keepdims=True)
    beta = adaptive_inverse_temperature(entropy)
    # -inf * beta stays -inf (beta >= 1), so masked entries remain masked.
    return masked_softmax(x * beta, where, axis=axis)
