"""Attention policies: which cached tokens a layer attends to, and at which RoPE positions.

A policy is a frozen dataclass (hashable, so it is a static argument under ``jit``), chosen per
call of :func:`jaxsel.models.generate.generate`:

- :class:`Dense` -- every cached token at its original position (the reference).
- :class:`TokenSelect` -- sinks + top-k middle tokens by per-head soft voting + a local window
  (Wu et al. 2024, arXiv 2411.02886), with optional Selection Cache and RoPE positions either
  compacted (``"compact"``: the gathered tokens get positions 0..B-1, so no relative distance exceeds
  the budget) or original (``"original"``).
- :class:`Streaming` -- sinks + the recent window only (StreamingLLM, Xiao et al. 2023).
- :class:`Quest` -- sinks + whole pages of ``page_size`` tokens ranked by Quest's min/max key bound
  (Tang et al. 2024, arXiv 2406.10774) with TokenSelect's per-head soft vote + a local window: the
  block-granular peer at the same budget (:func:`jaxsel.attention.page_select`).

Each policy can use adaptive-temperature softmax (Velickovic et al. 2024, arXiv 2410.01104) and
keep some layers dense (``dense_layers``, e.g. ``(0, 1)``). Keys are cached without RoPE; RoPE is
applied at attention time to the tokens a policy gathers.

Prefill (``C > 1`` new tokens) with a sparse policy selects ONCE per chunk with the chunk's mean
query and attends causally over sinks + selected + the tokens of the current chunk (the chunk plays
the role of the local window), as the authors' chunked prefill.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

import jaxsel.attention as A
from pallas_kernels._checks import check_budget

if TYPE_CHECKING:
    from jaxsel.models.config import DecoderConfig

POSITION_MODES = ("compact", "original")
# Keys per block of dense causal attention (:func:`jaxsel.attention.rope_causal_attention`).
DENSE_BLOCK_KV = 512
IMPLEMENTATIONS = ("xla", "pallas")


@dataclasses.dataclass(frozen=True)
class Dense:
    """Dense causal attention over the whole cache."""

    adaptive_temperature: bool = False
    name: str = dataclasses.field(default="dense", init=False)


@dataclasses.dataclass(frozen=True)
class TokenSelect:
    """TokenSelect attention (arXiv 2411.02886).

    Attributes:
      n_sink, top_k, n_local: budget parts (sinks, selected middle tokens, recent window).
      cache_threshold: Selection Cache cosine threshold (decode only); ``None`` selects every step.
      position_mode: ``"compact"`` or ``"original"`` RoPE positions for the gathered tokens.
      implementation: ``"xla"`` or ``"pallas"``: the implementation of the selection
        (:func:`jaxsel.attention.select_tokens`) in every place it runs: decode, a Selection Cache
        miss and each prefill chunk. The attention over the gathered tokens stays XLA: this cache
        stores keys without RoPE and the Pallas sparse-decode kernel reads rotated keys.
      dense_layers: layer indices that attend densely.
      adaptive_temperature: adaptive-temperature softmax over the attended tokens.
      vote_pool: max-pooling window over neighbouring votes (1: off).
    """

    n_sink: int = 4
    top_k: int = 64
    n_local: int = 64
    cache_threshold: float | None = None
    position_mode: str = "compact"
    implementation: str = "xla"
    dense_layers: tuple[int, ...] = ()
    adaptive_temperature: bool = False
    vote_pool: int = 1
    name: str = dataclasses.field(default="tokenselect", init=False)

    def __post_init__(self):
        _check_budget(self.n_sink, self.n_local, self.top_k)
        _check_mode(self.position_mode)
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation={self.implementation!r} is not one of {IMPLEMENTATIONS}"
            )
        if self.cache_threshold is not None and not -1.0 <= self.cache_threshold <= 1.0:
            raise ValueError(f"cache_threshold must be in [-1, 1], got {self.cache_threshold=}")
        object.__setattr__(self, "dense_layers", tuple(int(i) for i in self.dense_layers))

    @property
    def budget(self) -> int:
        return self.n_sink + self.top_k + self.n_local


@dataclasses.dataclass(frozen=True)
class Streaming:
    """StreamingLLM: attention sinks + the most recent ``n_local`` tokens."""

    n_sink: int = 4
    n_local: int = 128
    position_mode: str = "compact"
    dense_layers: tuple[int, ...] = ()
    adaptive_temperature: bool = False
    name: str = dataclasses.field(default="streaming", init=False)

    def __post_init__(self):
        _check_budget(self.n_sink, self.n_local, 0)
        _check_mode(self.position_mode)
        object.__setattr__(self, "dense_layers", tuple(int(i) for i in self.dense_layers))

    @property
    def budget(self) -> int:
        return self.n_sink + self.n_local


@dataclasses.dataclass(frozen=True)
class Quest:
    """Page-level selection: sinks + ``n_pages`` pages of ``page_size`` tokens + a local window.

    Pages are ranked by Quest's upper bound on ``q . k`` from the page's element-wise key
    minimum and maximum (arXiv 2406.10774), one page set per layer by per-head soft vote; see
    :func:`jaxsel.attention.page_select`. Prefill chunks select once with the chunk's mean query.
    """

    n_sink: int = 4
    n_pages: int = 4
    page_size: int = 16
    n_local: int = 64
    position_mode: str = "compact"
    dense_layers: tuple[int, ...] = ()
    adaptive_temperature: bool = False
    name: str = dataclasses.field(default="quest", init=False)

    def __post_init__(self):
        _check_budget(self.n_sink, self.n_local, self.n_pages, "n_pages")
        if not isinstance(self.page_size, int) or self.page_size < 1:
            raise ValueError(f"page_size must be an int >= 1, got {self.page_size!r}")
        _check_mode(self.position_mode)
        object.__setattr__(self, "dense_layers", tuple(int(i) for i in self.dense_layers))

    @property
    def budget(self) -> int:
        return self.n_sink + self.n_pages * self.page_size + self.n_local


Policy = Dense | TokenSelect | Streaming | Quest
DENSE = Dense()
_BY_NAME = {"dense": Dense, "tokenselect": TokenSelect, "streaming": Streaming, "quest": Quest}


def make_policy(name: str | Policy, **options: Any) -> Policy:
    """A policy from its name (``"dense"``, ``"tokenselect"``, ``"streaming"``, ``"quest"``) and
    options.

    Raises:
      ValueError: for an unknown name or an option the policy does not have.
    """
    if isinstance(name, Dense | TokenSelect | Streaming | Quest):
        return dataclasses.replace(name, **options) if options else name
    if name not in _BY_NAME:
        raise ValueError(f"unknown attention policy {name!r}; choose one of {sorted(_BY_NAME)}")
    cls = _BY_NAME[name]
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"policy {name!r} has no option(s) {unknown}; options: {sorted(fields)}")
    return cls(**options)


# The TokenSelect paper's budget for long-context evaluation (2688 tokens: 128 sinks, 2048 selected,
# 512 local) and the peers' settings at the same budget.
PAPER_BUDGET_OPTIONS: dict[str, dict[str, int]] = {
    "dense": {},
    "tokenselect": {"n_sink": 128, "top_k": 2048, "n_local": 512},
    "streaming": {"n_sink": 128, "n_local": 2560},
    "quest": {"n_sink": 128, "n_pages": 128, "page_size": 16, "n_local": 512},
}


def at_paper_budget(name: str, **options: Any) -> Policy:
    """Policy ``name`` at the TokenSelect paper's 2688-token budget (:data:`PAPER_BUDGET_OPTIONS`),
    with ``options`` overriding (e.g. ``position_mode="original"``)."""
    if name not in PAPER_BUDGET_OPTIONS:
        raise ValueError(f"unknown attention policy {name!r}; choose one of {sorted(_BY_NAME)}")
    return make_policy(name, **{**PAPER_BUDGET_OPTIONS[name], **options})


def _check_budget(n_sink: int, n_local: int, top_k: int, top_name: str = "top_k") -> None:
    """The selectors' budget rule (:func:`pallas_kernels._checks.check_budget`, without the cache
    length, which a policy does not know) plus ``n_local >= 1``: a decode step attends to itself."""
    if top_name != "top_k" and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise ValueError(f"{top_name} must be a Python int >= 0, got {top_name}={top_k!r}")
    check_budget(top_k=top_k, n_sink=n_sink, n_local=n_local, n=None)
    if n_local < 1:
        raise ValueError(f"n_local must be >= 1 (the current token is local), got {n_local=}")


def _check_mode(mode: str) -> None:
    if mode not in POSITION_MODES:
        raise ValueError(f"position_mode={mode!r} is not one of {POSITION_MODES}")


# ----------------------------------------------------------------------------- attention
def gathered_attention(
    q: jax.Array,
    q_pos: jax.Array,
    k: jax.Array,
    v: jax.Array,
    k_pos: jax.Array,
    mask: jax.Array,
    *,
    config: DecoderConfig,
    adaptive: bool = False,
    rope_table: A.RopeTable | None = None,
) -> jax.Array:
    """Dense attention of C queries over M keys given explicit RoPE positions and a mask.

    q [C, Hq, d] at positions q_pos [C]; k, v [M, Hkv, d] (unrotated) at k_pos [M]; mask [C, M].
    Returns [C, Hq, d] float32: o_h = sum_j softmax_j(R(q_pos) q_h . R(k_pos_j) k_j / sqrt(d)) v_j
    (adaptive-temperature softmax, arXiv 2410.01104, when ``adaptive``). The plain path of
    training, HF parity and the dense policy; sparse policies use :mod:`jaxsel.attention`.
    """
    C, Hq, d = q.shape
    Hkv = k.shape[1]
    rope_kw = dict(theta=config.rope_theta, scaling=config.rope_scaling_dict(), table=rope_table)
    qr = A.apply_rope(q, q_pos, **rope_kw).reshape(C, Hkv, Hq // Hkv, d)
    kr = A.apply_rope(k, k_pos, **rope_kw)
    logits = jnp.einsum("ckgd,mkd->kgcm", qr, kr, preferred_element_type=jnp.float32)
    logits = jnp.where(mask[None, None], logits * (1.0 / jnp.sqrt(jnp.float32(d))), -jnp.inf)
    if adaptive:
        p = A.adaptive_temperature_softmax(logits, axis=-1)
    else:
        p = jax.nn.softmax(logits, axis=-1)
    o = jnp.einsum("kgcm,mkd->ckgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o.reshape(C, Hq, d)


def _select(policy, sq, cache_k, kv_len, state, *, chunk_len=None, seq_axis=None):
    """Indices over the first ``kv_len`` cached tokens for the scoring query ``sq``.

    ``sq`` is ``[Hq, d]`` (decode) or ``[C, Hq, d]`` (a prefill chunk: its mean query selects).
    ``seq_axis``: the cache is this shard's part of a sequence-sharded cache.
    """
    if isinstance(policy, Streaming):
        q1 = sq if sq.ndim == 2 else sq[0]
        idx, valid = A.streaming_select(
            q1, cache_k, kv_len, top_k=0, n_sink=policy.n_sink, n_local=policy.n_local
        )
        return idx, valid, state
    if isinstance(policy, Quest):
        q1 = A.chunk_query(sq, chunk_len) if sq.ndim == 3 else sq
        idx, valid = A.page_select(
            q1,
            cache_k,
            kv_len,
            n_pages=policy.n_pages,
            page_size=policy.page_size,
            n_sink=policy.n_sink,
            n_local=policy.n_local,
        )
        return idx, valid, state
    kw = dict(top_k=policy.top_k, n_sink=policy.n_sink, n_local=policy.n_local)
    kw["vote_pool"] = policy.vote_pool
    kw["implementation"] = policy.implementation
    if seq_axis is not None:
        kw["seq_axis"] = seq_axis
    if sq.ndim == 3:
        idx, valid = A.prefill_select(sq, cache_k, kv_len, chunk_len=chunk_len, **kw)
        return idx, valid, state
    if state is not None:
        idx, valid, state, _ = A.cached_select(
            state, sq, cache_k, kv_len, threshold=policy.cache_threshold, **kw
        )
        return idx, valid, state
    idx, valid = A.select_tokens(sq, cache_k, kv_len, **kw)
    return idx, valid, state


def check_sequence_policy(policy: Policy) -> None:
    """A sequence-sharded cache runs the dense and TokenSelect (``implementation="xla"``)
    policies with plain softmax; raises ValueError naming the policy otherwise."""
    supported = isinstance(policy, Dense) or (
        isinstance(policy, TokenSelect) and policy.implementation == "xla"
    )
    if not supported or policy.adaptive_temperature:
        raise ValueError(
            f"sequence sharding supports the dense and TokenSelect (implementation='xla') "
            f"policies with plain softmax, got {policy!r}"
        )


def _attend_sequence_sharded(
    policy, q, cache_k, cache_v, start, *, layer, config, state, axis, limit, chunk_kv
):  # fmt: skip
    """:func:`attend` over a cache sharded along the sequence over the mesh axis ``axis``
    (``cache_k, cache_v`` this shard's ``[N/P, Hkv, d]``): the sequence-sharded selection and
    attention of :mod:`jaxsel.attention.sequence`; the results are replicated."""
    check_sequence_policy(policy)
    C = q.shape[0]
    n_global = cache_k.shape[0] * A.sequence.axis_size(axis)
    rope_kw = dict(theta=config.rope_theta, scaling=config.rope_scaling_dict())
    dense = isinstance(policy, Dense) or layer in policy.dense_layers or policy.budget >= n_global

    def dense_chunk():
        return A.sequence.sequence_rope_causal_attention(
            q, cache_k, cache_v, start, axis_name=axis, block_kv=DENSE_BLOCK_KV, **rope_kw
        )

    if dense:
        return dense_chunk(), state
    sq = A.scoring_query(q, n_local=policy.n_local, **rope_kw)
    mode = policy.position_mode
    if C == 1:
        kv_len = start + 1
        idx, valid, state = _select(policy, sq[0], cache_k, kv_len, state, seq_axis=axis)
        o = A.sequence_rope_sparse_attention(
            q[0], cache_k, cache_v, idx, valid, kv_len, axis_name=axis, position_mode=mode,
            **rope_kw,
        )  # fmt: skip
        return o[None].astype(jnp.float32), state
    chunk_len = None if limit is None else jnp.clip(limit - start, 1, C)

    def sparse_chunk():
        idx, valid, _ = _select(
            policy, sq, cache_k, start, None, chunk_len=chunk_len, seq_axis=axis
        )
        # The chunk's own keys and values as every shard computed them (the cache holds them
        # only on the shards that own their slots), in the cache's dtype as one device reads them.
        k_chunk, v_chunk = (x.astype(cache_k.dtype) for x in chunk_kv)
        o = A.sequence.sequence_rope_prefill_attention(
            q, k_chunk, v_chunk, cache_k, cache_v, idx, valid, start, axis_name=axis,
            position_mode=mode, **rope_kw,
        )  # fmt: skip
        return o.astype(jnp.float32)

    if isinstance(start, int):
        return (dense_chunk() if start <= policy.budget else sparse_chunk()), state
    return jax.lax.cond(start <= policy.budget, dense_chunk, sparse_chunk), state


def attend(
    policy: Policy,
    q: jax.Array,
    cache_k: jax.Array,
    cache_v: jax.Array,
    start: jax.Array,
    *,
    layer: int,
    config: DecoderConfig,
    select_state: Any = None,
    limit: jax.Array | None = None,
    seq_axis: str | None = None,
    chunk_kv: tuple[jax.Array, jax.Array] | None = None,
    rope_table: A.RopeTable | None = None,
) -> tuple[jax.Array, Any]:
    """One layer's attention for C new queries of one sequence under ``policy``.

    Args:
      q: ``[C, Hq, d]`` new queries (no RoPE) at positions ``start .. start + C - 1``.
      cache_k, cache_v: ``[N, Hkv, d]`` with the chunk already written; ``kv_len = start + C``.
      layer: the layer index (static), checked against ``policy.dense_layers``.
      select_state: this layer's Selection Cache state (decode with a cache threshold) or None.
      limit: positions ``>= limit`` in the chunk are right padding (left out of a prefill
        chunk's mean query).
      seq_axis: the cache is sharded along the sequence over this mesh axis (inside
        ``shard_map``; ``cache_k, cache_v`` are this shard's slots; ``start`` is global): dense
        or TokenSelect through :mod:`jaxsel.attention.sequence`, decode and prefill chunks.
      chunk_kv: with ``seq_axis`` and C > 1, the chunk's own ``(k, v) [C, Hkv, d]`` (replicated;
        the cache holds them only on the shards that own their slots).
      rope_table: :func:`jaxsel.attention.rope_table` of the cache length for the config's RoPE,
        built once per forward and read by every layer (the same result, faster; not used with
        ``seq_axis``).

    Returns:
      ``(o [C, Hq, d] float32, select_state)``.

    Decode (C == 1) selects with the current query rotated to position n_local (the authors'
    scoring query) over all cached tokens including the current one, then attends over the gathered
    tokens at compact or original positions. A prefill chunk (C > 1) selects over the tokens before
    it with its mean scoring query and attends causally over those plus itself.
    """
    if seq_axis is not None:
        return _attend_sequence_sharded(
            policy, q, cache_k, cache_v, start, layer=layer, config=config,
            state=select_state, axis=seq_axis, limit=limit, chunk_kv=chunk_kv,
        )  # fmt: skip
    C = q.shape[0]
    N = cache_k.shape[0]
    adaptive = policy.adaptive_temperature
    # A budget that covers the whole cache keeps every token: attend densely, as the paper does
    # whenever n_sink + top_k + n_local >= n (and exactly so: compact positions are then the
    # original ones).
    dense = isinstance(policy, Dense) or layer in policy.dense_layers or policy.budget >= N
    if dense and not adaptive:
        o = A.rope_causal_attention(
            q,
            cache_k,
            cache_v,
            start,
            theta=config.rope_theta,
            scaling=config.rope_scaling_dict(),
            rope_table=rope_table,
            block_kv=DENSE_BLOCK_KV,
        )
        return o, select_state
    if dense:
        q_pos = start + jnp.arange(C, dtype=jnp.int32)
        k_pos = jnp.arange(N, dtype=jnp.int32)
        mask = k_pos[None, :] <= q_pos[:, None]
        o = gathered_attention(
            q, q_pos, cache_k, cache_v, k_pos, mask, config=config, adaptive=adaptive,
            rope_table=rope_table,
        )  # fmt: skip
        return o, select_state
    sq = A.scoring_query(
        q, n_local=policy.n_local, theta=config.rope_theta, scaling=config.rope_scaling_dict()
    )
    rope_kw = dict(
        theta=config.rope_theta, scaling=config.rope_scaling_dict(), rope_table=rope_table
    )
    mode = policy.position_mode
    if C == 1:
        kv_len = start + 1
        idx, valid, select_state = _select(policy, sq[0], cache_k, kv_len, select_state)
        o = A.rope_sparse_attention(
            q[0],
            cache_k,
            cache_v,
            idx,
            valid,
            kv_len,
            position_mode=mode,
            adaptive_temperature=adaptive,
            **rope_kw,
        )
        return o[None].astype(jnp.float32), select_state
    chunk_len = None if limit is None else jnp.clip(limit - start, 1, C)

    def sparse_chunk():
        idx, valid, _ = _select(policy, sq, cache_k, start, None, chunk_len=chunk_len)
        k_chunk = jax.lax.dynamic_slice_in_dim(cache_k, start, C, axis=0)
        v_chunk = jax.lax.dynamic_slice_in_dim(cache_v, start, C, axis=0)
        o = A.rope_prefill_attention(
            q,
            k_chunk,
            v_chunk,
            cache_k,
            cache_v,
            idx,
            valid,
            start,
            position_mode=mode,
            adaptive_temperature=adaptive,
            **rope_kw,
        )
        return o.astype(jnp.float32)

    if adaptive:
        return sparse_chunk(), select_state

    def dense_chunk():
        return A.rope_causal_attention(
            q, cache_k, cache_v, start, block_kv=DENSE_BLOCK_KV, **rope_kw
        )

    # While the past fits the budget the selection keeps all of it, which is dense causal
    # attention: take the cheaper blocked path (the same values) instead of a padded gather.
    if isinstance(start, int):
        return (dense_chunk() if start <= policy.budget else sparse_chunk()), select_state
    return jax.lax.cond(start <= policy.budget, dense_chunk, sparse_chunk), select_state


def init_select_state(policy: TokenSelect, config: DecoderConfig) -> Any:
    """An empty Selection Cache state for one layer of one sequence."""
    q = jax.ShapeDtypeStruct((config.num_heads, config.head_dim), jnp.float32)
    return A.SelectionCacheState.init(
        q, top_k=policy.top_k, n_sink=policy.n_sink, n_local=policy.n_local
    )
