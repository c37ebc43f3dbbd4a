"""Trace-time argument checks, shared by the ops and by :mod:`jaxsel.attention`.

Every check runs on static facts only (ranks, shapes, dtypes, Python ints), so it works under ``jit``
and ``vmap`` and fails before anything is computed, with a message naming the argument and values.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

GQA_MAPPINGS = ("group", "modulo")


def check_rank(x: Any, rank: int, name: str, layout: str) -> None:
    if jnp.ndim(x) != rank:
        raise ValueError(
            f"{name} must have rank {rank} ({layout}), got shape {jnp.shape(x)} (rank {jnp.ndim(x)})"
        )


def check_qk(
    q: Any, k: Any, *, q_name: str = "q", q_layout: str = "[Hq, d]"
) -> tuple[int, int, int]:
    """Checks ``q [..., Hq, d]`` against ``k [N, Hkv, d]``; returns ``(Hq, Hkv, d)``."""
    check_rank(k, 3, "k", "[N, Hkv, d]")
    check_rank(q, len(q_layout.split(",")), q_name, q_layout)
    hq, d = q.shape[-2:]
    _, hkv, dk = k.shape
    if d != dk:
        raise ValueError(f"head dims differ: {q_name}.shape={q.shape}, k.shape={k.shape}")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(
            f"the number of query heads Hq={hq} must be a multiple of Hkv={hkv}, the number of KV "
            f"heads (GQA): {q_name}.shape={q.shape}, k.shape={k.shape}"
        )
    return hq, hkv, d


def check_kv(k: Any, v: Any) -> None:
    check_rank(v, 3, "v", "[N, Hkv, d]")
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"k and v must agree on [N, Hkv]: k.shape={k.shape}, v.shape={v.shape}")


def check_kv_len(kv_len: Any, n: int, name: str = "kv_len") -> Any:
    """``kv_len`` must be an integer scalar (Python int or integer array); a static one in [0, N].

    Returns it as a Python int (static) or an int32 array clipped to [0, N] (traced values cannot be
    checked, so out-of-range ones behave like the nearest end instead of indexing out of range).
    """
    if isinstance(kv_len, bool | np.bool_):
        raise ValueError(f"{name} must be an integer scalar, got a bool {kv_len!r}")
    if isinstance(kv_len, int | np.integer):
        if not 0 <= int(kv_len) <= n:
            raise ValueError(f"{name}={int(kv_len)} must lie in [0, N={n}]")
        return int(kv_len)
    dtype = getattr(kv_len, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"{name} must be an integer scalar (int or integer array), got "
            f"{type(kv_len).__name__} with dtype {dtype}"
        )
    if jnp.ndim(kv_len) != 0:
        raise ValueError(
            f"{name} must be a scalar (vmap over sequences for a batch), got shape "
            f"{jnp.shape(kv_len)}"
        )
    return jnp.clip(jnp.asarray(kv_len, jnp.int32), 0, n)


def check_budget(*, top_k: int, n_sink: int, n_local: int, n: int | None) -> int:
    """Checks the three budget parts (static ints >= 0, sum <= N unless N is None); returns the
    budget."""
    for name, val in (("top_k", top_k), ("n_sink", n_sink), ("n_local", n_local)):
        if not isinstance(val, int | np.integer) or isinstance(val, bool):
            raise ValueError(
                f"{name} must be a static Python int, got {type(val).__name__} {val!r}"
            )
        if val < 0:
            raise ValueError(f"{name} must be >= 0, got {name}={val}")
    budget = int(n_sink) + int(top_k) + int(n_local)
    if n is not None and budget > n:
        raise ValueError(
            f"budget n_sink + top_k + n_local = {n_sink} + {top_k} + {n_local} = {budget} is larger "
            f"than the cache length N={n} (k.shape[0])"
        )
    return budget


def check_gqa_mapping(gqa_mapping: str) -> None:
    if gqa_mapping not in GQA_MAPPINGS:
        raise ValueError(f"gqa_mapping must be one of {GQA_MAPPINGS}, got {gqa_mapping!r}")


def check_positive_int(val: Any, name: str) -> None:
    if not isinstance(val, int | np.integer) or isinstance(val, bool) or val < 1:
        raise ValueError(f"{name} must be a Python int >= 1, got {val!r}")


def check_select(
    q: Any,
    k: Any,
    kv_len: Any,
    *,
    top_k: int,
    n_sink: int,
    n_local: int,
    vote_pool: int = 1,
    gqa_mapping: str = "group",
) -> tuple[Any, int]:
    """The arguments of a TokenSelect selection; returns ``(kv_len, budget)`` (see
    :func:`check_kv_len` for the returned ``kv_len``)."""
    check_qk(q, k)
    n = k.shape[0]
    kv_len = check_kv_len(kv_len, n)
    budget = check_budget(top_k=top_k, n_sink=n_sink, n_local=n_local, n=n)
    check_positive_int(vote_pool, "vote_pool")
    check_gqa_mapping(gqa_mapping)
    return kv_len, budget


def check_indices(indices: Any, valid: Any, hq: int | None = None) -> None:
    """``indices``/``valid``: ``[B]`` (shared by all heads) or, where ``hq`` is given, ``[Hq, B]``
    (one set per head)."""
    if hq is None and (jnp.ndim(indices) != 1 or jnp.shape(valid) != jnp.shape(indices)):
        raise ValueError(
            f"indices and valid must be [B] (one set shared by all heads) with the same shape, "
            f"got indices.shape={jnp.shape(indices)}, valid.shape={jnp.shape(valid)}"
        )
    if jnp.ndim(indices) not in (1, 2):
        raise ValueError(
            f"indices must have rank 1 ([B], shared) or 2 ([Hq, B], per head), got shape "
            f"{jnp.shape(indices)}"
        )
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"indices must be integer, got dtype {indices.dtype}")
    if jnp.shape(valid) != jnp.shape(indices):
        raise ValueError(
            f"valid must have the shape of indices: valid.shape={jnp.shape(valid)}, "
            f"indices.shape={jnp.shape(indices)}"
        )
    if jnp.ndim(indices) == 2 and indices.shape[0] != hq:
        raise ValueError(
            f"per-head indices must have Hq={hq} rows, got indices.shape={indices.shape}"
        )


def resolve_scale(scale: float | None, d: int) -> float:
    """``scale``, or ``1/sqrt(d)`` for ``None``."""
    return float(1.0 / np.sqrt(d)) if scale is None else float(scale)
