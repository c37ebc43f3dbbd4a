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

import dataclasses
import functools
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsel.models import policies as pol
from jaxsel.models.cache import KVCache, init_cache, sharded_sequence_axis
from jaxsel.models.config import DecoderConfig
from jaxsel.models.decoder import Params, forward_chunk


def _check_sampling(temperature: float, top_p: float) -> None:
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature=}, {top_p=}")


def _nucleus_logits(logits: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """``logits / temperature`` with ``-inf`` outside the nucleus: sort probabilities
    descending, keep the smallest prefix whose mass reaches ``top_p`` (the first token always)."""
    scaled = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:
        order = jnp.argsort(-scaled)
        p_sorted = jax.nn.softmax(scaled[order])
        keep_sorted = (jnp.cumsum(p_sorted) - p_sorted) < top_p
        keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
        scaled = jnp.where(keep, scaled, -jnp.inf)
    return scaled


def sample_token(
    key: jax.Array, logits: jax.Array, *, temperature: float = 0.0, top_p: float = 1.0
) -> jax.Array:
    """One token from ``logits [V]``: argmax when ``temperature == 0``, else nucleus sampling.

    Nucleus: sort probabilities descending, keep the smallest prefix whose mass reaches ``top_p``
    (the first token always), renormalise, draw with ``key``.
    """
    _check_sampling(temperature, top_p)
    if temperature == 0.0:
        return jnp.argmax(logits.astype(jnp.float32)).astype(jnp.int32)
    scaled = _nucleus_logits(logits, temperature, top_p)
    return jax.random.categorical(key, scaled).astype(jnp.int32)


def sampling_probs(logits: jax.Array, *, temperature: float = 0.0, top_p: float = 1.0) -> jax.Array:
    """The distribution :func:`sample_token` draws from, ``[..., V]`` float32: one-hot on the
    argmax when ``temperature == 0``, else the renormalised nucleus of ``softmax(logits / T)``."""
    _check_sampling(temperature, top_p)
    if temperature == 0.0:
        v = logits.shape[-1]
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), v, dtype=jnp.float32)
    if top_p < 1.0:
        return jax.vmap(
            lambda lg: jax.nn.softmax(_nucleus_logits(lg, temperature, top_p)),
        )(logits.reshape(-1, logits.shape[-1])).reshape(logits.shape)
    return jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)


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


