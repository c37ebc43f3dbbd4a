"""Generation: chunked prefill into a preallocated cache, then a jitted decode loop (``lax.scan``).

Prompts of different lengths are right-padded (see :mod:`jaxsel.models.cache`). The prefill covers
every prompt token but the last; the decode loop's first step feeds each sequence's last prompt
token, so the first generated token comes from a single-query step. This matters for sparse
policies: that step selects with the query of the final prompt token itself (e.g. the question),
not with the mean query of a prefill chunk.

Sampling: ``temperature=0`` is greedy (argmax, ties to the lowest id); otherwise tokens are drawn
from softmax(logits / temperature) restricted to the top-p nucleus, with an explicit key split once
per step.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsel.models import policies as pol
from jaxsel.models.cache import KVCache, init_cache
from jaxsel.models.config import DecoderConfig
from jaxsel.models.decoder import Params, forward_chunk


def sample_token(
    logits: jax.Array, key: jax.Array, *, temperature: float = 0.0, top_p: float = 1.0
) -> jax.Array:
    """One token from ``logits [V]``: argmax when ``temperature == 0``, else nucleus sampling.

    Nucleus: sort probabilities descending, keep the smallest prefix whose mass reaches ``top_p``
    (the first token always), renormalise, draw with ``key``.
    """
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature=}, {top_p=}")
    logits = logits.astype(jnp.float32)
    if temperature == 0.0:
        return jnp.argmax(logits).astype(jnp.int32)
    scaled = logits / temperature
    if top_p < 1.0:
        order = jnp.argsort(-scaled)
        p_sorted = jax.nn.softmax(scaled[order])
        keep_sorted = (jnp.cumsum(p_sorted) - p_sorted) < top_p
        keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
        scaled = jnp.where(keep, scaled, -jnp.inf)
    return jax.random.categorical(key, scaled).astype(jnp.int32)


def _pad_prompts(prompts: Any, lengths: Any, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(prompts, list | tuple) and prompts and np.ndim(prompts[0]) == 1:
        seqs = [np.asarray(p, np.int32) for p in prompts]
        lens = np.array([len(s) for s in seqs], np.int32)
        out = np.full((len(seqs), max(lens)), pad_id, np.int32)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
        return out, lens
    arr = np.asarray(prompts)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"prompts must be int [B, T] or a list of 1-D sequences, got {arr.shape}")
    lens = np.full((arr.shape[0],), arr.shape[1], np.int32) if lengths is None else lengths
    lens = np.asarray(lens, np.int32)
    if lens.shape != (arr.shape[0],) or lens.min() < 1 or lens.max() > arr.shape[1]:
        raise ValueError(f"lengths must be [B] in 1..T for prompts {arr.shape}, got {lens}")
    return arr.astype(np.int32), lens


def prefill(
    params: Params,
    config: DecoderConfig,
    tokens: jax.Array,
    lengths: jax.Array,
    cache: KVCache,
    *,
    n_tokens: int,
    chunk: int,
    policy: pol.Policy,
) -> KVCache:
    """Writes tokens ``[:, :n_tokens]`` into the cache in chunks of ``chunk`` (traced in ``scan``).

    Sequence b keeps ``length = min(lengths[b], n_tokens)`` valid slots; its tokens past its own
    length are padding (causally after every real token, so they never change a real one).
    """
    B = tokens.shape[0]
    limit = jnp.minimum(lengths, n_tokens).astype(jnp.int32)

    def run(ck, cv, start, toks):
        def one(ck_b, cv_b, t_b, lim_b):
            _, ck_b, cv_b, _ = forward_chunk(
                params, t_b, ck_b, cv_b, start, config=config, policy=policy, limit=lim_b
            )
            return ck_b, cv_b

        return jax.vmap(one)(ck, cv, toks, limit)

    n_full, rest = divmod(n_tokens, chunk)
    ck, cv = cache.k, cache.v
    if n_full:
        full = tokens[:, : n_full * chunk].reshape(B, n_full, chunk).transpose(1, 0, 2)

        def body(carry, x):
            i, toks = x
            return run(*carry, i * chunk, toks), None

        (ck, cv), _ = jax.lax.scan(body, (ck, cv), (jnp.arange(n_full, dtype=jnp.int32), full))
    if rest:
        ck, cv = run(ck, cv, jnp.int32(n_full * chunk), tokens[:, n_full * chunk : n_tokens])
    return KVCache(ck, cv, limit)


def _select_states(policy: pol.Policy, config: DecoderConfig, batch: int) -> Any:
    if not isinstance(policy, pol.TokenSelect) or policy.cache_threshold is None:
        return None
    one = tuple(
        None if i in policy.dense_layers else pol.init_select_state(policy, config)
        for i in range(config.num_layers)
    )
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), one)


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "policy",
        "cache_len",
        "chunk",
        "n_prefill",
        "max_new_tokens",
        "temperature",
        "top_p",
        "eos_id",
        "pad_id",
        "cache_dtype",
        "cache_sharding",
    ),
)
def generate_jit(
    params: Params,
    tokens: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    *,
    config: DecoderConfig,
    policy: pol.Policy,
    cache_len: int,
    chunk: int,
    n_prefill: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    cache_dtype: Any = None,
    cache_sharding: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """The whole generation under one ``jit``: prefill, then ``max_new_tokens`` decode steps.

    Returns ``(new_tokens [B, max_new_tokens] int32, hit_rate [B] float32)``; ``hit_rate`` is the
    share of (step, layer) pairs served from the Selection Cache (0 without one).
    """
    B = tokens.shape[0]
    dtype = cache_dtype or params["embed"].dtype
    cache = init_cache(config, B, cache_len, dtype=dtype)
    if cache_sharding is not None:
        cache = cache._replace(
            k=jax.lax.with_sharding_constraint(cache.k, cache_sharding),
            v=jax.lax.with_sharding_constraint(cache.v, cache_sharding),
        )
    # The last prompt token is fed by the first decode step, so the prefill's real rows end
    # before it.
    cache = prefill(
        params, config, tokens, lengths - 1, cache, n_tokens=n_prefill, chunk=chunk, policy=policy
    )
    states = _select_states(policy, config, B)
    last = jnp.take_along_axis(tokens, (lengths - 1)[:, None], axis=1)[:, 0]

    def step(carry, key_t):
        ck, cv, pos, cur, done, states, hits = carry

        def one(ck_b, cv_b, t_b, p_b, s_b):
            logits, ck_b, cv_b, s_b = forward_chunk(
                params,
                t_b[None],
                ck_b,
                cv_b,
                p_b,
                config=config,
                policy=policy,
                select_states=s_b,
            )
            return logits[0], ck_b, cv_b, s_b

        logits, ck, cv, states = jax.vmap(one)(ck, cv, cur, pos, states)
        if cache_sharding is not None:
            ck = jax.lax.with_sharding_constraint(ck, cache_sharding)
            cv = jax.lax.with_sharding_constraint(cv, cache_sharding)
        keys = jax.random.split(key_t, B)
        nxt = jax.vmap(lambda lg, k: sample_token(lg, k, temperature=temperature, top_p=top_p))(
            logits, keys
        )
        if states is not None:
            hits = sum(s.hits for s in states if s is not None).astype(jnp.float32)
        nxt = jnp.where(done, pad_id, nxt)
        if eos_id is not None:
            done = done | (nxt == eos_id)
        return (ck, cv, pos + 1, nxt, done, states, hits), nxt

    init = (cache.k, cache.v, lengths - 1, last, jnp.zeros((B,), bool), states, jnp.zeros((B,)))
    (_, _, _, _, _, _, hits), out = jax.lax.scan(step, init, jax.random.split(key, max_new_tokens))
    n_cached = 0 if states is None else sum(s is not None for s in states)
    return out.T, hits / max(max_new_tokens * n_cached, 1)


def generate(
    params: Params,
    config: DecoderConfig,
    prompts: Any,
    *,
    max_new_tokens: int,
    cache_len: int | None = None,
    policy: str | pol.Policy = "dense",
    policy_options: dict[str, Any] | None = None,
    lengths: Any = None,
    prefill_chunk: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    key: jax.Array | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    return_hit_rate: bool = False,
    cache_sharding: Any = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Generates ``max_new_tokens`` tokens for a batch of prompts with the chosen attention policy.

    Args:
      params, config: the decoder (e.g. ``m.params_tree(), m.config``).
      prompts: int ``[B, T]`` (right-padded, with ``lengths``) or a list of 1-D token sequences.
      max_new_tokens: number of tokens to generate (static).
      cache_len: static cache length; default ``max(lengths) + max_new_tokens``.
      policy: ``"dense"``, ``"tokenselect"``, ``"streaming"`` or a policy object;
        ``policy_options`` are forwarded to :func:`jaxsel.models.policies.make_policy`.
      prefill_chunk: prefill chunk size (static).
      temperature, top_p: sampling (``temperature=0``: greedy); ``key`` required when sampling.
      eos_id: after it, a sequence emits ``pad_id``.
      return_hit_rate: also return the Selection Cache hit rate per sequence.
      cache_sharding: optional ``NamedSharding`` for the ``[B, L, N, Hkv, d]`` KV cache (e.g.
        over heads with :func:`jaxsel.models.cache.heads_partition_spec`); shard the parameters
        to match with :func:`jaxsel.models.decoder.heads_param_specs`.

    Returns:
      ``[B, max_new_tokens]`` int32 NumPy array (and ``[B]`` hit rates if asked).

    Raises:
      ValueError: a prompt plus ``max_new_tokens`` longer than the cache, an unknown policy, a
        sparse budget larger than the cache, or sampling without a key.
    """
    policy = pol.make_policy(policy, **(policy_options or {}))
    tokens, lens = _pad_prompts(prompts, lengths, pad_id)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    need = int(lens.max()) + max_new_tokens
    cache_len = need if cache_len is None else int(cache_len)
    if need > cache_len:
        raise ValueError(
            f"prompt of {int(lens.max())} tokens + max_new_tokens={max_new_tokens} = {need} does "
            f"not fit cache_len={cache_len}; raise cache_len (nothing is truncated)"
        )
    budget = getattr(policy, "budget", 0)
    if budget > cache_len:
        raise ValueError(f"policy budget {budget} exceeds cache_len={cache_len}")
    if prefill_chunk < 1:
        raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
    if temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs an explicit key")
    key = jax.random.key(0) if key is None else key
    n_prefill = int(lens.max()) - 1
    chunk = min(prefill_chunk, max(n_prefill, 1))
    # Round the prefill up to whole chunks when the cache has room: the extra slots hold padding
    # that decode overwrites, and one chunk shape means one compiled body instead of two.
    rounded = -(-n_prefill // chunk) * chunk
    if rounded > n_prefill and rounded < cache_len:
        tokens = np.pad(
            tokens, ((0, 0), (0, max(0, rounded - tokens.shape[1]))), constant_values=pad_id
        )
        n_prefill = rounded
    out, hits = generate_jit(
        params,
        jnp.asarray(tokens),
        jnp.asarray(lens),
        key,
        config=config,
        policy=policy,
        cache_len=cache_len,
        chunk=chunk,
        n_prefill=n_prefill,
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_p=float(top_p),
        eos_id=eos_id,
        pad_id=pad_id,
        cache_sharding=cache_sharding,
    )
    out = np.asarray(out)
    return (out, np.asarray(hits)) if return_hit_rate else out
