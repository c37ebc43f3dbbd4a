"""Evaluation on held-out prompts: greedy accuracy, value-guided step beam search, how well a
value ranks samples of one prompt (against the chance level of a score blind to correctness), and
majority vote vs Soft Self-Consistency over ``k`` samples."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from jaxsel.rl.oreo import consistency, search
from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo.config import OreoConfig
from jaxsel.rl.oreo.data import OfflineData, batch_masks, batch_rewards, collect, sample_responses
from jaxsel.utils.compile import cached_jit

Params = dict[str, Any]

__all__ = [
    "beam_accuracy",
    "beam_search",
    "greedy_accuracy",
    "rank_samples",
    "ranking_stats",
    "self_consistency_accuracy",
    "uninformative_score",
    "value_ranking",
]


def greedy_accuracy(params: Params, prompts: T.Batch, cfg: OreoConfig) -> Array:
    """Fraction of prompts solved by greedy decoding."""
    out = sample_responses(jax.random.key(0), params, prompts, cfg, k=1, temperature=0.0)
    return jnp.mean(batch_rewards(out.tokens, prompts.prompt_len, prompts.answer))


def _beam(key, policy, value, tokens, plen, *, mcfg, beam, max_steps, chunk, temperature):
    step = lambda c, t, p: M.decode_step(policy, c, t, p, mcfg)[::2]
    pre = lambda t: M.prefill(policy, t, mcfg)
    if value is None:  # chance level: uninformative_score of every prefix, blind to correctness
        w = _blind_weights(tokens.shape[1])
        val = lambda t: jnp.cumsum(t.astype(jnp.float32) * w)
    else:
        val = lambda t: M.values(value, t, mcfg)

    def one(args):
        k, tok, pl = args
        return search.step_beam_search(
            k,
            step,
            pre,
            val,
            tok,
            pl,
            beam_size=beam,
            max_steps=max_steps,
            max_step_tokens=5,
            temperature=temperature,
        )[0]

    keys = jax.random.split(key, tokens.shape[0])
    return jax.lax.map(one, (keys, tokens, plen), batch_size=chunk)


def beam_search(
    key: Array,
    policy: Params,
    value: Params | None,
    prompts: T.Batch,
    cfg: OreoConfig,
    *,
    beam: int,
    n_steps: int,
    temperature: float = 1.0,
) -> Array:
    """Token buffers ``[N, L]`` found by value-guided step beam search
    (:func:`search.step_beam_search`, ``n_steps + 2`` expansion rounds) with beam size ``beam``
    and expansions sampled at ``temperature``. ``value=None`` ranks by a fixed random function of
    the prefix instead of V: the same search with a value that knows nothing (its chance level)."""
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam must be a positive int, got {beam=}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps=}")
    static = ("mcfg", "beam", "max_steps", "chunk", "temperature")
    return cached_jit(_beam, cfg.fast_compile, static)(
        key,
        policy,
        value,
        prompts.tokens,
        prompts.prompt_len,
        mcfg=cfg.model,
        beam=beam,
        max_steps=n_steps + 2,
        chunk=64,
        temperature=temperature,
    )


def beam_accuracy(
    key: Array,
    policy: Params,
    value: Params | None,
    prompts: T.Batch,
    cfg: OreoConfig,
    *,
    beam: int,
    n_steps: int,
    temperature: float = 1.0,
) -> Array:
    """Accuracy of :func:`beam_search` (``value=None``: its chance level)."""
    toks = beam_search(
        key, policy, value, prompts, cfg, beam=beam, n_steps=n_steps, temperature=temperature
    )
    return jnp.mean(batch_rewards(toks, prompts.prompt_len, prompts.answer))


def uninformative_score(tokens: Array) -> Array:
    """A fixed random function of each response ``tokens [N, L] -> [N]``: equal on identical
    responses, (almost surely) different otherwise; it knows nothing about correctness."""
    return tokens.astype(jnp.float32) @ _blind_weights(tokens.shape[-1])


def _blind_weights(length: int) -> Array:
    """The fixed random weights of :func:`uninformative_score` (and of ``beam_search(value=None)``,
    which scores every prefix with them)."""
    return jax.random.normal(jax.random.key(0), (length,))


def ranking_stats(score: Array, reward: Array, *, k: int) -> dict[str, Array]:
    """How well ``score [N]`` ranks the ``k`` consecutive samples of each prompt (``reward [N]``
    in {0, 1}): accuracy of the best-of-``k`` by score, of a random sample, of the oracle, and
    the within-prompt AUC ``P(score(right) > score(wrong))`` over (right, wrong) pairs of the
    same prompt (ties count 1/2; NaN without such pairs)."""
    s, r = score.reshape(-1, k), reward.reshape(-1, k)
    pick = jnp.argmax(s, -1)
    right = r[:, :, None] > 0.5
    wrong = r[:, None, :] < 0.5
    pairs = right & wrong
    gt = (s[:, :, None] > s[:, None, :]) + 0.5 * (s[:, :, None] == s[:, None, :])
    return {
        "best_of_k": jnp.mean(jnp.take_along_axis(r, pick[:, None], 1)[:, 0]),
        "random_sample": jnp.mean(r),
        "oracle_any_correct": jnp.mean(jnp.max(r, -1)),
        # NaN when no prompt has both a right and a wrong sample
        "within_prompt_auc": jnp.sum(gt * pairs)
        / jnp.where(jnp.any(pairs), jnp.sum(pairs), jnp.nan),
    }


def _rank(value, tokens, plen, length, reward, *, mcfg, k):
    del plen
    # state before the final <eos>: the last state OREO trains V on, the one beam search reads
    v = jax.vmap(lambda t: M.values(value, t, mcfg))(tokens)
    at = jnp.clip(length - 2, 0, tokens.shape[1] - 1)
    v_end = jnp.take_along_axis(v, at[:, None], 1)[:, 0]
    vc, rc = v_end - jnp.mean(v_end), reward - jnp.mean(reward)
    corr = jnp.sum(vc * rc) / jnp.sqrt(jnp.sum(vc**2) * jnp.sum(rc**2) + 1e-12)
    # chance level of "best of k by a score of the response": a random function of the tokens
    # (equal on identical responses). The right samples of a prompt are mostly copies of one
    # another and the wrong ones differ, so such a score lands on a right one less often than a
    # random sample does (a value can be below random_sample and still above chance).
    uninformative = uninformative_score(tokens)
    st = ranking_stats(v_end, reward, k=k)
    return {
        "best_of_k_by_value": st.pop("best_of_k"),
        **st,
        "best_of_k_uninformative": ranking_stats(uninformative, reward, k=k)["best_of_k"],
        "corr_value_reward": corr,
    }


def rank_samples(value: Params, data: OfflineData, cfg: OreoConfig, *, k: int) -> dict[str, float]:
    """Does ``V`` rank the ``k`` consecutive samples of each prompt in ``data`` better than
    chance? Each sample is scored by the value of the state before ``<eos>``: best-of-``k`` by V,
    a random sample, the oracle, best-of-``k`` by :func:`uninformative_score` (the chance level
    of any best-of-``k`` by a score), the within-prompt AUC (:func:`ranking_stats`) and the
    correlation of V with the 0/1 reward across all samples."""
    out = cached_jit(_rank, cfg.fast_compile, ("mcfg", "k"))(
        value, data.tokens, data.prompt_len, data.length, data.reward, mcfg=cfg.model, k=k
    )
    return {n: float(x) for n, x in out.items()}


def value_ranking(
    key: Array, policy: Params, value: Params, prompts: T.Batch, cfg: OreoConfig, *, k: int
) -> dict[str, float]:
    """:func:`rank_samples` on ``k`` fresh samples per prompt of ``policy`` (at
    ``cfg.temperature``)."""
    data, _ = collect(key, policy, prompts, cfg, k=k, temperature=cfg.temperature)
    return rank_samples(value, data, cfg, k=k)


def self_consistency_accuracy(
    key: Array, params: Params, prompts: T.Batch, cfg: OreoConfig, *, k: int
) -> dict[str, float]:
    """Majority vote vs Soft Self-Consistency (mean / min / mean-log; arXiv 2402.13212) and our
    likelihood-weighted vote (:func:`consistency.soft_vote`) over ``k`` samples."""
    data, out = collect(key, params, prompts, cfg, k=k, temperature=cfg.temperature)
    mask, _ = batch_masks(data.tokens, data.prompt_len, data.length)
    answers = jax.vmap(T.answer_of)(data.tokens, data.prompt_len).reshape(-1, k)
    lp = out.logps.reshape(-1, k, out.logps.shape[-1])
    mask = mask.reshape(lp.shape)
    res = {"majority": jax.vmap(consistency.majority_vote)(answers)}
    for agg in ("mean", "min", "mean_log"):
        f = lambda a, l, m, agg=agg: consistency.soft_self_consistency(a, l, m, aggregation=agg)
        res[f"soft_sc_{agg}"] = jax.vmap(f)(answers, lp, mask)
    for agg in ("mean", "min"):
        f = lambda a, l, m, agg=agg: consistency.soft_vote(a, l, m, aggregation=agg)
        res[f"soft_vote_{agg}"] = jax.vmap(f)(answers, lp, mask)
    return {name: float(jnp.mean(v == prompts.answer)) for name, v in res.items()}
