"""A small Llama-family decoder (RMSNorm, RoPE, SwiGLU, causal attention) as pure functions.

Why this is separate from ``jaxsel.models``: it was written before ``jaxsel.models`` landed, and
the OREO results in ``results/oreo/`` were measured with it. ``jaxsel.models.decoder`` now has
everything OREO needs (``forward(..., return_hidden=True)`` for the value head,
``forward_chunk(..., return_hidden=True)`` for cached one-token decoding), so the move needs no
change there: this module's ``init_params / forward / decode_step / prefill`` become thin
adapters over ``decoder.init_params / forward / forward_chunk`` (cache ``[L, N, Hkv, d]``,
``layers`` a list instead of a stacked pytree) and the benchmark is re-run. The parameter layout
here already follows the Llama checkpoint names (``embed``, per-layer ``attn_norm/wq/wk/wv/wo/
mlp_norm/w_gate/w_up/w_down`` stacked on a leading layer axis, ``final_norm``, ``lm_head``). The
OREO value model is the same trunk with a zero-initialised scalar head (``value_head``), as in
arXiv 2412.16145 Sec. 4.

All functions are unbatched (one sequence ``[L]``); callers vmap.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from jaxsel.rl.oreo._compile import FAST_COMPILE

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


def init_params(key: Array, cfg: DecoderConfig, *, value_head: bool = False) -> Params:
    """Random decoder parameters; ``value_head=True`` adds a zero-initialised scalar head."""
    ks = jax.random.split(key, 9)
    d, f, n = cfg.d_model, cfg.d_ff, cfg.n_layers
    dense = lambda k, shape, fan_in: jax.random.normal(k, shape) / jnp.sqrt(fan_in)
    p: Params = {
        "embed": jax.random.normal(ks[0], (cfg.vocab_size, d)) * 0.02,
        "layers": {
            "attn_norm": jnp.ones((n, d)),
            "wq": dense(ks[1], (n, d, d), d),
            "wk": dense(ks[2], (n, d, d), d),
            "wv": dense(ks[3], (n, d, d), d),
            "wo": dense(ks[4], (n, d, d), d) / jnp.sqrt(2.0 * n),
            "mlp_norm": jnp.ones((n, d)),
            "w_gate": dense(ks[5], (n, d, f), d),
            "w_up": dense(ks[6], (n, d, f), d),
            "w_down": dense(ks[7], (n, f, d), f) / jnp.sqrt(2.0 * n),
        },
        "final_norm": jnp.ones((d,)),
        "lm_head": dense(ks[8], (d, cfg.vocab_size), d),
    }
    if value_head:
        p["value_head"] = {"w": jnp.zeros((d,)), "b": jnp.zeros(())}
    return p


# Top-level use only (``compiler_options`` cannot be nested in jit/vmap; there, call
# ``init_params``). Op by op every random draw compiles its own program, and with the default
# XLA passes the threefry draws take ~9 s of CPU to compile: it runs once, so compile it fast.
init_params_jit = jax.jit(
    init_params, static_argnums=1, static_argnames="value_head", compiler_options=FAST_COMPILE
)


def _rms(x: Array, w: Array, eps: float) -> Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * w


def _rope(x: Array, pos: Array, theta: float) -> Array:
    """x: [..., H, dh]; pos broadcastable to x.shape[:-2]."""
    half = x.shape[-1] // 2
    freq = theta ** (-jnp.arange(half) / half)
    ang = pos[..., None, None] * freq
    c, s = jnp.cos(ang), jnp.sin(ang)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], -1)


def _mlp(lp: Params, x: Array, eps: float) -> Array:
    h = _rms(x, lp["mlp_norm"], eps)
    return (jax.nn.silu(h @ lp["w_gate"]) * (h @ lp["w_up"])) @ lp["w_down"]


def _trunk(params: Params, tokens: Array, cfg: DecoderConfig) -> tuple[Array, Array, Array]:
    """Causal pass over ``[L]`` tokens: ``(hidden [L, d] after the final norm, k, v)`` with
    ``k, v`` of shape ``[n_layers, L, n_heads, head_dim]`` (the KV cache of the prefix)."""
    L = tokens.shape[0]
    h, dh = cfg.n_heads, cfg.head_dim
    x = params["embed"][tokens]
    pos = jnp.arange(L, dtype=jnp.float32)
    causal = jnp.tril(jnp.ones((L, L), bool))

    def layer(x, lp):
        y = _rms(x, lp["attn_norm"], cfg.norm_eps)
        q = _rope((y @ lp["wq"]).reshape(L, h, dh), pos, cfg.rope_theta)
        k = _rope((y @ lp["wk"]).reshape(L, h, dh), pos, cfg.rope_theta)
        v = (y @ lp["wv"]).reshape(L, h, dh)
        s = jnp.einsum("qhd,khd->hqk", q, k) / jnp.sqrt(dh)
        a = jax.nn.softmax(jnp.where(causal, s, -1e30), -1)
        o = jnp.einsum("hqk,khd->qhd", a, v).reshape(L, h * dh)
        x = x + o @ lp["wo"]
        return x + _mlp(lp, x, cfg.norm_eps), (k, v)

    x, (k, v) = jax.lax.scan(layer, x, params["layers"])
    return _rms(x, params["final_norm"], cfg.norm_eps), k, v


def forward(params: Params, tokens: Array, cfg: DecoderConfig) -> tuple[Array, Array]:
    """Causal forward pass of one sequence.

    Args:
      tokens: ``[L]`` int token ids.

    Returns:
      ``(logits [L, vocab], hidden [L, d_model])``, hidden after the final norm.
    """
    hid, _, _ = _trunk(params, tokens, cfg)
    return hid @ params["lm_head"], hid


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
# incremental decoding with a per-sequence KV cache


def prefill(params: Params, tokens: Array, cfg: DecoderConfig) -> dict[str, Array]:
    """KV cache of a whole buffer ``[max_len]`` in one causal pass (entries past the current
    position are never attended to and get overwritten while decoding)."""
    if tokens.shape[0] != cfg.max_len:
        raise ValueError(f"tokens has length {tokens.shape[0]} but the cache holds {cfg.max_len=}")
    _, k, v = _trunk(params, tokens, cfg)
    return {"k": k, "v": v}


def init_cache(cfg: DecoderConfig) -> dict[str, Array]:
    shape = (cfg.n_layers, cfg.max_len, cfg.n_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape), "v": jnp.zeros(shape)}


def decode_step(
    params: Params, cache: dict[str, Array], token: Array, pos: Array, cfg: DecoderConfig
) -> tuple[Array, Array, dict[str, Array]]:
    """Feed ``token`` at position ``pos``; returns ``(logits [vocab], hidden [d], cache)``.

    Matches :func:`forward` on the prefix: ``decode_step`` over ``tokens[0..p]`` gives
    ``forward(tokens)[p]``.
    """
    h, dh = cfg.n_heads, cfg.head_dim
    x = params["embed"][token]
    fpos = jnp.asarray(pos, jnp.float32)
    visible = jnp.arange(cfg.max_len) <= pos

    def layer(x, xs):
        lp, kc, vc = xs
        y = _rms(x, lp["attn_norm"], cfg.norm_eps)
        q = _rope((y @ lp["wq"]).reshape(h, dh), fpos, cfg.rope_theta)
        k = _rope((y @ lp["wk"]).reshape(h, dh), fpos, cfg.rope_theta)
        v = (y @ lp["wv"]).reshape(h, dh)
        kc = jax.lax.dynamic_update_slice(kc, k[None], (pos, 0, 0))
        vc = jax.lax.dynamic_update_slice(vc, v[None], (pos, 0, 0))
        s = jnp.einsum("hd,khd->hk", q, kc) / jnp.sqrt(dh)
        a = jax.nn.softmax(jnp.where(visible, s, -1e30), -1)
        o = jnp.einsum("hk,khd->hd", a, vc).reshape(h * dh)
        x = x + o @ lp["wo"]
        return x + _mlp(lp, x, cfg.norm_eps), (kc, vc)

    x, (kc, vc) = jax.lax.scan(layer, x, (params["layers"], cache["k"], cache["v"]))
    hid = _rms(x, params["final_norm"], cfg.norm_eps)
    return hid @ params["lm_head"], hid, {"k": kc, "v": vc}
