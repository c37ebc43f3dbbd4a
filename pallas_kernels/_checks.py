"""Trace-time argument checks shared by the ops (static facts only: ranks, shapes, Python ints)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

GQA_MAPPINGS = ("group", "modulo")


def check_qk(q: Any, k: Any) -> tuple[int, int, int]:
    """``q [Hq, d]`` against ``k [N, Hkv, d]``; returns ``(Hq, Hkv, d)``."""
    if jnp.ndim(q) != 2:
        raise ValueError(f"q must have rank 2 ([Hq, d]), got {jnp.shape(q)=}")
    if jnp.ndim(k) != 3:
        raise ValueError(f"k must have rank 3 ([N, Hkv, d]), got {jnp.shape(k)=}")
    hq, d = q.shape
    _, hkv, dk = k.shape
    if d != dk:
        raise ValueError(f"head dims differ: {q.shape=}, {k.shape=}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"Hq={hq} must be a multiple of Hkv={hkv} (GQA): {q.shape=}, {k.shape=}")
    return hq, hkv, d


def check_kv_len(kv_len: Any, n: int) -> Any:
    """A Python int in ``[0, N]`` (returned as int) or an integer scalar array (clipped int32)."""
    if isinstance(kv_len, bool | np.bool_):
        raise ValueError(f"kv_len must be an integer scalar, got a bool {kv_len!r}")
    if isinstance(kv_len, int | np.integer):
        if not 0 <= int(kv_len) <= n:
            raise ValueError(f"kv_len={int(kv_len)} must lie in [0, N={n}]")
        return int(kv_len)
    dtype = getattr(kv_len, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer) or jnp.ndim(kv_len) != 0:
        raise ValueError(
            f"kv_len must be an integer scalar (vmap for a batch), got {type(kv_len).__name__} "
            f"with dtype={dtype} shape={jnp.shape(kv_len)}"
        )
    return jnp.clip(jnp.asarray(kv_len, jnp.int32), 0, n)


def check_budget(*, top_k: int, n_sink: int, n_local: int, n: int) -> int:
    """The three budget parts are static ints >= 0 summing to at most N; returns the budget."""
    for name, val in (("top_k", top_k), ("n_sink", n_sink), ("n_local", n_local)):
        if not isinstance(val, int | np.integer) or isinstance(val, bool) or val < 0:
            raise ValueError(f"{name} must be a static int >= 0, got {name}={val!r}")
    budget = int(n_sink) + int(top_k) + int(n_local)
    if budget > n:
        raise ValueError(
            f"budget n_sink + top_k + n_local = {n_sink} + {top_k} + {n_local} = {budget} exceeds "
            f"the cache length N={n}"
        )
    return budget


def check_gqa_mapping(gqa_mapping: str) -> None:
    if gqa_mapping not in GQA_MAPPINGS:
        raise ValueError(f"gqa_mapping must be one of {GQA_MAPPINGS}, got {gqa_mapping!r}")


def group_queries(q: jax.Array, hkv: int, gqa_mapping: str) -> jax.Array:
    """``[Hkv, G, d]``: the query heads that read each KV head, in head order within a group.

    "group": head ``h`` reads KV head ``h // G``; "modulo": head ``h`` reads ``h % Hkv``.
    """
    hq, d = q.shape
    g = hq // hkv
    if gqa_mapping == "group":
        return q.reshape(hkv, g, d)
    return q.reshape(g, hkv, d).transpose(1, 0, 2)


def ungroup_heads(x: jax.Array, gqa_mapping: str) -> jax.Array:
    """Inverse of :func:`group_queries` on a per-head result ``[Hkv, G, ...]`` -> ``[Hq, ...]``."""
    hkv, g = x.shape[:2]
    if gqa_mapping == "group":
        return x.reshape(hkv * g, *x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape(hkv * g, *x.shape[2:])
