"""``sparse_decode_attention``: decode attention over a selected token set, dispatching."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from pallas_kernels import _checks, _compat, _dispatch
from pallas_kernels.sparse_decode.config import BlockSizes
from pallas_kernels.sparse_decode.reference import sparse_decode_attention_reference


def _xla(q, k, v, indices, valid, *, scale, gqa_mapping, block_sizes, interpret):
    del block_sizes, interpret
    return sparse_decode_attention_reference(
        q, k, v, indices, valid, scale=scale, gqa_mapping=gqa_mapping
    )


def _mosaic_tpu(q, k, v, indices, valid, *, scale, gqa_mapping, block_sizes, interpret):
    from pallas_kernels.sparse_decode.mosaic_tpu import sparse_decode_pallas

    bs = block_sizes or BlockSizes.get_default(b=indices.shape[0], hkv=k.shape[1])
    return sparse_decode_pallas(
        q, k, v, indices, valid, scale=_checks.resolve_scale(scale, q.shape[-1]),
        gqa_mapping=gqa_mapping, block_sizes=bs, interpret=interpret,
    )  # fmt: skip


def _mosaic_gpu(q, k, v, indices, valid, *, scale, gqa_mapping, block_sizes, interpret):
    from pallas_kernels import _mgpu
    from pallas_kernels.sparse_decode import mosaic_gpu

    interp = _mgpu.interpret_params(interpret)
    _mgpu.require_gpu(interp, "sparse_decode_attention")
    bs = block_sizes or mosaic_gpu.default_block_sizes(indices.shape[0], q.shape[-1])
    return mosaic_gpu.sparse_decode_mosaic_gpu(
        q, k, v, indices, valid, scale=_checks.resolve_scale(scale, q.shape[-1]),
        gqa_mapping=gqa_mapping, block_sizes=bs, interpret=interpret,
    )  # fmt: skip


_IMPLS: dict[str, Callable[..., Any]] = {"xla": _xla}
if _compat.has_pallas_tpu():
    _IMPLS["mosaic_tpu"] = _mosaic_tpu
if _compat.has_mosaic_gpu():
    _IMPLS["mosaic_gpu"] = _mosaic_gpu


def sparse_decode_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    *,
    scale: float | None = None,
    gqa_mapping: str = "group",
    implementation: str | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: Any = False,
) -> jax.Array:
    """Attention of one decode step over the gathered tokens only (flash-decoding over the set).

    ``o_h = sum_{j: valid[j]} softmax_j(scale * q_h . k_{g(h)}[indices[j]]) v_{g(h)}[indices[j]]``;
    same contract as ``jaxsel.attention.sparse_attention`` with one index set shared by all heads.

    Args:
      q: ``[Hq, d]``; k, v: ``[N, Hkv, d]`` caches.
      indices: ``[B]`` int in ``[0, N)`` (e.g. from :func:`pallas_kernels.token_select`).
      valid: ``[B]`` bool; invalid entries get zero weight.
      scale: logit scale, ``None`` for ``1/sqrt(d)``.
      gqa_mapping: "group" or "modulo".
      implementation: ``"xla"``, ``"mosaic_tpu"``, ``"mosaic_gpu"`` (Hopper; bf16/f16 caches on
        the device) or ``None`` (best for the device).
      block_sizes: :class:`BlockSizes` (``block_b`` tokens per split; a multiple of 64 for
        ``"mosaic_gpu"``).
      interpret: run a Pallas backend interpreted on CPU: ``True`` (generic interpreter for
        ``mosaic_tpu``, Mosaic GPU interpreter for ``mosaic_gpu``), ``"tpu"``, ``"gpu"``, or a
        params object.

    Returns:
      ``[Hq, d]`` in ``result_type(q, v)``; zeros for a step with no valid entry.
    """
    _checks.check_qk(q, k)
    if jax.numpy.shape(v) != jax.numpy.shape(k):
        raise ValueError(f"v must have k's shape [N, Hkv, d]: {k.shape=}, {v.shape=}")
    _checks.check_indices(indices, valid)
    _checks.check_gqa_mapping(gqa_mapping)
    return _dispatch.dispatch(
        "sparse_decode_attention", _IMPLS, implementation, q, k, v, indices, valid, scale=scale,
        gqa_mapping=gqa_mapping, block_sizes=block_sizes, interpret=interpret,
    )  # fmt: skip
