"""Offline data: ``k`` sampled responses per prompt, scored 0/1 by the task's exact checker, and the
batched masks and log-probabilities the trainers and evaluations read from them."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo import search
from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo.config import OreoConfig
from jaxsel.utils.compile import cached_jit

Params = dict[str, Any]

__all__ = [
    "OfflineData",
    "batch_logps",
    "batch_masks",
    "batch_rewards",
    "collect",
    "dpo_pairs",
    "sample_responses",
]


class OfflineData(NamedTuple):
    """Sampled responses ``[N, ...]``: buffers, layout, per-response reward and prompt id."""

    tokens: Array
    prompt_len: Array
    length: Array
    reward: Array
    prompt_id: Array


batch_rewards = jax.jit(jax.vmap(T.reward))
"""``batch_rewards(tokens [N, L], prompt_len [N], answer [N]) -> [N]`` 0/1 rewards."""


def batch_masks(tokens: Array, prompt_len: Array, length: Array) -> tuple[Array, Array]:
    """:func:`task.sequence_masks` of ``[N, L]`` buffers: ``(mask, step_starts)``, ``[N, L-1]``."""
    return jax.vmap(T.sequence_masks)(tokens, prompt_len, length)


def batch_logps(params: Params, tokens: Array, mcfg: M.DecoderConfig) -> tuple[Array, Array]:
    """:func:`model.token_logps` of ``[N, L]`` buffers: ``(logp [N, L-1], logits [N, L-1, V])``."""
    return jax.vmap(lambda t: M.token_logps(params, t, mcfg))(tokens)


def _sample_k(key, params, tokens, plen, *, mcfg, k, temperature):
    step = lambda c, t, p: M.decode_step(params, c, t, p, mcfg)[::2]

    def one(kk, tok, pl):
        return search.sample(kk, step, M.init_cache(mcfg), tok, pl, temperature=temperature)

    n = tokens.shape[0]
    keys = jax.random.split(key, n * k)
    rep = lambda x: jnp.repeat(x, k, axis=0)
    return jax.vmap(one)(keys, rep(tokens), rep(plen))


def sample_responses(
    key: Array, params: Params, prompts: T.Batch, cfg: OreoConfig, *, k: int, temperature: float
) -> search.Sample:
    """``k`` responses per prompt (prompt-major, ``[N * k, ...]``); ``temperature=0`` is greedy."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int (samples per prompt), got {k=}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature=}")
    fn = cached_jit(_sample_k, cfg.fast_compile, ("mcfg", "k", "temperature"))
    return fn(
        key,
        params,
        prompts.tokens,
        prompts.prompt_len,
        mcfg=cfg.model,
        k=k,
        temperature=temperature,
    )


def collect(
    key: Array, params: Params, prompts: T.Batch, cfg: OreoConfig, *, k: int, temperature: float
) -> tuple[OfflineData, search.Sample]:
    """``k`` sampled responses per prompt, scored 0/1 by the exact checker."""
    out = sample_responses(key, params, prompts, cfg, k=k, temperature=temperature)
    rep = lambda x: jnp.repeat(x, k, axis=0)
    plen = rep(prompts.prompt_len)
    r = batch_rewards(out.tokens, plen, rep(prompts.answer))
    pid = rep(jnp.arange(prompts.tokens.shape[0]))
    return OfflineData(out.tokens, plen, out.length, r, pid), out


def dpo_pairs(data: OfflineData, k: int) -> tuple[Array, Array, Array]:
    """Per prompt, the first correct and the first wrong sample: ``(chosen, rejected, valid)``."""
    r = data.reward.reshape(-1, k)
    base = jnp.arange(r.shape[0]) * k
    chosen = base + jnp.argmax(r > 0.5, -1)
    rejected = base + jnp.argmax(r < 0.5, -1)
    valid = jnp.any(r > 0.5, -1) & jnp.any(r < 0.5, -1)
    return chosen, rejected, valid
