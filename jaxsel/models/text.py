"""Text in, text out: a real model with its tokenizer, streamed token by token.

:func:`load_pretrained` gives ``(decoder, tokenizer)`` for a fetched model (``jaxsel fetch
smollm2``); :func:`stream_text` prefills a prompt and yields the decoded text piece by piece as each
token is decoded, with the prefill and decode times in a :class:`StreamStats` filled in as it goes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jaxsel.models import policies as pol
from jaxsel.models.decoder import Decoder
from jaxsel.models.fetch import model_path
from jaxsel.models.generate import decode_jit, start_generation
from jaxsel.models.gguf import load_gguf
from jaxsel.models.tokenizer import Tokenizer


def load_pretrained(name: str = "smollm2", *, dtype: Any = None) -> tuple[Decoder, Tokenizer]:
    """The decoder and tokenizer of a fetched model.

    Raises:
      FileNotFoundError: the model is not in the cache; the message is the command that fetches it.
    """
    path = model_path(name)
    return load_gguf(path, dtype=dtype), Tokenizer.from_gguf(path)


def chat_prompt(tokenizer: Tokenizer, user: str, *, system: str | None = None) -> list[int]:
    """Token ids of one user turn in the model's chat template, ending with the assistant's turn."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)


@dataclasses.dataclass
class StreamStats:
    """Filled in by :func:`stream_text`: token counts and seconds (the prefill's compilation is
    part of ``prefill_s``; ``decode_s`` leaves out the first step, which compiles)."""

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


def stream_text(
    decoder: Decoder,
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int = 64,
    policy: str | pol.Policy = "dense",
    policy_options: dict[str, Any] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    key: jax.Array | None = None,
    stats: StreamStats | None = None,
    stop_at_eos: bool = True,
) -> Iterator[str]:
    """Yields the completion of ``prompt_ids`` as text, a piece per decoded token.

    Pieces are the growth of the decoded text, so multi-token characters appear once complete.
    Stops at the tokenizer's EOS (not yielded) or after ``max_new_tokens``.
    """
    if temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs an explicit key")
    key = jax.random.key(0) if key is None else key
    stats = StreamStats() if stats is None else stats
    params, config = decoder.params_tree(), decoder.config
    t0 = time.perf_counter()
    policy, state = start_generation(
        params,
        config,
        [np.asarray(prompt_ids, np.int32)],
        max_new_tokens=max_new_tokens,
        policy=policy,
        policy_options=policy_options,
    )
    jax.block_until_ready(state)
    stats.prompt_tokens, stats.prefill_s = len(prompt_ids), time.perf_counter() - t0
    ids: list[int] = []
    shown = ""
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
        )
        tok = int(tok[0, 0])
        dt = time.perf_counter() - t1
        if t == 0:
            stats.first_step_s = dt
        else:
            stats.decode_s += dt
        if stop_at_eos and tok == tokenizer.eos_id:
            return
        stats.new_tokens += 1
        ids.append(tok)
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown) :]
            shown = text
