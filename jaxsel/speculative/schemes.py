"""Named selection schemes with one signature, for block decoding and benchmarks.

``scheme(key, target_probs [V], draft_probs [V], draft_tokens [k]) -> (token int32, accepted bool)``
with the ``k`` drafts i.i.d. from ``draft_probs``; every entry is exact for any ``k >= 1`` (``single``
for ``k = 1`` only) and jit/vmap-compatible.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from jax import Array

from jaxsel.speculative.importance import importance_select, optimized_importance_select
from jaxsel.speculative.single import speculative_select
from jaxsel.speculative.specinfer import recursive_rejection_select
from jaxsel.speculative.spectr import k_sequential_select

Scheme = Callable[[Array, Array, Array, Array], tuple[Array, Array]]

# Importance selection enumerates (m + 1)^k draft categories for its exact intermediate law: the
# m most likely draft tokens keep their own weight p/q, the rest share one.
IMPORTANCE_SUPPORT = 16

SCHEMES: dict[str, Scheme] = {
    "single": speculative_select,
    "specinfer": recursive_rejection_select,
    "spectr": k_sequential_select,
    "importance": functools.partial(importance_select, support_size=IMPORTANCE_SUPPORT),
    "importance_opt": functools.partial(
        optimized_importance_select, support_size=IMPORTANCE_SUPPORT
    ),
}
