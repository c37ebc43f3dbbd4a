"""Token-level draft selection for (multi-draft) speculative sampling.

Given a target law ``p [V]`` and K drafted tokens ``x_1..x_K`` drawn independently from ``q`` (or
``q_i``), a selection scheme outputs one token distributed exactly as ``p`` and tries to make it one
of the drafts ("acceptance"), so that block decoding can keep the accepted draft's continuation.
Every ``*_select(key, target_probs, draft_probs, draft_tokens, *, ...)`` returns ``(token,
accepted)``: int32 token and bool (an accepted token is one of the drafts, so block decoding keeps
the chains that drew it); its ``*_law`` companion gives the output law given the
drafts exactly, and ``*_acceptance`` the scheme's acceptance probability.

- :func:`speculative_select` -- single-draft speculative sampling, K = 1 (Leviathan et al. 2023;
  Chen et al. 2023): ``P(accept) = sum min(p, q)``.
- :func:`recursive_rejection_select` -- SpecInfer's recursive rejection (Miao et al. 2024), per-draft
  laws allowed.
- :func:`k_sequential_select` -- SpecTr's k-sequential selection (Sun et al. 2023), i.i.d. drafts.
- :func:`two_step_select` -- the canonical two-step scheme of Khisti et al. (ICLR 2025,
  arXiv:2410.18234) for K = 2 with a selection table; the LP table reaches the optimum.
- :func:`importance_select` -- (weighted) importance selection then a speculative step, any K;
  weights ``p/q`` by default; :func:`optimize_importance_weights` ascends the exact acceptance
  over the weights, :func:`optimized_importance_select` uses them.
- :func:`optimal_acceptance_two_drafts`, :func:`acceptance_one_two_drafts`,
  :func:`acceptance_upper_bound` -- the paper's closed form and acceptance-one condition.
- :func:`optimal_acceptance_lp`, :func:`optimal_two_step_table_lp` -- the optimal scheme as a linear
  program (NumPy/SciPy reference for small V; SciPy is imported on call).
- :func:`exact_law`, :func:`draft_tuples` -- exact output laws by enumerating draft tuples.
- ``SCHEMES`` -- the schemes by name (``single``, ``specinfer``, ``spectr``, ``importance``,
  ``importance_opt``) with
  the common signature ``scheme(key, p [V], q [V], draft_tokens [k]) -> (token, accepted)``.

All ``*_select`` functions are pure, jit- and vmap-compatible, with static shapes; batch with
``jax.vmap``.
"""

from jaxsel.speculative.bounds import (
    acceptance_one_two_drafts,
    acceptance_upper_bound,
    optimal_acceptance_two_drafts,
)
from jaxsel.speculative.exact import draft_tuples, exact_law
from jaxsel.speculative.importance import (
    importance_acceptance,
    importance_law,
    importance_select,
    importance_weights,
    intermediate_law,
    optimize_importance_weights,
    optimized_importance_select,
    pair_intermediate_law,
    two_step_acceptance,
    two_step_law,
    two_step_select,
)
from jaxsel.speculative.lp import optimal_acceptance_lp, optimal_two_step_table_lp
from jaxsel.speculative.schemes import IMPORTANCE_SUPPORT, SCHEMES, Scheme
from jaxsel.speculative.single import speculative_acceptance, speculative_law, speculative_select
from jaxsel.speculative.specinfer import (
    recursive_rejection_acceptance,
    recursive_rejection_law,
    recursive_rejection_select,
)
from jaxsel.speculative.spectr import (
    k_sequential_acceptance,
    k_sequential_law,
    k_sequential_rho,
    k_sequential_select,
)

__all__ = [
    "IMPORTANCE_SUPPORT",
    "SCHEMES",
    "Scheme",
    "acceptance_one_two_drafts",
    "acceptance_upper_bound",
    "draft_tuples",
    "exact_law",
    "importance_acceptance",
    "importance_law",
    "importance_select",
    "importance_weights",
    "intermediate_law",
    "k_sequential_acceptance",
    "k_sequential_law",
    "k_sequential_rho",
    "k_sequential_select",
    "optimal_acceptance_lp",
    "optimal_acceptance_two_drafts",
    "optimal_two_step_table_lp",
    "optimize_importance_weights",
    "optimized_importance_select",
    "pair_intermediate_law",
    "recursive_rejection_acceptance",
    "recursive_rejection_law",
    "recursive_rejection_select",
    "speculative_acceptance",
    "speculative_law",
    "speculative_select",
    "two_step_acceptance",
    "two_step_law",
    "two_step_select",
]
