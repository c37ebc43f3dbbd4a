"""OREO's policy and value models on the Llama-family decoder of :mod:`jaxsel.models`.

The policy is :func:`jaxsel.models.decoder.forward` / ``forward_chunk`` (RMSNorm, RoPE, SwiGLU,
causal attention; Touvron et al. 2023, arXiv 2307.09288). The value model is the same trunk with a
zero-initialised scalar head on the final-normed hidden states (``value_head``), as in OREO
(arXiv 2412.16145 Sec. 4): ``V(s_j) = w . h_j + b`` with ``w = 0, b = 0`` at initialisation, so a
value model built from a policy starts at ``V = 0`` with the policy's features.

This module is a thin adapter on the one configuration and cache of :mod:`jaxsel.models`:
:func:`small_decoder` builds a :class:`jaxsel.models.DecoderConfig` from the few sizes the task
needs (its ``max_position_embeddings`` is the padded sequence buffer length), parameters use the
``jaxsel.models`` layout (``embed``, ``layers`` = list of per-layer dicts, ``final_norm``,
``lm_head``), only initialised with fan-in scaling (``N(0, 1/fan_in)``, residual outputs further
scaled by ``1/sqrt(2 n_layers)``) instead of HF's std 0.02, which trains these tiny models faster.
The KV cache is one sequence's slice of :func:`jaxsel.models.init_cache` (a
:class:`jaxsel.models.cache.KVCache` with ``k, v [n_layers, max_len, n_heads, head_dim]``, keys
stored without RoPE, as ``forward_chunk`` keeps them).

All functions are unbatched (one sequence ``[L]``); callers vmap.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from jaxsel.models import decoder as _dec
from jaxsel.models.cache import KVCache
from jaxsel.models.cache import init_cache as _init_cache
from jaxsel.models.config import DecoderConfig
from jaxsel.utils.compile import fast_jit

Params = dict[str, Any]

__all__ = [
    "DecoderConfig",
    "KVCache",
    "decode_step",
    "forward",
    "init_cache",
    "init_params",
    "init_params_jit",
    "prefill",
    "small_decoder",
    "token_logps",
    "values",
]


def small_decoder(
    vocab_size: int,
    *,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    d_ff: int = 128,
    max_len: int = 64,
    rope_theta: float = 10000.0,
    norm_eps: float = 1e-5,
) -> DecoderConfig:
    """The :class:`jaxsel.models.DecoderConfig` of OREO's small decoder (multi-head attention,
    untied head); ``max_len`` is the sequence buffer length (``max_position_embeddings``).

    Raises:
      ValueError: a head split that does not divide ``d_model`` or gives an odd head dimension.
    """
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
    if (d_model // n_heads) % 2:
        raise ValueError(f"head dim d_model / n_heads = {d_model // n_heads} must be even for RoPE")
    return DecoderConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_ff,
        num_layers=n_layers,
        num_heads=n_heads,
        num_kv_heads=n_heads,
        rope_theta=rope_theta,
        rms_norm_eps=norm_eps,
        max_position_embeddings=max_len,
    )


def init_params(key: Array, cfg: DecoderConfig, *, value_head: bool = False) -> Params:
    """Random decoder parameters in the :mod:`jaxsel.models` layout; ``value_head=True`` adds a
    zero-initialised scalar head."""
    shapes = _dec.param_shapes(cfg)
    keys = iter(jax.random.split(key, 2 + 7 * cfg.num_layers))
    d, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    resid = 1.0 / jnp.sqrt(2.0 * n)
    fan_in = {"wq": d, "wk": d, "wv": d, "wo": d, "w_gate": d, "w_up": d, "w_down": f}
    scale = {"wo": resid, "w_down": resid}

    def layer(lp_shapes: dict[str, tuple[int, ...]]) -> Params:
        out = {}
        for name, shape in lp_shapes.items():
            if name in fan_in:
                w = jax.random.normal(next(keys), shape) / jnp.sqrt(float(fan_in[name]))
                out[name] = w * scale.get(name, 1.0)
            else:  # the two RMSNorm weights
                out[name] = jnp.ones(shape)
        return out

    p: Params = {
        "embed": jax.random.normal(next(keys), shapes["embed"]) * 0.02,
        "layers": [layer(s) for s in shapes["layers"]],
        "final_norm": jnp.ones(shapes["final_norm"]),
        "lm_head": jax.random.normal(next(keys), shapes["lm_head"]) / jnp.sqrt(float(d)),
    }
    if value_head:
        p["value_head"] = {"w": jnp.zeros((d,)), "b": jnp.zeros(())}
    return p


# Op by op every random draw compiles its own program, and the threefry draws are slow to compile
# with XLA's default passes: it runs once, so compile it fast (under jit / vmap it is traced into
# the caller's program like ``init_params``).
init_params_jit = fast_jit(init_params, static_argnums=1, static_argnames="value_head")


def forward(params: Params, tokens: Array, cfg: DecoderConfig) -> tuple[Array, Array]:
    """Causal forward pass of one sequence (:func:`jaxsel.models.decoder.forward`).

    Args:
      tokens: ``[L]`` int token ids.

    Returns:
      ``(logits [L, vocab], hidden [L, d_model])``, hidden after the final norm.
    """
    return _dec.forward(params, tokens, config=cfg, return_hidden=True)


def token_logps(params: Params, tokens: Array, cfg: DecoderConfig) -> tuple[Array, Array]:
    """Next-token log-probs of a sequence: ``(logp [L-1], logits [L-1, vocab])`` where
    ``logp[j] = log pi(tokens[j+1] | tokens[:j+1])``."""
    logits, _ = forward(params, tokens, cfg)
    logits = logits[:-1]
    lp = jax.nn.log_softmax(logits, -1)
    return jnp.take_along_axis(lp, tokens[1:, None], -1)[:, 0], logits


def values(params: Params, tokens: Array, cfg: DecoderConfig) -> Array:
    """Value of every prefix: ``[L]`` with ``out[j] = V(tokens[:j+1])``."""
    if "value_head" not in params:
        raise ValueError("params have no 'value_head'; use init_params(..., value_head=True)")
    _, hid = forward(params, tokens, cfg)
    return hid @ params["value_head"]["w"] + params["value_head"]["b"]


# ---------------------------------------------------------------------------------------------
# incremental decoding with a per-sequence KV cache (jaxsel.models.decoder.forward_chunk)


def init_cache(cfg: DecoderConfig) -> KVCache:
    """An empty cache for one sequence of ``cfg.max_position_embeddings`` tokens."""
    batch = _init_cache(cfg, 1, cfg.max_position_embeddings)
    return jax.tree.map(lambda x: x[0], batch)


def prefill(params: Params, tokens: Array, cfg: DecoderConfig) -> KVCache:
    """KV cache of a whole buffer ``[max_len]`` in one causal pass (entries past the current
    position are never attended to and get overwritten while decoding)."""
    if tokens.shape[0] != cfg.max_position_embeddings:
        raise ValueError(
            f"tokens has length {tokens.shape[0]} but the cache holds "
            f"max_len={cfg.max_position_embeddings}"
        )
    c = init_cache(cfg)
    _, k, v, _ = _dec.forward_chunk(params, tokens, c.k, c.v, jnp.int32(0), config=cfg)
    return KVCache(k, v, jnp.int32(tokens.shape[0]))


def decode_step(
    params: Params, cache: KVCache, token: Array, pos: Array, cfg: DecoderConfig
) -> tuple[Array, Array, KVCache]:
    """Feed ``token`` at position ``pos``; returns ``(logits [vocab], hidden [d], cache)``.

    Matches :func:`forward` on the prefix: ``decode_step`` over ``tokens[0..p]`` gives
    ``forward(tokens)[p]`` (attention reads cache slots ``<= pos`` only).
    """
    pos = jnp.asarray(pos, jnp.int32)
    logits, k, v, _, hid = _dec.forward_chunk(
        params,
        jnp.asarray(token, jnp.int32)[None],
        cache.k,
        cache.v,
        pos,
        config=cfg,
        return_hidden=True,
    )
    return logits[0], hid[0], KVCache(k, v, jnp.maximum(cache.length, pos + 1))