def batch_map(
    fn: Any, *args: Any, unit_args: tuple[int, ...] = (), unit_outs: tuple[int, ...] = ()
) -> Any:
    """``jax.vmap(fn)(*args)``, except that a batch of one runs ``fn`` unbatched.

    Under ``vmap`` a ``lax.cond`` whose predicate is batched runs both branches; unbatched it runs
    one. That is what makes a single-prompt decode skip the scoring on a Selection Cache hit and
    skip the sparse branch while the context fits the budget.

    ``unit_args`` / ``unit_outs``: positions of arguments / outputs (of a tuple output) that keep
    their unit batch axis in the batch-of-one case: the KV caches, which
    :func:`jaxsel.models.decoder.forward_chunk` takes as ``[1, L, N, Hkv, d]`` and writes in place.
    """
    sizes = {x.shape[0] for x in jax.tree.leaves(args)}
    if sizes != {1}:
        return jax.vmap(fn)(*args)
    # Reshapes, not x[0] / x[None]: a reshape that drops or adds a unit axis is a bitcast, where
    # slicing the batch axis off a carried KV cache copied the whole cache every decode step.
    drop = lambda t: jax.tree.map(lambda x: x.reshape(x.shape[1:]), t)
    add = lambda t: jax.tree.map(lambda x: x.reshape((1, *x.shape)), t)
    out = fn(*(a if i in unit_args else drop(a) for i, a in enumerate(args)))
    if not unit_outs:
        return add(out)
    return type(out)(o if i in unit_outs else add(o) for i, o in enumerate(out))


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
    first_chunk: jax.Array | None = None,
    seq_axis: str | None = None,
) -> KVCache:
    """Writes tokens ``[:, :n_tokens]`` into the cache in chunks of ``chunk`` (traced in ``scan``).

    Sequence b keeps ``length = min(lengths[b], n_tokens)`` valid slots; its tokens past its own
    length are padding (causally after every real token, so they never change a real one).

    ``first_chunk`` (an int32 scalar, may be traced) resumes a prefill: the cache already holds
    chunks ``0 .. first_chunk - 1`` of these same tokens and only the chunks from ``first_chunk``
    on are computed (a ``fori_loop`` with a traced start, so one compilation serves every resume
    point). The result is the full prefill's: chunk boundaries do not move.

    ``seq_axis``: inside ``shard_map`` with the cache sharded along the sequence over this mesh
    axis (see :func:`jaxsel.models.decoder.forward_chunk`).
    """
    B = tokens.shape[0]
    limit = jnp.minimum(lengths, n_tokens).astype(jnp.int32)

    def run(ck, cv, start, toks):
        def one(ck_b, cv_b, t_b, lim_b):
            _, ck_b, cv_b, _ = forward_chunk(
                params, t_b, ck_b, cv_b, start, config=config, policy=policy, limit=lim_b,
                seq_axis=seq_axis,
            )  # fmt: skip
            return ck_b, cv_b

        return batch_map(one, ck, cv, toks, limit, unit_args=(0, 1), unit_outs=(0, 1))

    n_full, rest = divmod(n_tokens, chunk)
    ck, cv = cache.k, cache.v
    if n_full and first_chunk is not None:

        def resume_body(i, carry):
            toks = jax.lax.dynamic_slice_in_dim(tokens, i * chunk, chunk, axis=1)
            return run(*carry, i * chunk, toks)

        start = jnp.asarray(first_chunk, jnp.int32)
        ck, cv = jax.lax.fori_loop(start, jnp.int32(n_full), resume_body, (ck, cv))
    elif n_full:
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


class DecodeState(NamedTuple):
    """Everything a decode step carries (batch first): the cache, each sequence's next position
    and current token, whether it has ended, the Selection Cache states and hit counts."""

    k: jax.Array
    v: jax.Array
    pos: jax.Array
    token: jax.Array
    done: jax.Array
    select_states: Any
    hits: jax.Array


def _first_decode_state(cache, tokens, lengths, policy, config) -> DecodeState:
    """The state after a prefill: each sequence's last prompt token is fed by the first step."""
    B = tokens.shape[0]
    last = jnp.take_along_axis(tokens, (lengths - 1)[:, None], axis=1)[:, 0]
    return DecodeState(
        cache.k,
        cache.v,
        lengths - 1,
        last,
        jnp.zeros((B,), bool),
        _select_states(policy, config, B),
        jnp.zeros((B,), jnp.float32),
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "policy",
        "cache_len",
        "chunk",
        "n_prefill",
        "cache_dtype",
        "cache_sharding",
    ),
)
def prefill_jit(
    params: Params,
    tokens: jax.Array,
    lengths: jax.Array,
    *,
    config: DecoderConfig,
    policy: pol.Policy,
    cache_len: int,
    chunk: int,
    n_prefill: int,
    cache_dtype: Any = None,
    cache_sharding: Any = None,
) -> DecodeState:
    """Prefill under one ``jit``: every prompt token but each sequence's last goes into a fresh
    cache; the returned state feeds that last token to the first decode step."""
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
    kw = dict(n_tokens=n_prefill, chunk=chunk, policy=policy)
    cache = _sharded_prefill(params, config, tokens, lengths - 1, cache, None, cache_sharding, kw)
    return _first_decode_state(cache, tokens, lengths, policy, config)


