"""Lossless multi-draft speculative decoding with sparse-attention drafts (self-speculation).

The draft model is the target model itself with a cheap attention policy (TokenSelect, streaming,
Quest) over the target's KV cache; the target is the same weights with dense attention. Each round,
for one prompt with cache position ``pos`` and current token ``x``:

1. **Draft.** ``K`` independent chains each sample ``gamma`` tokens from the draft,
   ``d_c,t ~ q(. | x, d_c,<t)`` (the chains share the cache up to ``pos`` and write their own
   tails).
2. **Verify.** One dense forward pass per chain over the block ``[x, d_c,1 .. d_c,gamma]`` gives
   the target distributions ``p(. | x, d_c,<t)`` for ``t = 0 .. gamma`` and writes dense keys and
   values for the block.
3. **Select.** Depth by depth, a token-level multi-draft scheme (``scheme``, e.g. from
   :mod:`jaxsel.speculative`) chooses the output token among the draft tokens of the chains still
   alive (those whose tokens so far equal the accepted ones; given that, their next tokens are
   i.i.d. draws of ``q`` in the same context) so that its law is exactly the target's ``p``. A
   rejection ends the round with the scheme's corrected token; if every depth accepts, a bonus
   token is drawn from ``p`` at depth ``gamma``.
4. **Commit.** The accepted tokens' dense keys and values of a surviving chain are copied to every
   chain; ``pos`` advances by the number of emitted tokens (accepted + 1).

So the emitted sequence has the law of sampling from the dense target (Leviathan et al. 2023,
arXiv 2211.17192, for one draft; Khisti et al. 2024, arXiv 2410.18234, for K drafts), for any
draft policy: a worse draft only lowers the acceptance rate. ``temperature=0`` makes both
distributions one-hot and the output is the dense greedy output.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsel.models import policies as pol
from jaxsel.models.config import DecoderConfig
from jaxsel.models.decoder import Params, forward_chunk
from jaxsel.models.generate import batch_map, prefill_arguments, prefill_jit, sampling_probs
from jaxsel.speculative import Scheme


class SpeculativeStats(NamedTuple):
    """Per prompt: verification rounds (target calls) and draft tokens accepted; block
    efficiency, the tokens emitted per target call, is ``new_tokens / rounds``. ``cache_k``,
    ``cache_v`` are the target's cache after the last round, valid below ``pos`` (every emitted
    token but the last is written), for continuing or checking."""

    rounds: jax.Array
    accepted: jax.Array
    cache_k: jax.Array
    cache_v: jax.Array
    pos: jax.Array


def _select_depth(scheme: Scheme, n_drafts: int, key, p, q, drafts, alive):
    """One depth of the selection: the scheme over the alive chains' tokens (alive first)."""
    order = jnp.argsort(~alive, stable=True)
    n_alive = jnp.sum(alive)
    sorted_drafts = drafts[order]
    branches = [
        functools.partial(lambda k, key, p, q, d: scheme(key, p, q, d[:k]), k)
        for k in range(1, n_drafts + 1)
    ]
    token, accepted = jax.lax.switch(
        jnp.clip(n_alive - 1, 0, n_drafts - 1), branches, key, p, q, sorted_drafts
    )
    return jnp.asarray(token, jnp.int32), jnp.asarray(accepted, bool)


