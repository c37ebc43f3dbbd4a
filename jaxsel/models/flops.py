"""FLOP counts of the decoder's prefill and decode under an attention policy (for benchmarks).

A multiply-add is 2 FLOPs. Per token and layer the linear layers cost ``2 * P_layer`` with
``P_layer = D (Hq + 2 Hkv) d + Hq d D + 3 D F`` (q/k/v, output projection, SwiGLU MLP); the LM head
costs ``2 D V`` for each token whose logits are read (decode steps only: prefill reads none).
Attention of one query over M keys costs ``4 Hq d M`` (scores and the weighted sum of values).

Under TokenSelect a prefill chunk after ``start`` past tokens attends to ``min(start, budget)`` past
tokens plus its own causal prefix, and scoring reads all ``start`` past keys with one mean query
(``2 Hq d start``); a decode step at context n attends to ``min(n, budget)`` tokens and scores
``n``. Streaming attends to ``min(n, n_sink + n_local)`` and scores nothing.
"""

from __future__ import annotations

from jaxsel.models import policies as pol
from jaxsel.models.config import DecoderConfig


def linear_flops_per_token(config: DecoderConfig) -> int:
    """``2 * P_layer * L``: the linear layers of every layer for one token (no LM head)."""
    c = config
    d, D = c.head_dim, c.hidden_size
    per_layer = D * (c.num_heads + 2 * c.num_kv_heads) * d + c.num_heads * d * D
    per_layer += 3 * D * c.intermediate_size
    return 2 * per_layer * c.num_layers


def lm_head_flops(config: DecoderConfig) -> int:
    return 2 * config.hidden_size * config.vocab_size


def _attended(policy: pol.Policy, n: int) -> int:
    if isinstance(policy, pol.Dense):
        return n
    return min(n, policy.budget)


def _scored(policy: pol.Policy, n: int) -> int:
    if isinstance(policy, pol.TokenSelect) and n > policy.budget:
        return n
    return 0


def prefill_flops(config: DecoderConfig, policy: pol.Policy, n_tokens: int, chunk: int) -> int:
    """FLOPs of prefilling ``n_tokens`` in chunks of ``chunk`` (no LM head)."""
    c = config
    att = 4 * c.num_heads * c.head_dim
    total = linear_flops_per_token(c) * n_tokens
    for start in range(0, n_tokens, chunk):
        size = min(chunk, n_tokens - start)
        past = start if isinstance(policy, pol.Dense) or start <= _budget(policy) else None
        if past is None:  # sparse chunk: the selected past plus the causal chunk
            past = _attended(policy, start)
            total += 2 * c.num_heads * c.head_dim * _scored(policy, start) * c.num_layers
        # query i of the chunk sees `past` tokens and i + 1 chunk tokens
        total += att * c.num_layers * (size * past + size * (size + 1) // 2)
    return total


def decode_flops(config: DecoderConfig, policy: pol.Policy, context: int) -> int:
    """FLOPs of one decode step at ``context`` cached tokens (LM head included)."""
    c = config
    att = 4 * c.num_heads * c.head_dim * _attended(policy, context)
    score = 2 * c.num_heads * c.head_dim * _scored(policy, context)
    return linear_flops_per_token(c) + lm_head_flops(c) + (att + score) * c.num_layers


def _budget(policy: pol.Policy) -> int:
    return getattr(policy, "budget", 0)
