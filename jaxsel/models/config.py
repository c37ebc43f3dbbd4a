"""Configuration of a Llama-family causal decoder (Llama 2/3, Qwen2, Mistral).

One frozen dataclass covers the family: the differences are hyperparameters (GQA head counts, RoPE
theta and scaling, RMSNorm epsilon, tied embeddings, Qwen2's q/k/v bias). ``from_hf_dict`` reads a
Hugging Face ``config.json`` (transformers 4.x keys ``rope_theta``/``rope_scaling`` and 5.x key
``rope_parameters`` alike).

Mistral's ``sliding_window`` is recorded but not applied: our attention is always over the whole
cache (or the policy's selection). For prompts shorter than the window (4096 for Mistral 7B v0.1;
``null`` from v0.2 on) the two agree exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``kind`` is ``"llama3"`` (Llama 3.1 wavelength-dependent) or
    ``"linear"`` (position interpolation: every frequency divided by ``factor``)."""

    kind: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.kind not in ("llama3", "linear"):
            raise ValueError(
                f"rope scaling kind={self.kind!r} is not supported (supported: 'llama3', 'linear')"
            )
        if self.factor <= 0:
            raise ValueError(f"rope scaling factor must be > 0, got {self.factor=}")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyperparameters of the decoder. Static under ``jit`` (frozen and hashable).

    Attributes:
      vocab_size, hidden_size, intermediate_size, num_layers: the usual sizes.
      num_heads: query heads H_q. num_kv_heads: key/value heads H_kv (GQA; H_q % H_kv == 0).
      head_dim: per-head width d (defaults to hidden_size // num_heads).
      rope_theta: RoPE base. rope_scaling: optional :class:`RopeScaling`.
      rms_norm_eps: RMSNorm epsilon. tie_word_embeddings: lm head = embedding matrix.
      qkv_bias: bias on the q/k/v projections (Qwen2). mlp_bias: bias on the MLP (Llama option).
      o_bias: bias on the output projection (Llama ``attention_bias`` sets q/k/v/o biases).
      sliding_window: recorded from Mistral/Qwen2 configs; not applied (see module docstring).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    architecture: str = "LlamaForCausalLM"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads="
                f"{self.num_kv_heads} (grouped-query attention)"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_heads="
                    f"{self.num_heads}; give head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim=}")

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def rope_scaling_dict(self) -> dict[str, Any] | None:
        """RoPE scaling as the Hugging Face dict :func:`jaxsel.attention.apply_rope` takes.

        Llama 3.1 ("llama3") divides low frequencies (wavelength above original_max /
        low_freq_factor) by ``factor``, keeps high ones (below original_max / high_freq_factor)
        and blends linearly in between; "linear" divides all by ``factor``.
        """
        s = self.rope_scaling
        if s is None:
            return None
        if s.kind == "linear":
            return {"rope_type": "linear", "factor": s.factor}
        return {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        """Builds a config from a Hugging Face ``config.json`` dictionary.

        Raises:
          ValueError: for an architecture outside Llama/Qwen2/Mistral, or an unsupported RoPE type.
        """
        archs = d.get("architectures") or [_ARCH_BY_MODEL_TYPE.get(d.get("model_type"), "?")]
        arch = archs[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {arch!r} (model_type={d.get('model_type')!r}); "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act={act!r}; the Llama family uses 'silu'")
        rope = dict(d.get("rope_parameters") or {})
        theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
        if d.get("rope_scaling"):
            rope.update(d["rope_scaling"])
        kind = rope.get("rope_type", rope.get("type", "default"))
        scaling = None
        if kind == "llama3":
            scaling = RopeScaling(
                kind="llama3",
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            )
        elif kind == "linear":
            scaling = RopeScaling(kind="linear", factor=float(rope["factor"]))
        elif kind != "default":
            raise ValueError(
                f"unsupported rope type {kind!r} in config.json (supported: default, llama3, linear)"
            )
        heads = int(d["num_attention_heads"])
        is_qwen = arch == "Qwen2ForCausalLM"
        attn_bias = bool(d.get("attention_bias", False))
        window = d.get("sliding_window") if d.get("use_sliding_window", True) else None
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=d.get("head_dim") or None,
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=is_qwen or attn_bias,
            o_bias=attn_bias and not is_qwen,
            mlp_bias=bool(d.get("mlp_bias", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            sliding_window=window,
            architecture=arch,
        )


_ARCH_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}
