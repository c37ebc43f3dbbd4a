"""Jitted sampling and value-guided step-level beam search (unbatched; vmap over prompts).

Beam search follows OREO (arXiv 2412.16145, Sec. 4.3): keep ``B`` partial solutions; extend
each by ``B`` sampled reasoning steps (a step ends with ``;`` or ``<eos>``); score each of the
``B * B`` candidates by the learned value ``V(s)`` of the state after the step (for the final
step, the state before ``<eos>``); keep the top ``B``. At the end return the finished candidate of
highest value.

The model is passed as functions so this module does not depend on a particular decoder:

- ``step_fn(cache, token, pos) -> (logits [V], cache)`` feeds one token at ``pos``;
- ``prefill_fn(tokens [L]) -> cache`` builds the cache of a whole buffer;
- ``value_fn(tokens [L]) -> [L]`` values of every prefix (``out[j] = V(tokens[:j+1])``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxsel.rl.oreo.task import EOS, PAD, SEMI

StepFn = Callable[[Any, Array, Array], tuple[Array, Any]]

__all__ = ["Sample", "sample", "step_beam_search"]


class Sample(NamedTuple):
    """tokens ``[L]``; logps ``[L-1]`` (``logps[j]`` scores ``tokens[j+1]`` under the untempered
    policy, 0 outside the response); length (prompt + response)."""

    tokens: Array
    logps: Array
    length: Array


def _choose(key: Array, logits: Array, temperature: float) -> Array:
    if temperature == 0.0:
        return jnp.argmax(logits, -1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature).astype(jnp.int32)


def sample(
    key: Array,
    step_fn: StepFn,
    cache: Any,
    tokens: Array,
    prompt_len: Array,
    *,
    temperature: float = 1.0,
) -> Sample:
    """Autoregressive sampling of one response after the prompt in ``tokens[:prompt_len]``.

    The prompt is teacher-forced through ``step_fn`` (so ``cache`` may be empty); after
    ``<eos>`` the buffer is padded. ``temperature=0`` is greedy decoding.

    Args:
      key: PRNG key.
      step_fn: see module docstring.
      cache: an initial (empty) cache for ``step_fn``.
      tokens: ``[L]`` buffer holding the prompt.
      prompt_len: scalar, prompt length (>= 1).
    """
    L = tokens.shape[0]

    def body(carry, p):
        buf, cache, done, length, key = carry
        logits, cache = step_fn(cache, buf[p], p)
        key, sk = jax.random.split(key)
        forced = p + 1 < prompt_len
        nxt = jnp.where(forced, buf[p + 1], jnp.where(done, PAD, _choose(sk, logits, temperature)))
        lp = jnp.where(forced | done, 0.0, jax.nn.log_softmax(logits)[nxt])
        stop = ~forced & ~done & (nxt == EOS)
        length = jnp.where(stop, p + 2, length)
        done = done | stop
        buf = buf.at[p + 1].set(nxt)
        return (buf, cache, done, length, key), lp

    init = (tokens, cache, jnp.bool_(False), jnp.int32(L), key)
    (buf, _, _, length, _), logps = jax.lax.scan(body, init, jnp.arange(L - 1))
    return Sample(buf, logps, length)


class _Beam(NamedTuple):
    buf: Array  # [L]
    cache: Any
    pos: Array  # index of the last written token (fed next)
    done: Array
    logp: Array  # summed log-prob of the response so far


def _extend_step(
    step_fn: StepFn, beam: _Beam, key: Array, *, max_step_tokens: int, temperature: float
) -> _Beam:
    """Sample one reasoning step (until ``;`` / ``<eos>`` / ``max_step_tokens``)."""
    L = beam.buf.shape[0]

    def body(carry, k):
        b, stopped = carry
        logits, cache = step_fn(b.cache, b.buf[b.pos], b.pos)
        tok = _choose(k, logits, temperature)
        active = ~stopped & ~b.done & (b.pos + 1 < L)
        pos = jnp.where(active, b.pos + 1, b.pos)
        buf = jnp.where(active, b.buf.at[b.pos + 1].set(tok), b.buf)
        cache = jax.tree.map(lambda n, o: jnp.where(active, n, o), cache, b.cache)
        lp = b.logp + jnp.where(active, jax.nn.log_softmax(logits)[tok], 0.0)
        done = b.done | (active & (tok == EOS)) | (pos + 1 >= L)
        stopped = stopped | ~active | (tok == SEMI) | (tok == EOS)
        return (_Beam(buf, cache, pos, done, lp), stopped), None

    keys = jax.random.split(key, max_step_tokens)
    (beam, _), _ = jax.lax.scan(body, (beam, jnp.bool_(False)), keys)
    return beam


def step_beam_search(
    key: Array,
    step_fn: StepFn,
    prefill_fn: Callable[[Array], Any],
    value_fn: Callable[[Array], Array],
    tokens: Array,
    prompt_len: Array,
    *,
    beam_size: int,
    max_steps: int,
    max_step_tokens: int,
    temperature: float = 1.0,
) -> tuple[Array, Array]:
    """Value-guided step-level beam search for one prompt (OREO, arXiv 2412.16145 Sec. 4.3).

    Args:
      key: PRNG key.
      step_fn, prefill_fn, value_fn: model functions (module docstring).
      tokens: ``[L]`` buffer holding the prompt; prompt_len: its length.
      beam_size: ``B``; each beam is expanded ``B`` ways and the top ``B`` of ``B*B`` kept.
      max_steps: number of expansion rounds (reasoning steps + the answer line).
      max_step_tokens: token budget of one step.
      temperature: sampling temperature of the expansions.

    Returns:
      ``(tokens [L], value)`` of the best finished candidate (highest value; unfinished
      candidates only if none finished).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size=}")
    B = beam_size
    cache = prefill_fn(tokens)
    root = _Beam(
        tokens, cache, jnp.asarray(prompt_len - 1, jnp.int32), jnp.bool_(False), jnp.float32(0.0)
    )
    beams = jax.tree.map(lambda x: jnp.broadcast_to(x, (B, *jnp.shape(x))), root)
    # only one distinct beam at the start: the other copies are invalid
    valid = jnp.arange(B) == 0
    extend = jax.vmap(
        lambda b, k: _extend_step(
            step_fn, b, k, max_step_tokens=max_step_tokens, temperature=temperature
        )
    )

    def value_at(b: _Beam) -> Array:
        # A candidate that just wrote <eos> is scored at the state before <eos>: OREO trains V
        # only on states that precede an action, so the terminal state itself has no value.
        at = jnp.where(b.buf[b.pos] == EOS, b.pos - 1, b.pos)
        return value_fn(b.buf)[at]

    def round_(carry, k):
        beams, valid = carry
        # B x B candidates: candidate (i, j) is beam i extended with key (i, j)
        rep = jax.tree.map(lambda x: jnp.repeat(x, B, axis=0), beams)
        cand = extend(rep, jax.random.split(k, B * B))
        v = jax.vmap(value_at)(cand)
        j = jnp.tile(jnp.arange(B), B)
        was_done = jnp.repeat(beams.done, B)
        # a finished beam stays as it is: keep one copy of it, drop the other B-1 duplicates
        ok = jnp.repeat(valid, B) & (~was_done | (j == 0))
        score = jnp.where(ok, v, -jnp.inf)
        top_score, idx = jax.lax.top_k(score, B)
        new = jax.tree.map(lambda x: x[idx], cand)
        return (new, jnp.isfinite(top_score)), None

    (beams, valid), _ = jax.lax.scan(round_, (beams, valid), jax.random.split(key, max_steps))
    v = jax.vmap(value_at)(beams)
    score = jnp.where(valid, v, -jnp.inf)
    score = jnp.where(valid & beams.done, score + 1e6, score)  # prefer finished candidates
    best = jnp.argmax(score)
    return beams.buf[best], v[best]
