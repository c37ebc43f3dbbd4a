"""Plain-JAX reference of attention over gathered tokens (``jaxsel.attention.sparse_attention``).

    o_h = sum_{j in S} softmax_j(scale * q_h . k_{g(h)}[i_j]) v_{g(h)}[i_j],   S = {j : valid[j]}

Products in the cache's dtype with f32 accumulation, softmax in f32, probabilities cast to v's dtype
for the value matmul; output in ``result_type(q, v)``; a head with no valid entry gives zeros. The
math is :func:`pallas_kernels._xla_math.gathered_attention`, which ``jaxsel.attention`` runs too.
"""

from __future__ import annotations

import jax

from pallas_kernels import _checks, _xla_math


def sparse_decode_attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    *,
    scale: float | None = None,
    gqa_mapping: str = "group",
) -> jax.Array:
    """Attention of ``q [Hq, d]`` over ``k[indices], v[indices]`` (``[N, Hkv, d]`` caches, ``[B]``).

    ``scale=None`` means ``1/sqrt(d)``. Invalid entries get zero weight (their values are zeroed
    before the matmul, so NaN padding cannot leak). Returns ``[Hq, d]``.
    """
    _, _, d = _checks.check_qk(q, k)
    _checks.check_indices(indices, valid)
    return _xla_math.gathered_attention(
        q, k, v, indices, valid, scale=_checks.resolve_scale(scale, d), gqa_mapping=gqa_mapping
    )
