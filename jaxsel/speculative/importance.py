"""The canonical two-step schemes of Khisti et al. (importance-type selection, then one speculative step).

Khisti, Ebrahimi, Dbouk, Behboodi, Memisevic, Louizos, "Multi-Draft Speculative Sampling: Canonical
Architectures and Theoretical Limits", ICLR 2025 (arXiv:2410.18234). The paper shows that the
optimal token-level selection over K drafts (the linear program of :mod:`jaxsel.speculative.lp`)
decomposes into two steps:

1. choose one draft ``i`` with probabilities ``beta_i(x_1..K)`` that depend only on the drafts
   (an importance-sampling-type choice); the chosen token ``x_i`` has the *intermediate law*
   ``p_I(y) = sum_{x_1..K} prod_j q_j(x_j) sum_{i: x_i = y} beta_i(x_1..K)``;
2. single-draft speculative sampling of that token against ``p`` with proposal ``p_I``: keep it
   with probability ``min(1, p(y)/p_I(y))``, else draw from ``norm((p - p_I)^+)``.

The output is distributed as ``p`` for *any* selection rule ``beta``, and the acceptance is
``sum_y min(p(y), p_I(y))``; the optimal scheme is the ``beta`` that maximizes it. Two families:

- :func:`two_step_select` (K = 2): ``beta`` is a table ``[V, V]`` giving the probability of choosing
  the first draft for each pair; the table from :func:`jaxsel.speculative.lp.optimal_two_step_table_lp`
  reaches the LP optimum (Theorem 1 of the paper), here for small ``V``.
- :func:`importance_select` (any K): weighted importance sampling, ``beta_i = w_i(x_i) / sum_j
  w_j(x_j)``. The default weights ``w_i(y) = p(y) / q_i(y)`` are classical importance resampling;
  other non-negative weights give the weighted-IS family that the paper's analysis motivates;
  :func:`optimize_importance_weights` picks them by ascending the exact acceptance (our
  optimiser), and :func:`optimized_importance_select` uses them.
  ``p_I`` is computed exactly by enumerating the ``C^K`` draft categories; with ``support_size=m``
  the categories are the ``m`` most likely draft tokens plus one category for the rest (whose
  tokens share one weight per draft), so ``p_I`` stays exact for any vocabulary at ``(m+1)^K``
  cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.typing import ArrayLike

from jaxsel.speculative._common import (
    _is_concrete,
    as_draft_rows,
    check_inputs,
    check_valid,
    draft_rows,
    selection_probs,
)
from jaxsel.speculative._common import two_step as _two_step
from jaxsel.speculative._common import two_step_law as _two_step_law

# Largest number of enumerated draft-category tuples (C^K) for the exact intermediate law.
MAX_ENUMERATED_TUPLES = 1 << 22


def importance_weights(target_probs: ArrayLike, draft_probs: ArrayLike) -> Array:
    """Importance weights ``w_i(y) = p(y) / q_i(y)`` (0 where ``q_i(y) = 0``), shaped like ``draft_probs``."""
    p = jnp.asarray(target_probs)
    q = jnp.asarray(draft_probs)
    return jnp.where(q > 0, p / jnp.where(q > 0, q, 1.0), 0.0)


def _check_weights(weights: ArrayLike, k: int, v: int) -> Array:
    w = jnp.asarray(weights)
    if w.shape not in ((v,), (k, v)):
        raise ValueError(f"weights must have shape ({v},) or ({k}, {v}), got {w.shape=}")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"weights must have a floating dtype, got {w.dtype=}")
    if _is_concrete(w) and (not np.all(np.isfinite(np.asarray(w))) or np.any(np.asarray(w) < 0)):
        raise ValueError("weights must be finite and non-negative")
    return jnp.broadcast_to(w, (k, v))


def _categories(q: Array, w: Array, support_size: int | None) -> tuple[Array, Array, Array, Array]:
    """``(category of each token [V], category mass [K, C], category weight [K, C], effective
    weight [K, V])``. Tokens of one category share one weight per draft (the ``q_i``-weighted mean)."""
    v = q.shape[1]
    if support_size is None or support_size >= v:
        return jnp.arange(v), q, w, w
    if not isinstance(support_size, int) or support_size < 1:
        raise ValueError(f"support_size must be a positive int or None, got {support_size=}")
    _, top = jax.lax.top_k(jnp.mean(q, axis=0), support_size)
    cat = (
        jnp.full((v,), support_size, jnp.int32)
        .at[top]
        .set(jnp.arange(support_size, dtype=jnp.int32))
    )
    rest = cat == support_size
    q_rest = jnp.sum(jnp.where(rest, q, 0.0), axis=1)
    w_rest = jnp.sum(jnp.where(rest, q * w, 0.0), axis=1) / jnp.where(q_rest > 0, q_rest, 1.0)
    mass = jnp.concatenate([q[:, top], q_rest[:, None]], axis=1)
    weight = jnp.concatenate([w[:, top], w_rest[:, None]], axis=1)
    w_eff = jnp.where(rest, w_rest[:, None], w)
    return cat, mass, weight, w_eff


def _intermediate(q: Array, cat: Array, mass: Array, weight: Array, valid: Array | None) -> Array:
    """Exact ``p_I`` of the weighted-IS choice by enumerating draft categories (static tuples)."""
    k, c = mass.shape
    if valid is not None:
        # One more category, "no draft", with weight 0, for masked-out drafts.
        on = valid.astype(mass.dtype)[:, None]
        mass = jnp.concatenate([mass * on, 1.0 - on], axis=1)
        weight = jnp.concatenate([weight, jnp.zeros((k, 1), weight.dtype)], axis=1)
    n_cat = mass.shape[1]
    if n_cat**k > MAX_ENUMERATED_TUPLES:
        raise ValueError(
            f"the exact intermediate law enumerates {n_cat}^{k} draft tuples (> {MAX_ENUMERATED_TUPLES}); "
            "pass a smaller support_size"
        )
    tuples = np.indices((n_cat,) * k).reshape(k, -1).T  # [T, K], static
    rows = np.arange(k)[None, :]
    prob = jnp.prod(mass[rows, tuples], axis=1)
    w_t = weight[rows, tuples]
    is_draft = jnp.asarray(tuples < c)
    sel = jax.vmap(selection_probs)(w_t, is_draft) * prob[:, None]  # [T, K]
    # joint[i, m] = P(draft i is chosen and falls in category m).
    joint = jax.vmap(lambda s, t: jax.ops.segment_sum(s, t, num_segments=n_cat), in_axes=(1, 1))(
        sel, jnp.asarray(tuples)
    )[:, :c]
    # Within a category the chosen token follows q_i restricted to it (masked drafts: mass 0).
    m_tok = jnp.take_along_axis(mass[:, :c], jnp.broadcast_to(cat, q.shape), axis=1)
    share = jnp.where(m_tok > 0, q / jnp.where(m_tok > 0, m_tok, 1.0), 0.0)
    return jnp.sum(
        jnp.take_along_axis(joint, jnp.broadcast_to(cat, q.shape), axis=1) * share, axis=0
    )


def _importance_parts(p, q, weights, valid, support_size):
    k, v = q.shape
    w = importance_weights(p, q) if weights is None else _check_weights(weights, k, v)
    cat, mass, weight, w_eff = _categories(q, w, support_size)
    return w_eff, _intermediate(q, cat, mass, weight, valid)


def intermediate_law(
    draft_probs: ArrayLike,
    weights: ArrayLike,
    *,
    num_drafts: int,
    valid: ArrayLike | None = None,
    support_size: int | None = None,
) -> Array:
    """The law ``p_I [V]`` of the token chosen by ``beta_i = w_i(x_i) / sum_j w_j(x_j)``.

    ``draft_probs``: ``[V]`` or ``[K, V]``; ``weights``: ``[V]`` or ``[K, V]``; ``valid``: optional
    boolean ``[K]`` (masked drafts take no part). Exact; cost ``C^K`` with ``C = V`` or
    ``support_size + 1``.
    """
    q = draft_rows(draft_probs, num_drafts)
    w = _check_weights(weights, *q.shape)
    valid = None if valid is None else check_valid(valid, q.shape[0])
    cat, mass, weight, _ = _categories(q, w, support_size)
    return _intermediate(q, cat, mass, weight, valid)


def importance_select(
    key: Array,
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    draft_tokens: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    valid: ArrayLike | None = None,
    support_size: int | None = None,
) -> tuple[Array, Array]:
    """One token by (weighted) importance selection followed by speculative sampling.

    Step 1 chooses draft ``i`` with probability ``w_i(x_i) / sum_j w_j(x_j)``; step 2 keeps
    ``x_i`` with probability ``min(1, p(x_i) / p_I(x_i))``, else draws from ``norm((p - p_I)^+)``.

    Args:
      key: PRNG key.
      target_probs: ``p``, ``[V]``.
      draft_probs: ``[V]`` (i.i.d. drafts) or ``[K, V]`` (draft ``i`` from ``q_i``).
      draft_tokens: ``[K]`` int, drawn independently.
      weights: non-negative ``[V]`` or ``[K, V]``; default ``p / q_i`` (importance sampling).
      valid: optional boolean ``[K]``; masked drafts take no part.
      support_size: static ``m``; when set, tokens outside the ``m`` most likely draft tokens share
        one weight per draft, and ``p_I`` costs ``(m+1)^K`` instead of ``V^K``.

    Returns:
      ``(token, accepted)``: the output (distributed as ``p``) and whether the chosen draft was
      accepted (when not, the residual draw may still equal another draft's token).
    """
    p, q, tokens = check_inputs(target_probs, draft_probs, draft_tokens)
    k = tokens.shape[0]
    mask = None if valid is None else check_valid(valid, k)
    w_eff, p_i = _importance_parts(p, q, weights, mask, support_size)
    select = selection_probs(w_eff[jnp.arange(k), tokens], check_valid(mask, k))
    return _two_step(key, p, p_i, tokens, select)


def importance_law(
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    draft_tokens: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    valid: ArrayLike | None = None,
    support_size: int | None = None,
) -> tuple[Array, Array]:
    """Law of :func:`importance_select` given the drafts: ``(P(out = y), P(out = y, accepted))``."""
    p, q, tokens = check_inputs(target_probs, draft_probs, draft_tokens)
    k = tokens.shape[0]
    mask = None if valid is None else check_valid(valid, k)
    w_eff, p_i = _importance_parts(p, q, weights, mask, support_size)
    select = selection_probs(w_eff[jnp.arange(k), tokens], check_valid(mask, k))
    return _two_step_law(p, p_i, tokens, select)


def importance_acceptance(
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    *,
    num_drafts: int,
    weights: ArrayLike | None = None,
    support_size: int | None = None,
) -> Array:
    """``P(accept) = sum_y min(p(y), p_I(y))`` of :func:`importance_select` with all K drafts valid."""
    p, q = as_draft_rows(target_probs, draft_probs, num_drafts)
    _, p_i = _importance_parts(p, q, weights, None, support_size)
    return jnp.sum(jnp.minimum(p, p_i))


def optimize_importance_weights(
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    *,
    num_drafts: int,
    support_size: int | None = None,
    steps: int = 100,
    learning_rate: float = 0.2,
) -> tuple[Array, Array]:
    """Weighted-IS weights chosen to maximise the exact acceptance of :func:`importance_select`.

    Every non-negative weight vector gives an exact scheme (the speculative step corrects any
    intermediate law), so the weights are free parameters of the acceptance
    ``A(w) = sum_y min(p(y), p_I(y; w))``. Starting from the importance weights ``p / q``, Adam
    ascends ``A`` in ``log w`` (weights matter only through their ratios) for ``steps`` steps, and
    the best weights seen (or ``p / q`` itself, if none beat it) are returned, so ``A`` never drops
    below importance selection's. This is
    our optimiser of the weighted-IS family that Khisti et al. (arXiv:2410.18234) motivate, not the
    paper's own procedure; the LP optimum (:func:`jaxsel.speculative.optimal_acceptance_lp`) bounds
    it from above.

    Args:
      target_probs: ``p [V]``.
      draft_probs: ``q [V]`` (i.i.d. drafts: one shared weight vector) or ``[K, V]`` (one per draft).
      num_drafts: K (static).
      support_size: as :func:`importance_select` (the exact ``p_I`` costs ``(m + 1)^K``).
      steps, learning_rate: Adam on ``log w`` (static steps).

    Returns:
      ``(weights, acceptance)``: weights shaped like ``draft_probs`` and their exact acceptance.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps=}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate=}")
    p, q = as_draft_rows(target_probs, draft_probs, num_drafts)
    shared = jnp.ndim(draft_probs) == 1
    w0 = importance_weights(p, q[:1] if shared else q)
    theta0 = jnp.log(jnp.maximum(w0, jnp.finfo(w0.dtype).tiny))

    def weights(theta: Array) -> Array:
        # Only ratios matter: the largest weight is 1 and ratios are kept down to e^-80 (p / q of
        # real models spans dozens of orders of magnitude; smaller ones would underflow to 0).
        w = jnp.exp(jnp.maximum(theta - jnp.max(theta), -80.0))
        return w[0] if shared else w

    def acceptance(theta: Array) -> Array:
        return importance_acceptance(
            p, q, num_drafts=num_drafts, weights=weights(theta), support_size=support_size
        )

    opt = optax.adam(learning_rate)
    grad = jax.value_and_grad(acceptance)

    def step(carry, _):
        theta, state, best, best_acc = carry
        acc, g = grad(theta)
        better = acc > best_acc
        best, best_acc = jnp.where(better, theta, best), jnp.where(better, acc, best_acc)
        updates, state = opt.update(jax.tree.map(jnp.negative, g), state, theta)
        return (optax.apply_updates(theta, updates), state, best, best_acc), None

    init = (theta0, opt.init(theta0), theta0, -jnp.inf)
    (theta, _, best, best_acc), _ = jax.lax.scan(step, init, None, length=steps)
    last = acceptance(theta)  # the final iterate was not scored inside the loop
    best = jnp.where(last > best_acc, theta, best)
    best_acc = jnp.maximum(last, best_acc)
    # The importance weights themselves, unclipped, as the floor (the clip changes extreme ratios).
    plain = w0[0] if shared else w0
    base = importance_acceptance(
        p, q, num_drafts=num_drafts, weights=plain, support_size=support_size
    )
    keep = base >= best_acc
    return jnp.where(keep, plain, weights(best)), jnp.where(keep, base, best_acc)


