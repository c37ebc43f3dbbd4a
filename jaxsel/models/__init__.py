"""Llama-family decoder with a switchable attention policy and a Hugging Face checkpoint loader.

- :class:`DecoderConfig` (Llama 2/3, Qwen2, Mistral), :func:`init_params`, pure :func:`forward` /
  :func:`forward_chunk`, and the NNX wrapper :class:`Decoder` (``m(tokens) -> logits``).
- :func:`load_hf_checkpoint`: local safetensors folder -> :class:`Decoder` (no network, no torch).
- :func:`generate`: chunked prefill into a static :class:`KVCache`, jitted decode loop, greedy or
  top-p sampling, with an attention policy per call (:class:`Dense`, :class:`TokenSelect`,
  :class:`Streaming`; :func:`make_policy`).
"""

from jaxsel.models.cache import KVCache, init_cache
from jaxsel.models.config import DecoderConfig, RopeScaling
from jaxsel.models.decoder import Decoder, forward, forward_chunk, init_params
from jaxsel.models.generate import generate, sample_token
from jaxsel.models.hf import load_hf_checkpoint
from jaxsel.models.policies import Dense, Streaming, TokenSelect, make_policy

__all__ = [
    "Decoder",
    "DecoderConfig",
    "Dense",
    "KVCache",
    "RopeScaling",
    "Streaming",
    "TokenSelect",
    "forward",
    "forward_chunk",
    "generate",
    "init_cache",
    "init_params",
    "load_hf_checkpoint",
    "make_policy",
    "sample_token",
]
