"""TokenSelect attention sparsity, adaptive-temperature softmax and baselines (pure JAX).

All functions are unbatched (one sequence, one layer, one decode step); batch with ``jax.vmap``.
Shapes: ``q [Hq, d]``, ``k, v [N, Hkv, d]`` (static N), ``kv_len`` an integer scalar (may be traced).
Selections are ``(indices [B] int32 sorted ascending, valid [B] bool)`` with
``B = n_sink + top_k + n_local``; see :mod:`jaxsel.attention.select` for the padding convention.
"""

from jaxsel.attention import sequence
from jaxsel.attention.baselines import (
    dense_select,
    per_head_select,
    raw_logit_select,
    streaming_select,
)
from jaxsel.attention.cache import SelectionCacheState, cached_select, query_cosine
from jaxsel.attention.pages import page_bounds, page_scores, page_select
from jaxsel.attention.positions import (
    POSITION_MODES,
    RopeTable,
    apply_rope,
    gathered_positions,
    rope_causal_attention,
    rope_frequencies,
    rope_prefill_attention,
    rope_sparse_attention,
    rope_table,
    rotate_half,
    scoring_query,
)
from jaxsel.attention.prefill import (
    chunk_attention,
    chunk_query,
    prefill_attention,
    prefill_select,
)
from jaxsel.attention.select import (
    middle_candidates,
    pool_votes,
    select_from_votes,
    select_tokens,
    soft_vote,
    token_scores,
)
from jaxsel.attention.sequence import (
    combine_partials,
    sequence_rope_causal_attention,
    sequence_rope_dense_attention,
    sequence_rope_prefill_attention,
    sequence_rope_sparse_attention,
    sequence_select,
    sequence_sparse_attention,
)
from jaxsel.attention.sparse import (
    adaptive_temperature_attention,
    dense_attention,
    sparse_attention,
)
from jaxsel.attention.temperature import (
    adaptive_inverse_temperature,
    adaptive_temperature_softmax,
)

__all__ = [
    "POSITION_MODES",
    "RopeTable",
    "SelectionCacheState",
    "adaptive_inverse_temperature",
    "adaptive_temperature_attention",
    "adaptive_temperature_softmax",
    "apply_rope",
    "cached_select",
    "chunk_attention",
    "chunk_query",
    "combine_partials",
    "dense_attention",
    "dense_select",
    "gathered_positions",
    "middle_candidates",
    "page_bounds",
    "page_scores",
    "page_select",
    "per_head_select",
    "pool_votes",
    "prefill_attention",
    "prefill_select",
    "query_cosine",
    "raw_logit_select",
    "rope_causal_attention",
    "rope_frequencies",
    "rope_prefill_attention",
    "rope_sparse_attention",
    "rope_table",
    "rotate_half",
    "scoring_query",
    "select_from_votes",
    "select_tokens",
    "sequence",
    "sequence_rope_causal_attention",
    "sequence_rope_dense_attention",
    "sequence_rope_prefill_attention",
    "sequence_rope_sparse_attention",
    "sequence_select",
    "sequence_sparse_attention",
    "soft_vote",
    "sparse_attention",
    "streaming_select",
    "token_scores",
]
