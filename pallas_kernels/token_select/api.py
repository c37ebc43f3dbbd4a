"""``token_select``: TokenSelect's per-decode-step KV selection, dispatching over implementations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import _checks, _compat, _dispatch, _xla_math
from pallas_kernels.token_select.config import BlockSizes
from pallas_kernels.token_select.reference import token_select_reference
from pallas_kernels.topk.api import topk_set


def _xla(
    q: jax.Array,
    k: jax.Array,
    kv_len: Any,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float,
    vote_pool: int,
    gqa_mapping: str,
    axis_name: str | None,
    block_sizes: BlockSizes | None,
    interpret: Any,
) -> tuple[jax.Array, jax.Array]:
    del block_sizes, interpret
    return token_select_reference(
        q, k, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, scale=scale,
        vote_pool=vote_pool, gqa_mapping=gqa_mapping, axis_name=axis_name,
    )  # fmt: skip


def _select(
    votes_fn: Callable[[Any], jax.Array],
    kv_len: Any,
    top_k: int,
    n_sink: int,
    n_local: int,
    vote_pool: int,
    topk_impl: str,
    topk_blocks: Any,
    interpret: Any,
) -> tuple[jax.Array, jax.Array]:
    """The Pallas backends' selection: their votes, then the ``topk_impl`` radix select."""

    def topk(ranked: jax.Array, k: int) -> jax.Array:
        return topk_set(
            ranked, k, implementation=topk_impl, block_sizes=topk_blocks, interpret=interpret
        )

    return _xla_math.select_by_votes(
        votes_fn, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, vote_pool=vote_pool,
        topk_set=topk, use_cond=interpret in (False, True),
    )  # fmt: skip


def _mosaic_tpu(
    q: jax.Array,
    k: jax.Array,
    kv_len: Any,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float,
    vote_pool: int,
    gqa_mapping: str,
    axis_name: str | None,
    block_sizes: BlockSizes | None,
    interpret: Any,
) -> tuple[jax.Array, jax.Array]:
    from pallas_kernels.token_select.mosaic_tpu import ranked_votes_pallas

    hq, hkv, d = q.shape[0], k.shape[1], q.shape[1]
    n = k.shape[0]
    bs = block_sizes or BlockSizes.get_default(n=n, hq=hq, hkv=hkv, d=d)

    def votes_fn(kv: Any) -> jax.Array:
        v = ranked_votes_pallas(
            q, k, jnp.asarray(kv, jnp.int32), n_sink=n_sink, n_local=n_local, scale=float(scale),
            gqa_mapping=gqa_mapping, block_sizes=bs, interpret=interpret,
        )  # fmt: skip
        return v if axis_name is None else lax.psum(v, axis_name)

    return _select(
        votes_fn, kv_len, top_k, n_sink, n_local, vote_pool, "mosaic_tpu", bs.topk, interpret
    )


def _mosaic_gpu(q: jax.Array, k: jax.Array, kv_len: Any, **kw: Any) -> tuple[jax.Array, jax.Array]:
    from pallas_kernels import _mgpu

    _mgpu.require_gpu(_mgpu.interpret_params(kw["interpret"]), "token_select")
    return mosaic_gpu_select(q, k, kv_len, **kw)