def _sharded_prefill(params, config, tokens, lengths, cache, first_chunk, cache_sharding, kw):
    """:func:`prefill`; under ``shard_map`` when ``cache_sharding`` splits the sequence, so each
    device keeps and fills its own slots (GSPMD would gather the cache)."""
    seq_axis = sharded_sequence_axis(cache_sharding, config, cache.k.shape[2])

    def run(p, t, lens, c, first):
        return prefill(p, config, t, lens, c, first_chunk=first, seq_axis=seq_axis, **kw)

    if seq_axis is not None:
        rep, spec = jax.sharding.PartitionSpec(), cache_sharding.spec
        run = jax.shard_map(
            run,
            mesh=cache_sharding.mesh,
            in_specs=(rep, rep, rep, KVCache(spec, spec, rep), rep),
            out_specs=KVCache(spec, spec, rep),
            check_vma=False,  # the replicated outputs are computed identically on every shard
        )
    return run(params, tokens, lengths, cache, first_chunk)


@functools.partial(
    jax.jit,
    static_argnames=(
        "config", "policy", "chunk", "n_prefill", "cache_len", "cache_dtype", "cache_sharding",
    ),
)  # fmt: skip
def prefill_resume_jit(
    params: Params,
    prefix: DecodeState,
    tokens: jax.Array,
    lengths: jax.Array,
    first_chunk: jax.Array,
    *,
    config: DecoderConfig,
    policy: pol.Policy,
    cache_len: int,
    chunk: int,
    n_prefill: int,
    cache_dtype: Any = None,
    cache_sharding: Any = None,
) -> DecodeState:
    """:func:`prefill_jit` of ``tokens`` reusing the cache of ``prefix``, a state prefilled (with
    the same policy, chunk and cache length) from prompts that agree with ``tokens`` on their first
    ``first_chunk * chunk`` tokens: only the chunks from ``first_chunk`` on are computed.

    For many prompts that share a long prefix (the filler of a passkey test), prefill the prefix
    once and resume per prompt; the result equals a full prefill. ``prefix`` is not modified.
    ``cache_len`` and ``cache_dtype`` are accepted so the static arguments of
    :func:`prefill_arguments` pass through; they must match the prefix's cache, as
    ``cache_sharding`` must match the prefix's sharding.
    """
    if prefix.k.shape[2] != cache_len:
        raise ValueError(
            f"prefix cache holds {prefix.k.shape[2]} tokens but cache_len={cache_len}: prefill "
            "the prefix with the same prefill_arguments"
        )
    cache = KVCache(prefix.k, prefix.v, prefix.pos)
    kw = dict(n_tokens=n_prefill, chunk=chunk, policy=policy)
    first = jnp.asarray(first_chunk, jnp.int32)
    cache = _sharded_prefill(params, config, tokens, lengths - 1, cache, first, cache_sharding, kw)
    return _first_decode_state(cache, tokens, lengths, policy, config)


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "policy",
        "n_steps",
        "temperature",
        "top_p",
        "eos_id",
        "pad_id",
        "cache_sharding",
    ),
    donate_argnames=("state",),
)
def decode_jit(
    params: Params,
    state: DecodeState,
    key: jax.Array,
    *,
    config: DecoderConfig,
    policy: pol.Policy,
    n_steps: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    cache_sharding: Any = None,
) -> tuple[jax.Array, DecodeState]:
    """``n_steps`` decode steps under one ``jit`` (``lax.scan``); the state is donated, so a
    caller that decodes in pieces (streaming) updates the cache in place.

    ``cache_sharding`` (a ``NamedSharding`` of the ``[B, L, N, Hkv, d]`` cache) over the KV heads
    is a GSPMD constraint; along the sequence
    (:func:`jaxsel.models.cache.sequence_partition_spec`) the loop runs under ``shard_map``: each
    device keeps its slots of the cache, selects and attends with
    :mod:`jaxsel.attention.sequence`, and everything else is replicated.

    Returns ``(new_tokens [B, n_steps] int32, state)``; ``state.hits`` counts the (step, layer)
    pairs served from the Selection Cache so far.
    """
    kw = dict(
        config=config, policy=policy, n_steps=n_steps, temperature=temperature, top_p=top_p,
        eos_id=eos_id, pad_id=pad_id,
    )  # fmt: skip
    seq_axis = sharded_sequence_axis(cache_sharding, config, state.k.shape[2])
    if seq_axis is None:
        return _decode_loop(params, state, key, cache_sharding=cache_sharding, **kw)
    rep = jax.sharding.PartitionSpec()
    specs = DecodeState(
        cache_sharding.spec, cache_sharding.spec, rep, rep, rep,
        jax.tree.map(lambda _: rep, state.select_states), rep,
    )  # fmt: skip
    loop = jax.shard_map(
        functools.partial(_decode_loop, seq_axis=seq_axis, **kw),
        mesh=cache_sharding.mesh,
        in_specs=(rep, specs, rep),
        out_specs=(rep, specs),
        check_vma=False,  # the replicated outputs are computed identically on every shard
    )
    return loop(params, state, key)


