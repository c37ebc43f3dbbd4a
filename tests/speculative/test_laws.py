"""Exactness by enumeration: every scheme's output law equals the target.

For each scheme, ``*_law`` (the output law given the drafts, with the scheme's randomness summed
out) is checked tuple by tuple against an independent float64 reference (``_spec_reference.py``),
and the reference law averaged over all ``V^K`` draft tuples, weighted by ``prod_i q_i(x_i)``, is
checked to equal ``p`` to 1e-12: a proof by exhaustive computation for these instances, edge cases
included (``p == q``, disjoint supports, zeros in ``p`` or ``q``). The library's float32 laws, run
under ``jit`` and ``vmap``, must agree to 2e-6, and each ``*_acceptance`` must equal the
enumerated acceptance mass.
"""

from __future__ import annotations

import functools

import _spec_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsel.speculative as S


def _table(v):
    return np.random.default_rng(2).uniform(size=(v, v))


def _weights(v):
    return np.random.default_rng(3).uniform(0.1, 3.0, size=v)


# name -> (library law, reference law, draft counts, extra keyword arguments for vocabulary v)
SCHEMES = {
    "speculative": (S.speculative_law, ref.speculative, (1,), lambda v: {}),
    "recursive_rejection": (
        S.recursive_rejection_law,
        ref.recursive_rejection,
        (2, 3),
        lambda v: {},
    ),
    "k_sequential": (S.k_sequential_law, ref.k_sequential, (1, 2, 3), lambda v: {}),
    "importance": (S.importance_law, ref.importance, (2, 3), lambda v: {}),
    "weighted_importance": (
        S.importance_law,
        ref.importance,
        (2, 3),
        lambda v: {"weights": _weights(v)},
    ),
    "two_step": (S.two_step_law, ref.two_step, (2,), lambda v: {"selection_table": _table(v)}),
}
CASES = [(name, k) for name, spec in SCHEMES.items() for k in spec[2]]


@functools.cache
def jitted(fn, **static):
    """``fn`` under ``jit`` with the given keyword arguments fixed (compiled once per shape)."""
    return jax.jit(functools.partial(fn, **static))


def _f32(kw):
    return {k: jnp.asarray(v, jnp.float32) for k, v in kw.items()}


def _acceptance(p, q, kw, *, name, k):
    if name == "speculative":
        return S.speculative_acceptance(p, q)
    if name == "recursive_rejection":
        return S.recursive_rejection_acceptance(p, q, num_drafts=k)
    if name == "k_sequential":
        return S.k_sequential_acceptance(p, q, num_drafts=k)
    if name in ("importance", "weighted_importance"):
        return S.importance_acceptance(p, q, num_drafts=k, **kw)
    return S.two_step_acceptance(p, q, **kw)


@functools.cache
def _batched(name, k):
    """jit(vmap over instances) of (law for every draft tuple, acceptance)."""
    law_fn = SCHEMES[name][0]

    def one(p, q, tuples, kw):
        laws = jax.vmap(lambda t: law_fn(p, q, t, **kw))(tuples)
        return laws, _acceptance(p, q, kw, name=name, k=k)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)))


@pytest.mark.parametrize(("name", "k"), CASES)
def test_law_is_target(name, k, laws4):
    _, ref_fn, _, kw_fn = SCHEMES[name]
    v = 4
    kw = kw_fn(v)
    p = jnp.asarray(np.stack([c[0] for c in laws4]), jnp.float32)
    q = jnp.asarray(np.stack([c[1] for c in laws4]), jnp.float32)
    tuples = S.draft_tuples(v, k)
    (laws, accept_laws), acceptance = _batched(name, k)(p, q, jnp.asarray(tuples), _f32(kw))
    laws, accept_laws = np.asarray(laws, np.float64), np.asarray(accept_laws, np.float64)
    for n, (pn, qn) in enumerate(laws4):
        for t, xs in enumerate(tuples):
            want, want_acc = ref_fn(pn, qn, xs, **kw)
            np.testing.assert_allclose(laws[n, t], want, atol=2e-6, err_msg=f"{name} {n=} {xs=}")
            np.testing.assert_allclose(
                accept_laws[n, t], want_acc, atol=2e-6, err_msg=f"{name} {n=} {xs=}"
            )
        ref_law, ref_acc, ref_hit = ref.enumerate_law(ref_fn, pn, qn, k, **kw)
        np.testing.assert_allclose(ref_law, pn, atol=1e-12, err_msg=f"{name} {n=}: law is not p")
        weight = np.prod(ref.rows(qn, k)[np.arange(k)[None, :], tuples], axis=1)
        np.testing.assert_allclose(weight @ laws[n], pn, atol=2e-6)
        np.testing.assert_allclose(float(acceptance[n]), ref_acc.sum(), atol=2e-6)
        # An accepted output is a draft token: acceptance <= P(out in drafts).
        assert ref_acc.sum() <= ref_hit + 1e-12


