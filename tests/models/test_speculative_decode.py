"""Speculative decoding with sparse-attention drafts: the emitted tokens follow the dense target."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsel.speculative as S
from jaxsel.models import DecoderConfig, Dense, TokenSelect, generate, init_params
from jaxsel.models.decoder import forward
from jaxsel.models.generate import prefill_arguments, prefill_jit, sampling_probs
from jaxsel.models.speculative import speculative_decode_jit, speculative_generate

V = 4
CFG = DecoderConfig(
    vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2
)
DRAFT = TokenSelect(n_sink=1, top_k=2, n_local=2)


@pytest.fixture(scope="module")
def params():
    p = init_params(jax.random.key(0), CFG)
    # Sharper, context-dependent next-token laws than a random init gives (TV 0.35 between the
    # laws at temperatures 1 and 3), so that a wrong distribution or context shows.
    return {**p, "lm_head": p["lm_head"] * 15.0}


PROMPT = np.random.default_rng(0).integers(0, V, 24).astype(np.int32)


GREEDY_CASES = [(s, 1, 3) for s in sorted(S.SCHEMES)]
GREEDY_CASES += [(s, 3, 2) for s in sorted(S.SCHEMES) if s != "single"]


@pytest.mark.parametrize(("scheme", "n_drafts", "gamma"), GREEDY_CASES)
def test_greedy_speculative_equals_dense_greedy(params, scheme, n_drafts, gamma):
    prompts = [PROMPT, PROMPT[:17]]
    want = generate(params, CFG, prompts, max_new_tokens=10, cache_len=48, prefill_chunk=8)
    got, stats = speculative_generate(
        params,
        CFG,
        prompts,
        jax.random.key(0),
        max_new_tokens=10,
        scheme=S.SCHEMES[scheme],
        n_drafts=n_drafts,
        draft_len=gamma,
        draft_policy=DRAFT,
        temperature=0.0,
        prefill_chunk=8,
    )
    np.testing.assert_array_equal(got, want)
    # Each round emits its accepted drafts plus one token; the last round may overshoot.
    emitted = np.asarray(stats.accepted) + np.asarray(stats.rounds)
    assert np.all((emitted >= 10) & (emitted <= 10 + gamma))


SHORT = PROMPT[:8]  # a short context: each cached token weighs on the next law


def _target_law(params, n_tokens: int, temperature: float) -> np.ndarray:
    """Exact law of the first ``n_tokens`` sampled tokens under dense attention, [V]*n."""
    law = np.zeros((V,) * n_tokens)
    fwd = jax.jit(lambda t: forward(params, t, config=CFG)[-1])
    for seq in itertools.product(range(V), repeat=n_tokens):
        prob = 1.0
        for i in range(n_tokens):
            ctx = jnp.asarray(np.concatenate([SHORT, np.asarray(seq[:i], np.int32)]))
            prob *= float(sampling_probs(fwd(ctx), temperature=temperature)[seq[i]])
        law[seq] = prob
    return law


def _sample_short(params, scheme, n_drafts, gamma, n_tok, cache_len, seed, n_runs):
    """``n_runs`` sampled speculative decodes of SHORT (dense target at temperature 1, draft at
    temperature 3, far from it, so that rejections are frequent), vmapped over keys."""
    _, args, static = prefill_arguments(
        [SHORT], max_new_tokens=n_tok, cache_len=cache_len, policy="dense", prefill_chunk=4
    )
    st = prefill_jit(params, *args, config=CFG, **static)
    run = lambda key: speculative_decode_jit(
        params,
        st.k[0],
        st.v[0],
        st.pos[0],
        st.token[0],
        key,
        config=CFG,
        draft_policy=DRAFT,
        target_policy=Dense(),
        scheme=S.SCHEMES[scheme],
        n_drafts=n_drafts,
        draft_len=gamma,
        max_new_tokens=n_tok,
        temperature=1.0,
        draft_temperature=3.0,
    )
    return jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(seed), n_runs))


@pytest.mark.parametrize("scheme", sorted(S.SCHEMES))
def test_sampled_tokens_follow_the_dense_law(params, scheme):
    """Chi-square on the joint law of the first 3 tokens (64 cells) over 8000 runs, with a draft
    at temperature 3 (far from the target at 1, so that rejections are frequent) and rounds of
    one draft token (so the 3 tokens span two rounds, bonus tokens and the cache commit)."""
    n_drafts, gamma, n_tok, n_runs = (1, 1, 3, 8000) if scheme == "single" else (2, 1, 3, 8000)
    law = _target_law(params, n_tok, 1.0)
    toks, stats = _sample_short(params, scheme, n_drafts, gamma, n_tok, 16, 1, n_runs)
    toks = np.asarray(toks)
    counts = np.zeros_like(law)
    np.add.at(counts, tuple(toks.T), 1)
    expected = law * n_runs
    keep = expected >= 5  # pool the rare cells into one
    chi2 = np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep])
    rest_e, rest_c = expected[~keep].sum(), counts[~keep].sum()
    if rest_e > 0:
        chi2 += (rest_c - rest_e) ** 2 / rest_e
    dof = int(keep.sum()) + (rest_e > 0) - 1
    from scipy import stats as sps

    # P(false failure) = 1e-6 at this threshold; the draft's own law is rejected with power ~1.
    assert chi2 < sps.chi2.isf(1e-6, dof), (chi2, dof)
    assert float(np.mean(np.asarray(stats.accepted))) < n_tok  # rejections happened


def test_committed_cache_is_the_dense_cache_of_the_emitted_tokens(params):
    """After sampled rounds with 3 chains that disagree (draft at temperature 3), the target's cache
    holds the dense keys and values of the prompt and the emitted tokens: a commit from a chain
    that drew other tokens would leave keys of tokens that were never emitted."""
    n_tok = 8
    toks, stats = _sample_short(params, "specinfer", 3, 2, n_tok, 24, 2, 8)
    m = len(SHORT) + n_tok - 1  # every emitted token but the last is in the cache
    assert np.all(np.asarray(stats.pos) >= m)
    for b in range(8):
        seq = np.concatenate([SHORT, np.asarray(toks[b])])
        _, a2, s2 = prefill_arguments(
            [seq], max_new_tokens=1, cache_len=24, policy="dense", prefill_chunk=4
        )
        ref = prefill_jit(params, *a2, config=CFG, **s2)
        # Decode steps and prefill chunks sum the same attention terms in other orders: float32
        # rounding of O(1) values, far below the O(1) change a key of another token makes.
        np.testing.assert_allclose(stats.cache_k[b][:, :m], ref.k[0][:, :m], atol=1e-4)
        np.testing.assert_allclose(stats.cache_v[b][:, :m], ref.v[0][:, :m], atol=1e-4)