def mosaic_gpu_select(
    q: jax.Array,
    k: jax.Array,
    kv_len: Any,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float,
    vote_pool: int,
    gqa_mapping: str,
    axis_name: str | None,
    block_sizes: BlockSizes | None,
    interpret: Any,
) -> tuple[jax.Array, jax.Array]:
    from pallas_kernels import _mgpu
    from pallas_kernels.token_select.mosaic_gpu import default_block_kv, soft_votes_mosaic_gpu

    n, d = k.shape[0], q.shape[1]
    block_kv = block_sizes.block_kv if block_sizes is not None else default_block_kv(n, d)
    interp = _mgpu.interpret_params(interpret)

    def votes_fn(kv: Any) -> jax.Array:
        v = soft_votes_mosaic_gpu(
            q, k, jnp.asarray(kv, jnp.int32), n_sink=n_sink, n_local=n_local, scale=float(scale),
            gqa_mapping=gqa_mapping, block_kv=block_kv, interpret=interp,
        )  # fmt: skip
        return v if axis_name is None else lax.psum(v, axis_name)

    # Top-k over the votes: the plain-JAX radix select (no GPU top-k kernel yet).
    topk_blocks = None if block_sizes is None else block_sizes.topk
    return _select(votes_fn, kv_len, top_k, n_sink, n_local, vote_pool, "xla", topk_blocks, interp)


_IMPLS: dict[str, Callable[..., Any]] = {"xla": _xla}
if _compat.has_pallas_tpu():
    _IMPLS["mosaic_tpu"] = _mosaic_tpu
if _compat.has_mosaic_gpu():
    _IMPLS["mosaic_gpu"] = _mosaic_gpu


def token_select(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    vote_pool: int = 1,
    gqa_mapping: str = "group",
    axis_name: str | None = None,
    implementation: str | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: Any = False,
) -> tuple[jax.Array, jax.Array]:
    """TokenSelect (arXiv:2411.02886): the KV tokens one decode step attends to.

    ``vote[j] = sum_h softmax_{j in C}(scale * q_h . k_{g(h)}[j])`` over the middle candidates
    ``C = {n_sink .. kv_len - n_local - 1}``; keeps the ``n_sink`` first tokens, the ``top_k`` middle
    tokens by vote (ties to the lower index) and the ``n_local`` last valid ones. Same contract as
    ``jaxsel.attention.select_tokens``, including the dense answer (``indices = 0..B-1``,
    ``valid = indices < kv_len``) when ``kv_len <= B = n_sink + top_k + n_local``.

    The Pallas path reads K once in tiles (each tile once for all query heads of its GQA group),
    keeps a per-head online log-sum-exp, then votes from the stored scores in a second pass, and
    runs the radix-select top-k kernel over the votes (no sort).

    Args:
      q: ``[Hq, d]`` scoring query; k: ``[N, Hkv, d]`` cache; kv_len: valid tokens (int scalar).
      top_k, n_sink, n_local: static budget parts, summing to at most N.
      scale: scoring scale (1.0: raw dot products, as the authors' code).
      vote_pool: max-pool window over neighbouring votes (1: off).
      gqa_mapping: "group" (``h // (Hq/Hkv)``) or "modulo" (``h % Hkv``).
      axis_name: mesh axis over which heads are sharded; votes are ``psum``-ed across it.
      implementation: ``"xla"``, ``"mosaic_tpu"``, ``"mosaic_gpu"`` (Hopper: scoring kernel, votes
        and radix top-k in XLA; bf16/f16 caches with N a multiple of 8 on the device) or ``None``
        (best for the device).
      block_sizes: :class:`BlockSizes` (defaults from the shapes).
      interpret: run a Pallas backend interpreted on CPU: ``True`` (generic interpreter for
        ``mosaic_tpu``, Mosaic GPU interpreter for ``mosaic_gpu``), ``"tpu"``, ``"gpu"``, or a
        params object.

    Returns:
      ``(indices [B] int32 ascending, valid [B] bool)``.
    """
    kv_len, _ = _checks.check_select(
        q, k, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local, vote_pool=vote_pool,
        gqa_mapping=gqa_mapping,
    )  # fmt: skip
    return _dispatch.dispatch(
        "token_select", _IMPLS, implementation, q, k, kv_len, top_k=top_k, n_sink=n_sink,
        n_local=n_local, scale=scale, vote_pool=vote_pool, gqa_mapping=gqa_mapping,
        axis_name=axis_name, block_sizes=block_sizes, interpret=interpret,
    )  # fmt: skip
