"""``topk``: exact row-wise top-k, dispatching over implementations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from pallas_kernels import _compat, _dispatch
from pallas_kernels.topk import xla
from pallas_kernels.topk.config import BlockSizes
from pallas_kernels.topk.radix import order_by_value, topk_set_radix


def _check(x: jax.Array, k: int) -> None:
    if x.ndim < 1:
        raise ValueError(f"x must have rank >= 1, got {x.shape=}")
    if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
        raise ValueError(f"x must be floating (f32, bf16, f16), got {x.dtype=}")
    if not isinstance(k, int) or not 0 < k <= x.shape[-1]:
        raise ValueError(f"k must be an int with 0 < k <= N={x.shape[-1]}, got {k=} ({x.shape=})")


def _rows(fn: Callable[[jax.Array], jax.Array], x: jax.Array, k: int) -> jax.Array:
    flat = x.reshape(-1, x.shape[-1])
    return fn(flat).reshape(*x.shape[:-1], k)


def _set_mosaic_tpu(
    x: jax.Array, k: int, *, block_sizes: BlockSizes | None = None, interpret: Any = False
) -> jax.Array:
    from pallas_kernels.topk.mosaic_tpu import topk_set_pallas

    return _rows(
        lambda f: topk_set_pallas(f, k, block_sizes=block_sizes, interpret=interpret), x, k
    )


def _set_xla(
    x: jax.Array, k: int, *, block_sizes: BlockSizes | None = None, interpret: Any = False
) -> jax.Array:
    del interpret
    return topk_set_radix(x, k, radix_bits=(block_sizes or BlockSizes()).radix_bits)


def _topk_mosaic_tpu(x: jax.Array, k: int, **kw: Any) -> tuple[jax.Array, jax.Array]:
    return order_by_value(x, _set_mosaic_tpu(x, k, **kw))


def _set_mosaic_gpu(
    x: jax.Array, k: int, *, block_sizes: BlockSizes | None = None, interpret: Any = False
) -> jax.Array:
    from pallas_kernels import _mgpu
    from pallas_kernels.topk.mosaic_gpu import topk_set_mosaic_gpu

    _mgpu.require_gpu(_mgpu.interpret_params(interpret), "topk")
    return _rows(
        lambda f: topk_set_mosaic_gpu(f, k, block_sizes=block_sizes, interpret=interpret), x, k
    )


def _topk_mosaic_gpu(x: jax.Array, k: int, **kw: Any) -> tuple[jax.Array, jax.Array]:
    return order_by_value(x, _set_mosaic_gpu(x, k, **kw))


_TOPK: dict[str, Callable[..., Any]] = {
    "xla": xla.topk_xla,
    "xla_radix": xla.topk_xla_radix,
}
_TOPK_SET: dict[str, Callable[..., Any]] = {"xla": _set_xla, "xla_radix": _set_xla}
if _compat.has_pallas_tpu():
    _TOPK["mosaic_tpu"] = _topk_mosaic_tpu
    _TOPK_SET["mosaic_tpu"] = _set_mosaic_tpu
if _compat.has_mosaic_gpu():
    _TOPK["mosaic_gpu"] = _topk_mosaic_gpu
    _TOPK_SET["mosaic_gpu"] = _set_mosaic_gpu


def topk(
    x: jax.Array,
    k: int,
    *,
    implementation: str | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: Any = False,
) -> tuple[jax.Array, jax.Array]:
    """Exact top-``k`` of each row (last axis), sorted descending, ties to the lower index.

    Same contract as ``lax.top_k`` (IEEE total order: ``-0.0 < +0.0``). The Pallas backends find
    the k-th largest value by radix select over order-preserving int32 keys (per-digit histograms
    counted with compares), take the ties with the lowest indices, compact, and sort only the ``k``
    winners.

    Args:
      x: ``[..., N]`` f32 / bf16 / f16.
      k: number of entries, ``0 < k <= N`` (static).
      implementation: ``"xla"`` (``lax.top_k``), ``"xla_radix"`` (radix select in plain JAX),
        ``"mosaic_tpu"`` (Pallas kernel), ``"mosaic_gpu"`` (radix passes as a Mosaic GPU kernel;
        ``block_rows`` a multiple of 64), or ``None`` for the best one on this device.
      block_sizes: tile sizes (:class:`BlockSizes`), defaults from the shape.
      interpret: run a Pallas backend interpreted on CPU: ``True`` (generic interpreter for
        ``mosaic_tpu``, Mosaic GPU interpreter for ``mosaic_gpu``), ``"tpu"``, ``"gpu"``, or a
        params object.

    Returns:
      ``(values [..., k] of x.dtype, indices [..., k] int32)``.
    """
    _check(x, k)
    return _dispatch.dispatch(
        "topk", _TOPK, implementation, x, k, block_sizes=block_sizes, interpret=interpret
    )


def topk_set(
    x: jax.Array,
    k: int,
    *,
    implementation: str | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: Any = False,
) -> jax.Array:
    """Indices ``[..., k]`` of the same top-``k`` set as :func:`topk`, in ascending index order.

    What selection needs (no value sort at all). ``"xla"`` and ``"xla_radix"`` both run the plain-JAX
    radix select here.
    """
    _check(x, k)
    return _dispatch.dispatch(
        "topk_set", _TOPK_SET, implementation, x, k, block_sizes=block_sizes, interpret=interpret
    )
