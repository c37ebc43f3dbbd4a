"""Plain-JAX reference of attention over gathered tokens (``jaxsel.attention.sparse_attention``).

    o_h = sum_{j in S} softmax_j(scale * q_h . k_{g(h)}[i_j]) v_{g(h)}[i_j],   S = {j : valid[j]}

Products in the cache's dtype with f32 accumulation, softmax in f32, probabilities cast to v's dtype
for the value matmul; output in ``result_type(q, v)``; a head with no valid entry gives zeros.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import _checks


def check_indices(indices: jax.Array, valid: jax.Array) -> None:
    if jnp.ndim(indices) != 1 or jnp.shape(valid) != jnp.shape(indices):
        raise ValueError(
            f"indices and valid must be [B] with the same shape, got {jnp.shape(indices)=}, "
            f"{jnp.shape(valid)=}"
        )
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"indices must be integer, got {indices.dtype=}")


def resolve_scale(scale: float | None, d: int) -> float:
    return float(d) ** -0.5 if scale is None else float(scale)


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
    _hq, hkv, d = _checks.check_qk(q, k)
    check_indices(indices, valid)
    scale = resolve_scale(scale, d)
    valid = valid.astype(bool)
    kg, vg = k[indices], v[indices]  # [B, Hkv, d]
    vg = jnp.where(valid[:, None, None], vg, jnp.zeros((), v.dtype))
    qg = _checks.group_queries(q.astype(k.dtype), hkv, gqa_mapping)  # [Hkv, G, d]
    s = jnp.einsum("kgd,bkd->kgb", qg, kg, preferred_element_type=jnp.float32) * scale
    x = jnp.where(valid[None, None, :], s, -jnp.inf)
    m = jnp.max(x, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(x - m)
    z = jnp.sum(e, axis=-1, keepdims=True)
    p = (e / jnp.where(z > 0, z, 1.0)).astype(v.dtype)
    o = jnp.einsum("kgb,bkd->kgd", p, vg, preferred_element_type=jnp.float32)
    return _checks.ungroup_heads(o, gqa_mapping).astype(jnp.result_type(q.dtype, v.dtype))
