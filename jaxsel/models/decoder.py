"""Llama-family causal decoder: parameters and pure apply functions (the flax NNX wrapper is
:class:`jaxsel.models.module.Decoder`).

The pure functions are the source of truth. They work on ONE sequence (callers ``vmap`` over the
batch) and on a preallocated cache of static length ``N``:

- :func:`forward_chunk` runs ``C`` new tokens at positions ``start .. start + C - 1``: it writes their
  keys and values into the cache (keys WITHOUT RoPE, so an attention policy can choose the positions
  at attention time, as TokenSelect does) and attends with the layer's policy.
- :func:`forward` is the plain full-sequence call (one chunk into a fresh cache of length T, dense).

Parameters are a plain pytree (dicts of arrays), heads kept as their own axis so that sharding over
heads is one ``PartitionSpec`` per array:

    embed [V, D]; final_norm [D]; lm_head [D, V] (absent when tied)
    layers[i]: attn_norm [D], wq [D, Hq, d], wk/wv [D, Hkv, d], wo [Hq, d, D],
               (bq [Hq, d], bk/bv [Hkv, d] with qkv_bias; bo [D] with o_bias),
               mlp_norm [D], w_gate/w_up [D, F], w_down [F, D] (b_gate/b_up [F], b_down [D]).

Equations (Touvron et al. 2023, arXiv 2307.09288; Su et al. 2021 RoPE, arXiv 2104.09864):
RMSNorm(x) = w * x / sqrt(mean(x^2) + eps); MLP(x) = W_down(silu(W_gate x) * W_up x);
attention softmax(q_h . k_j / sqrt(d)) with head h reading kv head h // (Hq / Hkv).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxsel.attention import apply_rope, rope_table
from jaxsel.attention.sequence import axis_size, shard_offset
from jaxsel.models import policies as pol
from jaxsel.models.config import DecoderConfig

Params = dict[str, Any]


# ----------------------------------------------------------------------------- parameters
def init_params(key: jax.Array, config: DecoderConfig, *, dtype: Any = jnp.float32) -> Params:
    """Random parameters (normal, std 0.02; norms at 1; biases at 0), as in HF's initialiser."""
    c = config
    D, F, V, Hq, Hkv, d = (
        c.hidden_size,
        c.intermediate_size,
        c.vocab_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
    )
    keys = iter(jax.random.split(key, 2 + 7 * c.num_layers))

    def normal(shape):
        return (0.02 * jax.random.normal(next(keys), shape, jnp.float32)).astype(dtype)

    layers = []
    for _ in range(c.num_layers):
        lp = {
            "attn_norm": jnp.ones((D,), dtype),
            "wq": normal((D, Hq, d)),
            "wk": normal((D, Hkv, d)),
            "wv": normal((D, Hkv, d)),
            "wo": normal((Hq, d, D)),
            "mlp_norm": jnp.ones((D,), dtype),
            "w_gate": normal((D, F)),
            "w_up": normal((D, F)),
            "w_down": normal((F, D)),
        }
        if c.qkv_bias:
            lp.update(
                bq=jnp.zeros((Hq, d), dtype),
                bk=jnp.zeros((Hkv, d), dtype),
                bv=jnp.zeros((Hkv, d), dtype),
            )
        if c.o_bias:
            lp["bo"] = jnp.zeros((D,), dtype)
        if c.mlp_bias:
            lp.update(
                b_gate=jnp.zeros((F,), dtype),
                b_up=jnp.zeros((F,), dtype),
                b_down=jnp.zeros((D,), dtype),
            )
        layers.append(lp)
    params = {"embed": normal((V, D)), "layers": layers, "final_norm": jnp.ones((D,), dtype)}
    if not c.tie_word_embeddings:
        params["lm_head"] = normal((D, V))
    return params


def param_shapes(config: DecoderConfig) -> Params:
    """The expected shape of every parameter (same tree as :func:`init_params`)."""
    return jax.tree.map(
        lambda a: a.shape, jax.eval_shape(lambda: init_params(jax.random.key(0), config))
    )


def heads_param_specs(params: Params, axis: str = "heads") -> Any:
    """PartitionSpecs sharding every per-head parameter over its head axis (others replicated).

    Attention then runs head-parallel; the output projection's sum over heads and TokenSelect's
    vote over heads become collectives that XLA inserts.
    """
    P = jax.sharding.PartitionSpec
    by_name = {
        "wq": P(None, axis, None),
        "wk": P(None, axis, None),
        "wv": P(None, axis, None),
        "wo": P(axis, None, None),
        "bq": P(axis, None),
        "bk": P(axis, None),
        "bv": P(axis, None),
    }
    layers = [{n: by_name.get(n, P()) for n in lp} for lp in params["layers"]]
    return {**{n: P() for n in params if n != "layers"}, "layers": layers}