def optimized_importance_select(
    key: Array,
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    draft_tokens: ArrayLike,
    *,
    support_size: int | None = None,
    steps: int = 100,
    learning_rate: float = 0.2,
) -> tuple[Array, Array]:
    """:func:`importance_select` with the weights of :func:`optimize_importance_weights` for this
    ``(p, q)`` (computed per call, before looking at the drafts, so the output is still exactly
    ``p``). Arguments as those two functions."""
    k = jnp.shape(draft_tokens)[0]
    w, _ = optimize_importance_weights(
        target_probs, draft_probs, num_drafts=k, support_size=support_size, steps=steps,
        learning_rate=learning_rate,
    )  # fmt: skip
    return importance_select(
        key, target_probs, draft_probs, draft_tokens, weights=w, support_size=support_size
    )


def _check_table(selection_table: ArrayLike, v: int) -> Array:
    table = jnp.asarray(selection_table)
    if table.shape != (v, v):
        raise ValueError(f"selection_table must have shape ({v}, {v}), got {table.shape=}")
    if not jnp.issubdtype(table.dtype, jnp.floating):
        raise TypeError(f"selection_table must have a floating dtype, got {table.dtype=}")
    if _is_concrete(table):
        t = np.asarray(table)
        if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t > 1):
            raise ValueError("selection_table entries are probabilities and must lie in [0, 1]")
    return table