def _decode_loop(
    params: Params,
    state: DecodeState,
    key: jax.Array,
    *,
    config: DecoderConfig,
    policy: pol.Policy,
    n_steps: int,
    temperature: float,
    top_p: float,
    eos_id: int | None,
    pad_id: int,
    cache_sharding: Any = None,
    seq_axis: str | None = None,
) -> tuple[jax.Array, DecodeState]:
    """The body of :func:`decode_jit` (``seq_axis``: inside ``shard_map``, sequence-sharded)."""
    B = state.token.shape[0]

    def step(st, key_t):
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
                seq_axis=seq_axis,
            )
            return logits[0], ck_b, cv_b, s_b

        logits, ck, cv, states = batch_map(
            one, st.k, st.v, st.token, st.pos, st.select_states, unit_args=(0, 1), unit_outs=(1, 2)
        )
        if cache_sharding is not None and seq_axis is None:
            ck = jax.lax.with_sharding_constraint(ck, cache_sharding)
            cv = jax.lax.with_sharding_constraint(cv, cache_sharding)
        keys = jax.random.split(key_t, B)
        nxt = jax.vmap(lambda k, lg: sample_token(k, lg, temperature=temperature, top_p=top_p))(
            keys, logits
        )
        hits = st.hits
        if states is not None:
            hits = sum(s.hits for s in states if s is not None).astype(jnp.float32)
        nxt = jnp.where(st.done, pad_id, nxt)
        done = st.done | (nxt == eos_id) if eos_id is not None else st.done
        return DecodeState(ck, cv, st.pos + 1, nxt, done, states, hits), nxt

    state, out = jax.lax.scan(step, state, jax.random.split(key, n_steps))
    return out.T, state


def n_cached_layers(policy: pol.Policy, config: DecoderConfig) -> int:
    """How many layers keep a Selection Cache under ``policy`` (the hit rate's denominator)."""
    if not isinstance(policy, pol.TokenSelect) or policy.cache_threshold is None:
        return 0
    return sum(i not in policy.dense_layers for i in range(config.num_layers))


def start_generation(
    params: Params,
    config: DecoderConfig,
    prompts: Any,
    *,
    max_new_tokens: int,
    cache_len: int | None = None,
    policy: str | pol.Policy = "dense",
    policy_options: dict[str, Any] | None = None,
    lengths: Any = None,
    prefill_chunk: int = 512,
    pad_id: int = 0,
    cache_sharding: Any = None,
) -> tuple[pol.Policy, DecodeState]:
    """Checks the arguments and prefills the prompts: ``(policy, state)`` for :func:`decode_jit`.

    Arguments as :func:`generate`. The cache holds ``max(lengths) + max_new_tokens`` tokens
    unless ``cache_len`` says more.
    """
    policy, args, static = prefill_arguments(
        prompts,
        max_new_tokens=max_new_tokens,
        cache_len=cache_len,
        policy=policy,
        policy_options=policy_options,
        lengths=lengths,
        prefill_chunk=prefill_chunk,
        pad_id=pad_id,
    )
    if sharded_sequence_axis(cache_sharding, config, static["cache_len"]) is not None:
        pol.check_sequence_policy(policy)
    return policy, prefill_jit(
        params, *args, config=config, cache_sharding=cache_sharding, **static
    )


