"""TokenSelect's Selection Cache: skip the selection when the query barely moved.

Consecutive decode queries are highly similar, so the selected set changes little from step to
step (arXiv:2411.02886, Sec. 3.3). Per layer and sequence, keep the query ``q*`` at the last real
selection and the tokens it selected; at a new step with query ``q``:

    hit  <=>  a sparse selection is stored  and  kv_len > budget  and  kv_len >= its kv_len
              and  cos(q, q*) = <q, q*> / (|q| |q*|) > threshold          (q flattened over heads)

On a hit the stored sinks and top_k middle tokens are reused and the local window is moved to the
last n_local tokens (the new tokens join; the tokens that left the window are dropped): no key is
read, so the step costs only the sparse attention. On a miss the answer is exactly
:func:`jaxsel.attention.select_tokens`', and it becomes the stored selection.

The stored middle tokens all lie below ``old_kv_len - n_local <= kv_len - n_local``, so the reused
indices stay sorted, unique and disjoint from the new window. Fully jittable: the branch is a
``lax.cond`` (under ``vmap`` both branches run, so the saving needs an unbatched call per sequence
or a batch that hits together; the answer is the same).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsel.attention import _checks
from jaxsel.attention import _sequence_select as sequence
from jaxsel.attention.select import select_tokens


class SelectionCacheState(NamedTuple):
    """Per-(layer, sequence) Selection Cache state. ``B = n_sink + top_k + n_local``.

    Attributes:
      indices: ``[B] int32`` the indices returned at the last step.
      valid: ``[B] bool`` their mask.
      query: ``[Hq, d] float32`` the query at the last real selection.
      kv_len: ``int32`` the kv_len of ``indices``.
      reusable: ``bool`` whether ``indices`` hold a sparse selection (not the initial state, not
        a dense one), i.e. whether a hit is possible.
      hits: ``int32`` number of hits so far; ``steps``: number of calls so far.
    """

    indices: jax.Array
    valid: jax.Array
    query: jax.Array
    kv_len: jax.Array
    reusable: jax.Array
    hits: jax.Array
    steps: jax.Array

    @classmethod
    def init(cls, q: Any, *, top_k: int, n_sink: int, n_local: int) -> SelectionCacheState:
        """Empty state for queries shaped like ``q`` (an array or ``jax.ShapeDtypeStruct [Hq, d]``)."""
        _checks.check_rank(q, 2, "q", "[Hq, d]")
        budget = _checks.check_budget(top_k=top_k, n_sink=n_sink, n_local=n_local, n=None)
        return cls(
            indices=jnp.arange(budget, dtype=jnp.int32),
            valid=jnp.zeros((budget,), bool),
            query=jnp.zeros(q.shape, jnp.float32),
            kv_len=jnp.zeros((), jnp.int32),
            reusable=jnp.zeros((), bool),
            hits=jnp.zeros((), jnp.int32),
            steps=jnp.zeros((), jnp.int32),
        )

    @property
    def hit_rate(self) -> jax.Array:
        return self.hits / jnp.maximum(self.steps, 1)


def query_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity of two queries flattened over heads (f32; 0 if either is zero)."""
    a = a.astype(jnp.float32).ravel()
    b = b.astype(jnp.float32).ravel()
    den = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(den > 0, jnp.dot(a, b) / jnp.where(den > 0, den, 1.0), 0.0)


def cached_select(
    state: SelectionCacheState,
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array | int,
    *,
    threshold: float | jax.Array = 0.9,
    top_k: int,
    n_sink: int,
    n_local: int,
    scale: float = 1.0,
    vote_pool: int = 1,
    gqa_mapping: str = "group",
    implementation: str = "xla",
    seq_axis: str | None = None,
) -> tuple[jax.Array, jax.Array, SelectionCacheState, jax.Array]:
    """:func:`select_tokens` behind the Selection Cache.

    Args:
      state: from :meth:`SelectionCacheState.init` or the previous call.
      q, k, kv_len, top_k, n_sink, n_local, scale, vote_pool, gqa_mapping, implementation: as
        :func:`select_tokens` (the implementation runs the selection on a miss).
      threshold: cosine similarity above which the stored selection is reused (the authors'
        default 0.9); may be traced (e.g. vmapped over thresholds). ``> 1`` never hits.
      seq_axis: the cache is sharded along the sequence over this mesh axis (see
        :func:`select_tokens`); the query and state are replicated, so every shard hits or misses
        together and a miss runs the sequence-sharded selection.

    Returns:
      ``(indices, valid, new_state, hit)``; ``hit`` a bool scalar.
    """
    _checks.check_qk(q, k)
    n = k.shape[0] * (1 if seq_axis is None else sequence.axis_size(seq_axis))
    kv_len = _checks.check_kv_len(kv_len, n)
    budget = _checks.check_budget(top_k=top_k, n_sink=n_sink, n_local=n_local, n=n)
    if state.indices.shape != (budget,) or state.query.shape != q.shape:
        raise ValueError(
            f"state does not match this call: state.indices.shape={state.indices.shape} vs budget "
            f"n_sink + top_k + n_local = {budget}; state.query.shape={state.query.shape} vs "
            f"q.shape={q.shape}"
        )
    kv_len = jnp.asarray(kv_len, jnp.int32)
    cos = query_cosine(q, state.query)
    hit = state.reusable & (kv_len > budget) & (kv_len >= state.kv_len) & (cos > threshold)

    def reuse():
        idx = jnp.concatenate(
            [
                state.indices[: n_sink + top_k],
                kv_len - n_local + jnp.arange(n_local, dtype=jnp.int32),
            ]
        )
        return idx, jnp.ones((budget,), bool), state.query

    def select():
        idx, valid = select_tokens(
            q,
            k,
            kv_len,
            top_k=top_k,
            n_sink=n_sink,
            n_local=n_local,
            scale=scale,
            vote_pool=vote_pool,
            gqa_mapping=gqa_mapping,
            implementation=implementation,
            seq_axis=seq_axis,
        )
        return idx, valid, q.astype(jnp.float32)

    idx, valid, query = lax.cond(hit, reuse, select)
    new_state = SelectionCacheState(
        indices=idx,
        valid=valid,
        query=query,
        kv_len=kv_len,
        reusable=kv_len > budget,
        hits=state.hits + hit.astype(jnp.int32),
        steps=state.steps + 1,
    )
    return idx, valid, new_state, hit
