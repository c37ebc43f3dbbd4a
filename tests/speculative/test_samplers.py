"""The samplers draw from the exact laws: chi-square tests, jit/vmap, and argument errors.

Each ``*_select`` is run ``N = 40000`` times under ``jit(vmap)`` with fixed seeds, once with the
drafts redrawn each time from ``q`` (so the output should be distributed as ``p`` jointly with the
acceptance flag) and once with one fixed draft tuple; the counts of the ``2V`` outcomes
``(token, accepted)`` are compared with the float64 reference laws (``_spec_reference.py``).
Outcomes of probability zero must never occur. The chi-square critical value is the
Wilson-Hilferty quantile at ``alpha = 1e-3``, conservative for ``df <= 7`` (true level 0.87e-3 to
0.92e-3), so each test fails falsely with probability below 1e-3 (and the seeds are fixed, so a pass
stays a pass). Power, by the non-central chi-square with ``lambda = N delta^2 (1/e_1 + 1/e_2)``:
at least 0.999 against a law that moves ``delta = 0.015`` of probability between any two cells of
probability at most 0.3 (``df <= 7``), and at least 0.79 for ``delta = 0.01``.
"""

from __future__ import annotations

import functools

import _spec_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsel.speculative as S

N = 40_000
Z_999 = 3.090232  # standard normal quantile at 1 - 1e-3


def _critical(df: int) -> float:
    return df * (1 - 2 / (9 * df) + Z_999 * np.sqrt(2 / (9 * df))) ** 3


def _table(v):
    return np.random.default_rng(2).uniform(size=(v, v))


# name -> (select, reference law, K, per-draft q, keyword arguments)
SAMPLERS = {
    "speculative": (S.speculative_select, ref.speculative, 1, False, {}),
    "recursive_rejection": (S.recursive_rejection_select, ref.recursive_rejection, 3, True, {}),
    "k_sequential": (S.k_sequential_select, ref.k_sequential, 3, False, {}),
    "importance": (S.importance_select, ref.importance, 3, True, {}),
    "importance_grouped": (S.importance_select, None, 2, False, {"support_size": 2}),
    "two_step": (S.two_step_select, ref.two_step, 2, True, {"selection_table": _table(4)}),
}


@functools.cache
def _runner(name):
    select, _, _, _, kw = SAMPLERS[name]
    kw = {k: jnp.asarray(v, jnp.float32) if isinstance(v, np.ndarray) else v for k, v in kw.items()}

    def run(keys, p, q, drafts):
        return jax.vmap(lambda key, x: select(key, p, q, x, **kw))(keys, drafts)

    return jax.jit(run)


def _chi_square(tokens, accepted, drafts, law, accept_law):
    tokens, accepted, drafts = map(np.asarray, (tokens, accepted, drafts))
    assert accepted.dtype == np.bool_
    # An accepted token is one of the drafts.
    assert np.all(np.any(drafts == tokens[:, None], axis=1)[accepted])
    v = law.shape[0]
    expected = N * np.concatenate([accept_law, law - accept_law])
    observed = np.bincount(tokens + v * (~accepted), minlength=2 * v)
    impossible = expected < 1e-9 * N
    assert np.all(observed[impossible] == 0), (observed, expected)
    e, o = expected[~impossible], observed[~impossible]
    df = len(e) - 1
    stat = float(np.sum((o - e) ** 2 / e))
    assert df == 0 or stat < _critical(df), f"chi-square {stat:.1f} >= {_critical(df):.1f} at {df=}"