def prefill_arguments(
    prompts: Any,
    *,
    max_new_tokens: int,
    cache_len: int | None = None,
    policy: str | pol.Policy = "dense",
    policy_options: dict[str, Any] | None = None,
    lengths: Any = None,
    prefill_chunk: int = 512,
    pad_id: int = 0,
) -> tuple[pol.Policy, tuple[jax.Array, jax.Array], dict[str, Any]]:
    """The checked arguments of :func:`prefill_jit`: ``(policy, (tokens, lengths), static)``
    (benchmarks compile it ahead of time with them)."""
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
    if prefill_chunk < 1:
        raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
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
    static = dict(policy=policy, cache_len=cache_len, chunk=chunk, n_prefill=n_prefill)
    return policy, (jnp.asarray(tokens), jnp.asarray(lens)), static


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
    prefill_chunk: int = 512,
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
      policy: ``"dense"``, ``"tokenselect"``, ``"streaming"``, ``"quest"`` or a policy object;
        ``policy_options`` are forwarded to :func:`jaxsel.models.policies.make_policy`. A sparse
        policy whose budget covers the cache attends densely (exactly dense attention).
      prefill_chunk: prefill chunk size (static).
      temperature, top_p: sampling (``temperature=0``: greedy); ``key`` required when sampling.
      eos_id: after it, a sequence emits ``pad_id``.
      return_hit_rate: also return the Selection Cache hit rate per sequence.
      cache_sharding: optional ``NamedSharding`` for the ``[B, L, N, Hkv, d]`` KV cache: over
        heads with :func:`jaxsel.models.cache.heads_partition_spec` (shard the parameters to
        match with :func:`jaxsel.models.decoder.heads_param_specs`), or along the sequence with
        :func:`jaxsel.models.cache.sequence_partition_spec` (a cache too long for one device:
        decode runs :mod:`jaxsel.attention.sequence` under ``shard_map``; dense or TokenSelect
        policies; ``cache_len`` must be a multiple of the axis size).

    Returns:
      ``[B, max_new_tokens]`` int32 NumPy array (and ``[B]`` hit rates if asked).

    Raises:
      ValueError: a prompt plus ``max_new_tokens`` longer than the cache, an unknown policy, or
        sampling without a key.
    """
    if temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs an explicit key")
    policy, state = start_generation(
        params,
        config,
        prompts,
        max_new_tokens=max_new_tokens,
        cache_len=cache_len,
        policy=policy,
        policy_options=policy_options,
        lengths=lengths,
        prefill_chunk=prefill_chunk,
        pad_id=pad_id,
        cache_sharding=cache_sharding,
    )
    out, state = decode_jit(
        params,
        state,
        jax.random.key(0) if key is None else key,
        config=config,
        policy=policy,
        n_steps=int(max_new_tokens),
        temperature=float(temperature),
        top_p=float(top_p),
        eos_id=eos_id,
        pad_id=pad_id,
        cache_sharding=cache_sharding,
    )
    out = np.asarray(out)
    if not return_hit_rate:
        return out
    hits = np.asarray(state.hits) / max(max_new_tokens * n_cached_layers(policy, config), 1)
    return out, hits


@dataclasses.dataclass
class StreamStats:
    """Filled in by :func:`stream_generate`: token counts and seconds (the prefill's compilation
    is part of ``prefill_s``; ``decode_s`` leaves out the first step, which compiles)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_step_s: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        timed = self.new_tokens - 1
        return timed / self.decode_s if timed > 0 and self.decode_s else 0.0


