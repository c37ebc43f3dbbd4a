"""OREO's policy and value models on the Llama-family decoder of :mod:`jaxsel.models`.

The policy is :func:`jaxsel.models.decoder.forward` / ``forward_chunk`` (RMSNorm, RoPE, SwiGLU,
causal attention; Touvron et al. 2023, arXiv 2307.09288). The value model is the same trunk with a
zero-initialised scalar head on the final-normed hidden states (``value_head``), as in OREO
(arXiv 2412.16145 Sec. 4): ``V(s_j) = w . h_j + b`` with ``w = 0, b = 0`` at initialisation, so a
value model built from a policy starts at ``V = 0`` with the policy's features.

This module is a thin adapter: :class:`DecoderConfig` names the few sizes the task needs and
converts to :class:`jaxsel.models.DecoderConfig` (``.llama``); parameters use the layout of
``jaxsel.models`` (``embed``, ``layers`` = list of per-layer dicts, ``final_norm``, ``lm_head``),
only initialised with fan-in scaling (``N(0, 1/fan_in)``, residual outputs further scaled by
``1/sqrt(2 n_layers)``) instead of HF's std 0.02, which trains these tiny models faster. The KV
cache is ``{"k", "v"}`` of shape ``[n_layers, max_len, n_heads, head_dim]`` (keys stored without
RoPE, as ``forward_chunk`` keeps them).

All functions are unbatched (one sequence ``[L]``); callers vmap.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from jaxsel.models import config as _mc
from jaxsel.models import decoder as _dec
from jaxsel.utils.compile import fast_jit

Params = dict[str, Any]

__all__ = [
    "DecoderConfig",
    "decode_step",
    "forward",
    "init_cache",
    "init_params",
    "init_params_jit",
    "prefill",
    "token_logps",
    "values",
]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Sizes of OREO's small decoder; :attr:`llama` is the :mod:`jaxsel.models` config."""

    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    max_len: int = 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"{self.d_model=} must be a multiple of {self.n_heads=}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim {self.d_model // self.n_heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def llama(self) -> _mc.DecoderConfig:
        return _mc.DecoderConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.d_model,
            intermediate_size=self.d_ff,
            num_layers=self.n_layers,
            num_heads=self.n_heads,
            num_kv_heads=self.n_heads,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.norm_eps,
            max_position_embeddings=self.max_len,
        )


def init_params(key: Array, cfg: DecoderConfig, *, value_head: bool = False) -> Params:
    """Random decoder parameters in the :mod:`jaxsel.models` layout; ``value_head=True`` adds a
    zero-initialised scalar head."""
    shapes = _dec.param_shapes(cfg.llama)
    keys = iter(jax.random.split(key, 2 + 7 * cfg.n_layers))
    d, f, n = cfg.d_model, cfg.d_ff, cfg.n_layers
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
    return _dec.forward(params, tokens, config=cfg.llama, return_hidden=True)


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


def init_cache(cfg: DecoderConfig) -> dict[str, Array]:
    shape = (cfg.n_layers, cfg.max_len, cfg.n_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape), "v": jnp.zeros(shape)}


def prefill(params: Params, tokens: Array, cfg: DecoderConfig) -> dict[str, Array]:
    """KV cache of a whole buffer ``[max_len]`` in one causal pass (entries past the current
    position are never attended to and get overwritten while decoding)."""
    if tokens.shape[0] != cfg.max_len:
        raise ValueError(f"tokens has length {tokens.shape[0]} but the cache holds {cfg.max_len=}")
    c = init_cache(cfg)
    _, k, v, _ = _dec.forward_chunk(params, tokens, c["k"], c["v"], jnp.int32(0), config=cfg.llama)
    return {"k": k, "v": v}


def decode_step(
    params: Params, cache: dict[str, Array], token: Array, pos: Array, cfg: DecoderConfig
) -> tuple[Array, Array, dict[str, Array]]:
    """Feed ``token`` at position ``pos``; returns ``(logits [vocab], hidden [d], cache)``.

    Matches :func:`forward` on the prefix: ``decode_step`` over ``tokens[0..p]`` gives
    ``forward(tokens)[p]`` (attention reads cache slots ``<= pos`` only).
    """
    tok = jnp.asarray(token, jnp.int32)[None]
    logits, k, v, _, hid = _dec.forward_chunk(
        params,
        tok,
        cache["k"],
        cache["v"],
        jnp.asarray(pos, jnp.int32),
        config=cfg.llama,
        return_hidden=True,
    )
    return logits[0], hid[0], {"k": k, "v": v}