def _instance(per_draft, k):
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.full(4, 1.0))
    q = rng.dirichlet(np.full(4, 1.0), size=k) if per_draft else rng.dirichlet(np.full(4, 1.0))
    return p, q


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_law_with_random_drafts(name):
    _, ref_fn, k, per_draft, kw = SAMPLERS[name]
    p, q = _instance(per_draft, k)
    rng = np.random.default_rng(6)
    rows = ref.rows(q, k)
    drafts = np.stack([rng.choice(4, size=N, p=rows[i]) for i in range(k)], axis=1).astype(np.int32)
    keys = jax.random.split(jax.random.key(0), N)
    tokens, accepted = _runner(name)(keys, jnp.float32(p), jnp.float32(q), jnp.asarray(drafts))
    if ref_fn is None:  # the grouped weighted IS: its law from the library's exact enumeration
        exact = jax.jit(functools.partial(S.exact_law, law_fn=S.importance_law, num_drafts=k, **kw))
        law, accept_law, _ = exact(jnp.float32(p), jnp.float32(q))
        law, accept_law = np.asarray(law, np.float64), np.asarray(accept_law, np.float64)
        np.testing.assert_allclose(law, p, atol=2e-6)
    else:
        law, accept_law, _ = ref.enumerate_law(ref_fn, p, q, k, **kw)
    _chi_square(tokens, accepted, drafts, law, accept_law)


@pytest.mark.parametrize("name", [n for n, s in SAMPLERS.items() if s[1] is not None])
def test_sampler_law_given_drafts(name):
    _, ref_fn, k, per_draft, kw = SAMPLERS[name]
    p, q = _instance(per_draft, k)
    x = np.array([2, 0, 2][:k], np.int32)
    drafts = np.broadcast_to(x, (N, k))
    keys = jax.random.split(jax.random.key(1), N)
    tokens, accepted = _runner(name)(keys, jnp.float32(p), jnp.float32(q), jnp.asarray(drafts))
    law, accept_law = ref_fn(p, q, x, **kw)
    _chi_square(tokens, accepted, drafts, law, accept_law)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_jit_vmap_match_single_calls(name):
    """``jit(vmap(select))`` (the runner above) gives, key by key, what single calls give."""
    select, _, k, per_draft, kw = SAMPLERS[name]
    kw = {
        key: jnp.asarray(v, jnp.float32) if isinstance(v, np.ndarray) else v
        for key, v in kw.items()
    }
    p, q = map(jnp.float32, _instance(per_draft, k))
    drafts = jnp.asarray(np.random.default_rng(8).integers(0, 4, size=(N, k)), jnp.int32)
    keys = jax.random.split(jax.random.key(2), N)
    tokens, accepted = _runner(name)(keys, p, q, drafts)
    single = jax.jit(functools.partial(select, **kw))
    for i in range(4):
        token_i, accepted_i = single(keys[i], p, q, drafts[i])
        assert (int(token_i), bool(accepted_i)) == (int(tokens[i]), bool(accepted[i]))
        assert token_i.dtype == jnp.int32 and accepted_i.dtype == jnp.bool_


def test_rejected_output_is_never_a_tried_draft():
    """Single-draft and recursive rejection: after rejecting every draft the residual has no mass on them."""
    p, q = _instance(True, 3)
    rng = np.random.default_rng(9)
    drafts = np.stack([rng.choice(4, size=N, p=q[i]) for i in range(3)], axis=1).astype(np.int32)
    keys = jax.random.split(jax.random.key(3), N)
    tokens, accepted = _runner("recursive_rejection")(
        keys, jnp.float32(p), jnp.float32(q), jnp.asarray(drafts)
    )
    tokens, rejected = np.asarray(tokens), ~np.asarray(accepted)
    assert rejected.any()
    assert not np.any(drafts[rejected] == tokens[rejected, None])


@pytest.mark.parametrize("name", sorted(S.SCHEMES))
def test_named_schemes_share_one_signature(name):
    """``SCHEMES[name](key, p, q, drafts[k])``: exact by the tests above; here shape, dtype, jit."""
    rng = np.random.default_rng(12)
    v, k = 20, 1 if name == "single" else 2  # v > IMPORTANCE_SUPPORT: the grouped path
    p, q = (jnp.float32(rng.dirichlet(np.ones(v))) for _ in range(2))
    drafts = jnp.asarray(rng.integers(0, v, size=(64, k)), jnp.int32)
    keys = jax.random.split(jax.random.key(4), 64)
    tokens, accepted = jax.jit(jax.vmap(S.SCHEMES[name], in_axes=(0, None, None, 0)))(
        keys, p, q, drafts
    )
    assert tokens.dtype == jnp.int32 and accepted.dtype == jnp.bool_
    assert np.all((np.asarray(tokens) >= 0) & (np.asarray(tokens) < v))
    hit = np.any(np.asarray(drafts) == np.asarray(tokens)[:, None], axis=1)
    assert np.all(hit[np.asarray(accepted)])