@pytest.mark.parametrize("name", ["recursive_rejection", "importance", "two_step"])
def test_per_draft_laws_are_exact(name, laws4):
    """Drafts from different laws ``q_i`` (``draft_probs [K, V]``): K independent chains."""
    law_fn, ref_fn, _, kw_fn = SCHEMES[name]
    k, v = 2, 4
    kw = kw_fn(v)
    rng = np.random.default_rng(7)
    exact = jitted(S.exact_law, law_fn=law_fn, num_drafts=k)
    for p, _ in laws4[:4]:
        q = rng.dirichlet(np.full(v, 0.7), size=k)
        law, _, _ = ref.enumerate_law(ref_fn, p, q, k, **kw)
        np.testing.assert_allclose(law, p, atol=1e-12)
        got, _, _ = exact(jnp.float32(p), jnp.float32(q), **_f32(kw))
        np.testing.assert_allclose(got, p, atol=2e-6)


@pytest.mark.parametrize("name", ["recursive_rejection", "k_sequential", "importance", "two_step"])
def test_masked_drafts_take_no_part(name, laws4):
    """With ``valid`` masking drafts out, the law is the scheme's law on the valid drafts alone."""
    law_fn, ref_fn, _, kw_fn = SCHEMES[name]
    v = 4
    kw = kw_fn(v)
    p, q = laws4[0]
    if name == "two_step":
        xs, masks = np.array([1, 3]), ([True, False], [False, True], [False, False])
    else:
        xs, masks = np.array([1, 3, 0]), ([True, False, True], [False, False, True], [False] * 3)
    law = jitted(law_fn)
    for mask in map(np.array, masks):
        got, got_acc = law(
            jnp.float32(p), jnp.float32(q), jnp.asarray(xs), valid=jnp.asarray(mask), **_f32(kw)
        )
        if name == "two_step":  # one valid draft: plain speculative sampling; none: the target
            want, want_acc = ref.speculative(p, q, xs[mask]) if mask.any() else (p, np.zeros(v))
        else:
            want, want_acc = ref_fn(p, q, xs, valid=mask, **kw)
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"{mask=}")
        np.testing.assert_allclose(got_acc, want_acc, atol=2e-6, err_msg=f"{mask=}")


def test_support_size_keeps_the_law_exact(laws5):
    """Weighted IS with the top-m grouping is exact; ``support_size >= V`` is the ungrouped scheme."""
    for m in (2,):
        exact = jitted(S.exact_law, law_fn=S.importance_law, num_drafts=2, support_size=m)
        acceptance = jitted(S.importance_acceptance, num_drafts=2, support_size=m)
        for p, q in laws5:
            law, acc, _ = exact(jnp.float32(p), jnp.float32(q))
            np.testing.assert_allclose(law, p, atol=2e-6)
            np.testing.assert_allclose(
                float(acceptance(jnp.float32(p), jnp.float32(q))), float(acc.sum()), atol=2e-6
            )
    p, q = laws5[0]
    x = jnp.array([0, 2])
    full = jitted(S.importance_law)(jnp.float32(p), jnp.float32(q), x)
    same = jitted(S.importance_law, support_size=5)(jnp.float32(p), jnp.float32(q), x)
    np.testing.assert_allclose(full[0], same[0], atol=1e-7)


def test_intermediate_laws_match_definition():
    rng = np.random.default_rng(11)
    w = rng.uniform(0.0, 2.0, size=(3, 4))
    qs = rng.dirichlet(np.ones(4), size=3)
    got = jitted(S.intermediate_law, num_drafts=3)(jnp.float32(qs), jnp.float32(w))
    np.testing.assert_allclose(got, ref.is_intermediate(qs, w, np.ones(3, bool)), atol=2e-6)
    table = rng.uniform(size=(4, 4))
    got = jitted(S.pair_intermediate_law)(jnp.float32(qs[:2]), jnp.float32(table))
    np.testing.assert_allclose(got, ref.pair_intermediate(qs[:2], table), atol=2e-6)


def test_acceptance_edges_and_monotonicity(laws5):
    # Length 5 like the instances, so each jitted function compiles once.
    u = jnp.full((5,), 0.2)
    a = jnp.array([0.5, 0.5, 0.0, 0.0, 0.0])
    b = jnp.array([0.0, 0.0, 0.5, 0.5, 0.0])
    fns = (S.recursive_rejection_acceptance, S.k_sequential_acceptance, S.importance_acceptance)
    for fn in fns:
        for k in (1, 2, 3):
            f = jitted(fn, num_drafts=k)
            assert float(f(u, u)) == pytest.approx(1.0, abs=1e-6)
            assert float(f(a, b)) == pytest.approx(0.0, abs=1e-6)
    # More drafts never lower the acceptance; one draft is 1 - TV(p, q).
    for p, q in laws5:
        p32, q32 = jnp.float32(p), jnp.float32(q)
        for fn in fns:
            accs = [float(jitted(fn, num_drafts=k)(p32, q32)) for k in (1, 2, 3)]
            assert accs[0] <= accs[1] + 1e-6 and accs[1] <= accs[2] + 1e-6, (fn.__name__, accs)
            assert accs[0] == pytest.approx(1 - 0.5 * np.abs(p - q).sum(), abs=1e-6)