def pair_intermediate_law(
    draft_probs: ArrayLike, selection_table: ArrayLike, *, valid: ArrayLike | None = None
) -> Array:
    """``p_I [V]`` for two drafts and a selection table ``beta[a, b] = P(choose draft 0 | x = (a, b))``:

    p_I(y) = q_0(y) sum_b q_1(b) beta[y, b] + q_1(y) sum_a q_0(a) (1 - beta[a, y]).
    """
    q = draft_rows(draft_probs, 2)
    table = _check_table(selection_table, q.shape[1]).astype(q.dtype)
    both = q[0] * (table @ q[1]) + q[1] * ((1.0 - table).T @ q[0])
    if valid is None:
        return both
    valid = check_valid(valid, 2)
    return jnp.select(
        [valid[0] & valid[1], valid[0], valid[1]], [both, q[0], q[1]], jnp.zeros_like(both)
    )


def _pair_select(table: Array, tokens: Array, valid: Array) -> Array:
    first = table[tokens[0], tokens[1]]
    both = jnp.stack([first, 1.0 - first])
    return jnp.where(valid[0] & valid[1], both, valid.astype(both.dtype))


def two_step_select(
    key: Array,
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    draft_tokens: ArrayLike,
    *,
    selection_table: ArrayLike,
    valid: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """One token by the canonical two-step scheme for K = 2 drafts with a selection table.

    Step 1 chooses draft 0 with probability ``beta[x_0, x_1]`` (else draft 1); step 2 is single-draft
    speculative sampling of the chosen token against ``p`` with proposal ``p_I``
    (:func:`pair_intermediate_law`). With the table from
    :func:`jaxsel.speculative.lp.optimal_two_step_table_lp` the acceptance is the optimum of the
    token-level LP (the paper's Theorem 1).

    Args:
      key: PRNG key.
      target_probs: ``p``, ``[V]``.
      draft_probs: ``[V]`` (i.i.d.) or ``[2, V]``.
      draft_tokens: ``[2]`` int.
      selection_table: ``[V, V]`` in ``[0, 1]``.
      valid: optional boolean ``[2]``; with one valid draft this is single-draft speculative sampling.

    Returns:
      ``(token, accepted)``: the output (distributed as ``p``) and whether the chosen draft was accepted.
    """
    p, q, tokens = check_inputs(target_probs, draft_probs, draft_tokens, num_drafts=2)
    table = _check_table(selection_table, p.shape[0]).astype(p.dtype)
    mask = check_valid(valid, 2)
    p_i = pair_intermediate_law(q, table, valid=mask)
    return _two_step(key, p, p_i, tokens, _pair_select(table, tokens, mask))


def two_step_law(
    target_probs: ArrayLike,
    draft_probs: ArrayLike,
    draft_tokens: ArrayLike,
    *,
    selection_table: ArrayLike,
    valid: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """Law of :func:`two_step_select` given the drafts: ``(P(out = y), P(out = y, accepted))``."""
    p, q, tokens = check_inputs(target_probs, draft_probs, draft_tokens, num_drafts=2)
    table = _check_table(selection_table, p.shape[0]).astype(p.dtype)
    mask = check_valid(valid, 2)
    p_i = pair_intermediate_law(q, table, valid=mask)
    return _two_step_law(p, p_i, tokens, _pair_select(table, tokens, mask))


def two_step_acceptance(
    target_probs: ArrayLike, draft_probs: ArrayLike, *, selection_table: ArrayLike
) -> Array:
    """``P(accept) = sum_y min(p(y), p_I(y))`` of :func:`two_step_select` (two valid drafts)."""
    p, q = as_draft_rows(target_probs, draft_probs, 2)
    return jnp.sum(jnp.minimum(p, pair_intermediate_law(q, selection_table)))