def _round(
    params: Params,
    carry: tuple,
    *,
    config: DecoderConfig,
    draft_policy: pol.Policy,
    target_policy: pol.Policy,
    scheme: Scheme,
    n_drafts: int,
    draft_len: int,
    temperature: float,
    top_p: float,
    draft_temperature: float,
):
    ck, cv, pos, tok, out, n_out, key, rounds, n_acc = carry
    K, g = n_drafts, draft_len
    key, k_draft, k_sel, k_bonus = jax.random.split(key, 4)
    probs = functools.partial(sampling_probs, temperature=temperature, top_p=top_p)
    draft_probs = functools.partial(sampling_probs, temperature=draft_temperature, top_p=top_p)

    def draft_step(c, x):
        ck, cv, toks = c
        t, kt = x

        def one(ck_c, cv_c, tok_c):
            logits, ck_c, cv_c, _ = forward_chunk(
                params, tok_c[None], ck_c, cv_c, pos + t, config=config, policy=draft_policy
            )
            return logits[0], ck_c, cv_c

        logits, ck, cv = batch_map(one, ck, cv, toks, unit_args=(0, 1), unit_outs=(1, 2))
        q = draft_probs(logits)  # [K, V]
        nxt = jax.vmap(lambda qq, kk: jax.random.categorical(kk, jnp.log(qq)))(
            q, jax.random.split(kt, K)
        ).astype(jnp.int32)
        return (ck, cv, nxt), (nxt, q)

    toks0 = jnp.broadcast_to(tok, (K,))
    steps = (jnp.arange(g, dtype=jnp.int32), jax.random.split(k_draft, g))
    (ck, cv, _), (drafts, q_all) = jax.lax.scan(draft_step, (ck, cv, toks0), steps)
    # drafts [g, K], q_all [g, K, V]

    block = jnp.concatenate([toks0[:, None], drafts.T], axis=1)  # [K, g + 1]

    def verify(ck_c, cv_c, blk):
        logits, ck_c, cv_c, _ = forward_chunk(
            params, blk, ck_c, cv_c, pos, config=config, policy=target_policy
        )
        return logits, ck_c, cv_c

    logits, ck, cv = batch_map(verify, ck, cv, block, unit_args=(0, 1), unit_outs=(1, 2))
    p_all = probs(logits)  # [K, g + 1, V]

    def depth(c, x):
        alive, done, emitted, n_ok = c
        t, kt = x
        first = jnp.argmax(alive)
        token, acc = _select_depth(
            scheme, K, kt, p_all[first, t], q_all[t, first], drafts[t], alive
        )
        live = ~done
        emitted = jnp.where(live, emitted.at[t].set(token), emitted)
        still = alive & (drafts[t] == token)
        alive = jnp.where(live & acc, still, alive)
        n_ok = n_ok + (live & acc)
        done = done | ~acc
        return (alive, done, emitted, n_ok), None

    init = (jnp.ones((K,), bool), jnp.zeros((), bool), jnp.zeros((g + 1,), jnp.int32), 0)
    depths = (jnp.arange(g, dtype=jnp.int32), jax.random.split(k_sel, g))
    (alive, done, emitted, n_ok), _ = jax.lax.scan(depth, init, depths)
    survivor = jnp.argmax(alive)
    bonus = jax.random.categorical(k_bonus, jnp.log(p_all[survivor, g])).astype(jnp.int32)
    emitted = jnp.where(done, emitted, emitted.at[g].set(bonus))
    n_new = n_ok + 1
    # Commit: the survivor's dense keys/values of the block to every chain (slots past
    # pos + n_ok are rewritten by later rounds before any query reads them).
    if K > 1:  # (one chain already holds its own block)
        blk_k = jax.lax.dynamic_slice_in_dim(ck[survivor], pos, g + 1, axis=1)
        blk_v = jax.lax.dynamic_slice_in_dim(cv[survivor], pos, g + 1, axis=1)
        ck = jax.lax.dynamic_update_slice_in_dim(
            ck, jnp.broadcast_to(blk_k, (K, *blk_k.shape)), pos, axis=2
        )
        cv = jax.lax.dynamic_update_slice_in_dim(
            cv, jnp.broadcast_to(blk_v, (K, *blk_v.shape)), pos, axis=2
        )
    out = jax.lax.dynamic_update_slice_in_dim(out, emitted, n_out, axis=0)
    tok = emitted[n_ok]
    return (ck, cv, pos + n_new, tok, out, n_out + n_new, key, rounds + 1, n_acc + n_ok)


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "draft_policy",
        "target_policy",
        "scheme",
        "n_drafts",
        "draft_len",
        "max_new_tokens",
        "temperature",
        "top_p",
        "draft_temperature",
    ),
)
def speculative_decode_jit(
    params: Params,
    cache_k: jax.Array,
    cache_v: jax.Array,
    pos: jax.Array,
    token: jax.Array,
    key: jax.Array,
    *,
    config: DecoderConfig,
    draft_policy: pol.Policy,
    target_policy: pol.Policy,
    scheme: Scheme,
    n_drafts: int,
    draft_len: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    draft_temperature: float | None = None,
) -> tuple[jax.Array, SpeculativeStats]:
    """Speculative rounds for ONE prefilled prompt until ``max_new_tokens`` are emitted.

    ``cache_k, cache_v [L, N, Hkv, d]`` hold the prompt but its last token ``token`` (at ``pos``),
    as :func:`jaxsel.models.generate.prefill_jit` leaves them. Returns ``(tokens
    [max_new_tokens] int32, stats)``. Batch prompts with ``vmap``. ``draft_temperature`` (default
    ``temperature``) changes only the draft's distribution, never the output law.
    """
    K, g = n_drafts, draft_len
    ck = jnp.broadcast_to(cache_k, (K, *cache_k.shape))
    cv = jnp.broadcast_to(cache_v, (K, *cache_v.shape))
    out = jnp.zeros((max_new_tokens + g + 1,), jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    carry = (ck, cv, jnp.asarray(pos, jnp.int32), token, out, zero, key, zero, zero)
    body = functools.partial(
        _round,
        params,
        config=config,
        draft_policy=draft_policy,
        target_policy=target_policy,
        scheme=scheme,
        n_drafts=K,
        draft_len=g,
        temperature=temperature,
        top_p=top_p,
        draft_temperature=temperature if draft_temperature is None else draft_temperature,
    )
    carry = jax.lax.while_loop(lambda c: c[5] < max_new_tokens, body, carry)
    ck, cv, pos = carry[0], carry[1], carry[2]
    stats = SpeculativeStats(
        rounds=carry[7], accepted=carry[8], cache_k=ck[0], cache_v=cv[0], pos=pos
    )
    return carry[4][:max_new_tokens], stats


def speculative_generate(
    params: Params,
    config: DecoderConfig,
    prompts: Any,
    key: jax.Array,
    *,
    max_new_tokens: int,
    scheme: Scheme,
    n_drafts: int = 1,
    draft_len: int = 4,
    draft_policy: str | pol.Policy = "tokenselect",
    draft_options: dict[str, Any] | None = None,
    target_policy: str | pol.Policy = "dense",
    temperature: float = 1.0,
    top_p: float = 1.0,
    draft_temperature: float | None = None,
    prefill_chunk: int = 512,
) -> tuple[np.ndarray, SpeculativeStats]:
    """Samples ``max_new_tokens`` tokens per prompt from the target policy, drafted by
    ``n_drafts`` chains of ``draft_len`` tokens under ``draft_policy`` (see the module docstring).

    Args:
      params, config: the decoder.
      prompts: a list of 1-D token sequences (or ``[B, T]`` with equal lengths).
      key: PRNG key; prompt b uses ``fold_in(key, b)``.
      scheme: the token-level selection, ``scheme(key, p [V], q [V], drafts [k]) -> (token,
        accepted)``, exact for any ``k <= n_drafts`` (e.g. from :mod:`jaxsel.speculative`).
      draft_policy, draft_options: the draft's attention (``make_policy``); default TokenSelect
        at its defaults. ``target_policy``: the distribution sampled (default dense).
      temperature, top_p: the sampling distribution of the target (and of the draft unless
        ``draft_temperature`` is given: a draft temperature changes the speed, not the law).

    Returns:
      ``(tokens [B, max_new_tokens] int32, stats)`` with per-prompt ``rounds`` and ``accepted``.
    """
    for name, val in (("n_drafts", n_drafts), ("draft_len", draft_len)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be an int >= 1, got {val!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    draft = pol.make_policy(draft_policy, **(draft_options or {}))
    target = pol.make_policy(target_policy)
    # Room for the last round's whole block past max_new_tokens.
    seqs = [np.asarray(p, np.int32) for p in prompts]
    cache_len = max(len(s) for s in seqs) + max_new_tokens + draft_len + 1
    _, args, static = prefill_arguments(
        seqs,
        max_new_tokens=max_new_tokens,
        cache_len=cache_len,
        policy=target,
        prefill_chunk=prefill_chunk,
    )
    state = prefill_jit(params, *args, config=config, **static)
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(len(seqs)))
    run = functools.partial(
        speculative_decode_jit,
        params,
        config=config,
        draft_policy=draft,
        target_policy=target,
        scheme=scheme,
        n_drafts=n_drafts,
        draft_len=draft_len,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        draft_temperature=None if draft_temperature is None else float(draft_temperature),
    )
    out, stats = batch_map(run, state.k, state.v, state.pos, state.token, keys)
    return np.asarray(out), stats