def stream_generate(
    params: Params,
    config: DecoderConfig,
    prompt: Any,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    key: jax.Array | None = None,
    stats: StreamStats | None = None,
    **options: Any,
) -> Iterator[int]:
    """Yields the tokens of ONE prompt (a 1-D token sequence) as they are decoded, one jitted
    step at a time (compiled once), until ``eos_id`` (not yielded) or ``max_new_tokens``.

    ``options`` are :func:`start_generation`'s (``policy``, ``policy_options``, ``cache_len``,
    ``prefill_chunk``). The prefill runs before the first token is yielded; ``stats``, if given,
    is filled in with the prefill and decode times as the tokens come.
    """
    if temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs an explicit key")
    key = jax.random.key(0) if key is None else key
    stats = StreamStats() if stats is None else stats
    t0 = time.perf_counter()
    prompt = np.asarray(prompt, np.int32)
    policy, state = start_generation(
        params, config, [prompt], max_new_tokens=max_new_tokens, **options
    )
    jax.block_until_ready(state)
    stats.prompt_tokens, stats.prefill_s = len(prompt), time.perf_counter() - t0
    for t in range(max_new_tokens):
        t1 = time.perf_counter()
        tok, state = decode_jit(
            params,
            state,
            jax.random.fold_in(key, t),
            config=config,
            policy=policy,
            n_steps=1,
            temperature=float(temperature),
            top_p=float(top_p),
            cache_sharding=options.get("cache_sharding"),
        )
        tok = int(tok[0, 0])
        if t == 0:
            stats.first_step_s = time.perf_counter() - t1
        else:
            stats.decode_s += time.perf_counter() - t1
        if eos_id is not None and tok == eos_id:
            return
        stats.new_tokens += 1
        yield tok


@functools.partial(jax.jit, static_argnames=("config", "policy", "chunk"))
def sequence_nll(
    params: Params,
    tokens: jax.Array,
    *,
    config: DecoderConfig,
    policy: pol.Policy,
    chunk: int = 512,
) -> jax.Array:
    """Negative log-likelihood of every next token of ONE sequence under an attention policy.

    The sequence ``tokens [T]`` (T a multiple of ``chunk``) is run chunk by chunk exactly as a
    prefill (a sparse policy selects once per chunk with the chunk's mean query), and each chunk's
    logits are reduced to NLLs inside the scan, so no ``[T, V]`` array is ever held:
    ``nll[t] = -log softmax(logits[t])[tokens[t + 1]]`` for ``t < T - 1``.

    Returns:
      ``[T - 1]`` float32; ``exp(mean(nll))`` is the perplexity.
    """
    T = tokens.shape[0]
    if T % chunk:
        raise ValueError(f"sequence length {T} must be a multiple of chunk={chunk}")
    n_chunks = T // chunk
    shape = (config.num_layers, T, config.num_kv_heads, config.head_dim)
    dtype = params["embed"].dtype
    nxt = jnp.concatenate([tokens[1:], tokens[-1:]])

    def body(carry, i):
        ck, cv = carry
        toks = jax.lax.dynamic_slice_in_dim(tokens, i * chunk, chunk)
        target = jax.lax.dynamic_slice_in_dim(nxt, i * chunk, chunk)
        logits, ck, cv, _ = forward_chunk(
            params, toks, ck, cv, i * chunk, config=config, policy=policy
        )
        logp = jax.nn.log_softmax(logits, axis=-1)
        return (ck, cv), -jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0]

    init = (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    _, nll = jax.lax.scan(body, init, jnp.arange(n_chunks, dtype=jnp.int32))
    return nll.reshape(T)[:-1]