def test_grouped_importance_is_exact_past_the_support():
    """``SCHEMES["importance"]`` groups tokens beyond the top IMPORTANCE_SUPPORT: still exact."""
    rng = np.random.default_rng(13)
    v = S.IMPORTANCE_SUPPORT + 4
    p, q = (jnp.float32(rng.dirichlet(np.full(v, 0.5))) for _ in range(2))
    exact = jax.jit(
        functools.partial(
            S.exact_law, law_fn=S.importance_law, num_drafts=2, support_size=S.IMPORTANCE_SUPPORT
        )
    )
    law, _, _ = exact(p, q)
    np.testing.assert_allclose(law, p, atol=2e-6)


P = jnp.array([0.5, 0.25, 0.25])
Q = jnp.array([0.2, 0.3, 0.5])
X2 = jnp.array([0, 2], jnp.int32)
KEY = jax.random.key(0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: S.recursive_rejection_select(KEY, P[None], Q, X2), "target_probs"),
        (lambda: S.recursive_rejection_select(KEY, P, Q[:2], X2), "draft_probs"),
        (lambda: S.recursive_rejection_select(KEY, P, jnp.stack([Q, Q, Q]), X2), "draft_probs"),
        (lambda: S.recursive_rejection_select(KEY, P, Q, X2[None]), "draft_tokens"),
        (lambda: S.recursive_rejection_select(KEY, P, Q, jnp.array([0, 3])), "draft_tokens"),
        (lambda: S.recursive_rejection_select(KEY, P * 2, Q, X2), "target_probs"),
        (
            lambda: S.recursive_rejection_select(KEY, P, jnp.array([1.2, -0.2, 0.0]), X2),
            "draft_probs",
        ),
        (lambda: S.recursive_rejection_select(KEY, P, Q, X2, valid=jnp.array([True])), "valid"),
        (lambda: S.speculative_select(KEY, P, Q, X2), "draft_tokens"),
        (lambda: S.k_sequential_select(KEY, P, jnp.stack([Q, Q]), X2), "draft_probs"),
        (
            lambda: S.two_step_select(KEY, P, Q, jnp.array([0, 1, 2]), selection_table=jnp.eye(3)),
            "draft_tokens",
        ),
        (lambda: S.two_step_select(KEY, P, Q, X2, selection_table=jnp.eye(2)), "selection_table"),
        (
            lambda: S.two_step_select(KEY, P, Q, X2, selection_table=2 * jnp.eye(3)),
            "selection_table",
        ),
        (lambda: S.importance_select(KEY, P, Q, X2, weights=-jnp.ones(3)), "weights"),
        (lambda: S.importance_select(KEY, P, Q, X2, weights=jnp.ones(4)), "weights"),
        (lambda: S.importance_select(KEY, P, Q, X2, support_size=0), "support_size"),
        (
            lambda: S.importance_acceptance(
                jnp.full(64, 1 / 64), jnp.full(64, 1 / 64), num_drafts=4
            ),
            "support_size",
        ),
        (lambda: S.recursive_rejection_acceptance(P, Q, num_drafts=0), "num_drafts"),
        (lambda: S.acceptance_upper_bound(P, jnp.stack([Q, Q]), num_drafts=2), "draft_probs"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_dtype_errors():
    with pytest.raises(TypeError, match="draft_tokens"):
        S.speculative_select(KEY, P, Q, jnp.array([0.0]))
    with pytest.raises(TypeError, match="valid"):
        S.k_sequential_select(KEY, P, Q, X2, valid=jnp.array([1, 0]))
