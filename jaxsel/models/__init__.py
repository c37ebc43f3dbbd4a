"""Llama-family decoder with a switchable attention policy and a Hugging Face checkpoint loader.

- :class:`DecoderConfig` (Llama 2/3, Qwen2, Mistral), :func:`init_params`, pure :func:`forward` /
  :func:`forward_chunk`, and the NNX wrapper :class:`Decoder` (``m(tokens) -> logits``).
- :func:`load_hf_checkpoint`: local safetensors folder -> :class:`Decoder` (no network, no torch).
- :func:`load_gguf`: a llama-architecture GGUF file (llama.cpp's format, quantized or not) ->
  :class:`Decoder`; :class:`Tokenizer` (byte-level BPE + chat template from the same file);
  :func:`fetch_model` / :func:`model_path` (``jaxsel fetch smollm2``: SmolLM2-135M-Instruct into the
  user cache).
- :func:`generate`: chunked prefill into a static :class:`KVCache`, jitted decode loop, greedy or
  top-p sampling, with an attention policy per call (:class:`Dense`, :class:`TokenSelect`,
  :class:`Streaming`, :class:`Quest`; :func:`make_policy`, :func:`at_paper_budget`); :func:`start_generation` + ``decode_jit`` for decoding
  in pieces, :func:`stream_generate` (token ids) and :func:`stream_text` (text, with
  :func:`load_pretrained` and :func:`chat_prompt`); :func:`sequence_nll` for perplexity.
- :func:`speculative_generate`: lossless multi-draft speculative sampling, the same weights with a
  sparse attention policy drafting and dense attention verifying (:mod:`jaxsel.speculative`
  schemes select the token).
"""

from jaxsel.models.cache import KVCache, init_cache
from jaxsel.models.config import DecoderConfig, RopeScaling
from jaxsel.models.decoder import forward, forward_chunk, init_params
from jaxsel.models.fetch import fetch_model, model_path
from jaxsel.models.generate import (
    StreamStats,
    generate,
    sample_token,
    sequence_nll,
    start_generation,
    stream_generate,
)
from jaxsel.models.gguf import load_gguf
from jaxsel.models.hf import load_hf_checkpoint
from jaxsel.models.module import Decoder
from jaxsel.models.policies import (
    Dense,
    Quest,
    Streaming,
    TokenSelect,
    at_paper_budget,
    make_policy,
)
from jaxsel.models.speculative import SpeculativeStats, speculative_generate
from jaxsel.models.text import chat_prompt, load_pretrained, stream_text
from jaxsel.models.tokenizer import Tokenizer

__all__ = [
    "Decoder",
    "DecoderConfig",
    "Dense",
    "KVCache",
    "Quest",
    "RopeScaling",
    "SpeculativeStats",
    "StreamStats",
    "Streaming",
    "TokenSelect",
    "Tokenizer",
    "at_paper_budget",
    "chat_prompt",
    "fetch_model",
    "forward",
    "forward_chunk",
    "generate",
    "init_cache",
    "init_params",
    "load_gguf",
    "load_hf_checkpoint",
    "load_pretrained",
    "make_policy",
    "model_path",
    "sample_token",
    "sequence_nll",
    "speculative_generate",
    "start_generation",
    "stream_generate",
    "stream_text",
]