# ----------------------------------------------------------------------------- pure math
def rms_norm(x: jax.Array, w: jax.Array, *, eps: float) -> jax.Array:
    """RMSNorm over the last axis, computed in float32, returned in ``x.dtype`` (times ``w``)."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w * y.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, config: DecoderConfig) -> jax.Array:
    """RoPE of ``x [T, H, d]`` at ``positions [T]`` with the config's theta and scaling."""
    return apply_rope(x, positions, theta=config.rope_theta, scaling=config.rope_scaling_dict())


def qkv_projection(lp: Params, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """h [C, D] (normed) -> q [C, Hq, d], k [C, Hkv, d], v [C, Hkv, d] (no RoPE)."""
    q = jnp.einsum("cD,Dhd->chd", h, lp["wq"])
    k = jnp.einsum("cD,Dhd->chd", h, lp["wk"])
    v = jnp.einsum("cD,Dhd->chd", h, lp["wv"])
    if "bq" in lp:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    return q, k, v


def mlp(lp: Params, h: jax.Array) -> jax.Array:
    """SwiGLU: W_down(silu(W_gate h) * W_up h)."""
    g = h @ lp["w_gate"]
    u = h @ lp["w_up"]
    if "b_gate" in lp:
        g, u = g + lp["b_gate"], u + lp["b_up"]
    out = (jax.nn.silu(g) * u) @ lp["w_down"]
    return out + lp["b_down"] if "b_down" in lp else out


def output_projection(lp: Params, o: jax.Array) -> jax.Array:
    """o [C, Hq, d] -> [C, D]."""
    out = jnp.einsum("chd,hdD->cD", o, lp["wo"])
    return out + lp["bo"] if "bo" in lp else out


def lm_logits(params: Params, x: jax.Array, config: DecoderConfig) -> jax.Array:
    """x [C, D] -> float32 logits [C, V] after the final norm."""
    h = rms_norm(x, params["final_norm"], eps=config.rms_norm_eps)
    if config.tie_word_embeddings:
        # Contract with embed [V, D] directly: a transposed copy of the embedding (113 MB for
        # SmolLM2) would otherwise be materialised on every decode step.
        return jnp.einsum("cD,VD->cV", h, params["embed"], preferred_element_type=jnp.float32)
    return jnp.dot(h, params["lm_head"], preferred_element_type=jnp.float32)


def _write(cache: jax.Array, new: jax.Array, layer: int, start: Any, seq_axis: Any) -> jax.Array:
    """``cache[..., layer, start : start + C, :, :] = new`` in place (``cache [L, N, Hkv, d]`` or
    ``[1, L, N, Hkv, d]``); with ``seq_axis`` (a sequence-sharded cache) each shard writes only
    the rows whose global slots it holds."""
    lead = cache.ndim - 4  # 0, or 1 for a unit batch axis
    new = new.astype(cache.dtype)
    if seq_axis is None:
        return jax.lax.dynamic_update_slice(
            cache, new.reshape((1,) * (lead + 1) + new.shape), (0,) * lead + (layer, start, 0, 0)
        )
    n = cache.shape[-3]
    local = start - shard_offset(n, seq_axis) + jnp.arange(new.shape[0], dtype=jnp.int32)
    rows = jnp.where((local >= 0) & (local < n), local, n)  # n: out of range, dropped
    return cache.at[(0,) * lead + (layer, rows)].set(new, mode="drop")


def forward_chunk(
    params: Params,
    tokens: jax.Array,
    cache_k: jax.Array,
    cache_v: jax.Array,
    start: jax.Array,
    *,
    config: DecoderConfig,
    policy: Any = None,
    select_states: Any = None,
    limit: jax.Array | None = None,
    return_hidden: bool = False,
    seq_axis: str | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
    """Runs ``C`` new tokens of ONE sequence through the decoder with a KV cache.

    Args:
      params: the parameter pytree.
      tokens: int32 ``[C]`` at positions ``start .. start + C - 1``.
      cache_k, cache_v: ``[L, N, Hkv, d]``, or ``[1, L, N, Hkv, d]`` (a carried cache of a batch
        of one, returned in that form and written in place); keys are stored without RoPE.
      start: the number of tokens already in the cache: a traced int32 scalar, or a Python int
        (static; dense attention then loops over a static number of key blocks, differentiably).
      config: the decoder's configuration (static).
      policy: an attention policy from :mod:`jaxsel.models.policies` (static; ``None`` = dense).
      select_states: per-layer Selection Cache states (decode with a cached TokenSelect policy).
      limit: int32 scalar; chunk tokens at positions ``>= limit`` are right padding (a sparse
        policy leaves them out of the chunk's mean query). ``None``: all are real.
      seq_axis: inside ``shard_map`` with the cache sharded along the sequence over this mesh
        axis: ``cache_k, cache_v`` are this shard's ``[L, N/P, Hkv, d]`` slots, ``start`` is
        global, each new token is written by the shard that holds its slot, and attention runs
        :func:`jaxsel.models.policies.attend` sequence-sharded.

    Returns:
      ``(logits [C, V] float32, cache_k, cache_v, select_states)`` with the chunk written at
      slots ``start .. start + C - 1`` and ``kv_len = start + C`` valid tokens; with
      ``return_hidden=True`` a fifth element, the final-normed hidden states ``[C, D]``.
    """
    policy = pol.DENSE if policy is None else policy
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be [C] (one sequence), got shape {tokens.shape}")
    if (cache_k.ndim == 5 and cache_k.shape[0] != 1) or cache_k.ndim not in (4, 5):
        raise ValueError(
            f"cache_k must be [L, N, Hkv, d] or [1, L, N, Hkv, d], got shape {cache_k.shape}"
        )
    n_layers, n_cache = cache_k.shape[-4], cache_k.shape[-3]
    if n_layers != config.num_layers:
        raise ValueError(f"cache has {n_layers} layers, config has {config.num_layers}")
    if seq_axis is not None:  # this shard's slots of a cache sharded along the sequence
        n_cache *= axis_size(seq_axis)
    if tokens.shape[0] > n_cache:
        raise ValueError(
            f"chunk of {tokens.shape[0]} tokens does not fit the cache of length {n_cache}"
        )
    dtype = params["embed"].dtype
    x = params["embed"][tokens].astype(dtype)
    # A Python int start stays static: dense attention then loops over a static number of key
    # blocks (a scan, so reverse-mode differentiation works, as training needs).
    start = start if isinstance(start, int) else jnp.asarray(start, jnp.int32)
    # One RoPE table per forward, read by every layer (rotating the cache's keys otherwise costs
    # n * d sines and cosines per layer). The sequence-sharded path rotates as it goes.
    table = None
    if seq_axis is None:
        table = rope_table(
            n_cache, config.head_dim, theta=config.rope_theta, scaling=config.rope_scaling_dict()
        )
    # A carried [1, L, N, Hkv, d] cache (one sequence of a batch of one, see generate.batch_map)
    # is written with its unit axis: unbatched by a reshape and written as [L, N, ...], the last
    # write fused with the reshape back and XLA kept ~10 whole-cache copies per decode step
    # (8K, 30 layers: 222 -> 96 ms per token). Under vmap the plain [L, N, ...] form is the one
    # XLA updates in place.
    unit = cache_k.ndim == 5
    new_states = []
    for i, lp in enumerate(params["layers"]):
        h = rms_norm(x, lp["attn_norm"], eps=config.rms_norm_eps)
        q, k, v = qkv_projection(lp, h)
        # Written into the whole [L, N, Hkv, d] cache (updated in place; per-layer copies stacked
        # back together would rebuild the whole cache every call).
        cache_k = _write(cache_k, k, i, start, seq_axis)
        cache_v = _write(cache_v, v, i, start, seq_axis)
        ck, cv = (cache_k[0, i], cache_v[0, i]) if unit else (cache_k[i], cache_v[i])
        state = None if select_states is None else select_states[i]
        o, state = pol.attend(
            policy,
            q,
            ck,
            cv,
            start,
            layer=i,
            config=config,
            select_state=state,
            limit=limit,
            seq_axis=seq_axis,
            chunk_kv=None if seq_axis is None else (k, v),
            rope_table=table,
        )
        x = x + output_projection(lp, o.astype(dtype))
        h = rms_norm(x, lp["mlp_norm"], eps=config.rms_norm_eps)
        x = x + mlp(lp, h)
        new_states.append(state)
    states = None if select_states is None else tuple(new_states)
    out = lm_logits(params, x, config), cache_k, cache_v, states
    if return_hidden:
        return (*out, rms_norm(x, params["final_norm"], eps=config.rms_norm_eps))
    return out


def forward(
    params: Params, tokens: jax.Array, *, config: DecoderConfig, return_hidden: bool = False
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Full-sequence causal forward of ONE sequence with dense attention: tokens [T] -> [T, V].

    With ``return_hidden=True`` returns ``(logits [T, V], hidden [T, D])`` where ``hidden`` is the
    last layer's output after the final RMSNorm (what the LM head reads); value heads and other
    probes (e.g. OREO's value model) attach there.
    """
    T = tokens.shape[0]
    shape = (config.num_layers, T, config.num_kv_heads, config.head_dim)
    dtype = params["embed"].dtype
    ck, cv = jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
    out = forward_chunk(params, tokens, ck, cv, 0, config=config, return_hidden=return_hidden)
    return (out[0], out[4]) if return_hidden else out[0]
