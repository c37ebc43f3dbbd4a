"""Text in, text out: a real model with its tokenizer, streamed token by token.

:func:`load_pretrained` gives ``(decoder, tokenizer)`` for a fetched model (``jaxsel fetch
smollm2``); :func:`stream_text` prefills a prompt and yields the decoded text piece by piece as each
token is decoded, with the prefill and decode times in a :class:`~jaxsel.models.generate.StreamStats` filled in as it
goes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax

from jaxsel.models import policies as pol
from jaxsel.models.fetch import model_path
from jaxsel.models.generate import StreamStats, stream_generate
from jaxsel.models.gguf import load_gguf
from jaxsel.models.module import Decoder
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
    """Yields the completion of ``prompt_ids`` as text, a piece per decoded token
    (:func:`jaxsel.models.generate.stream_generate` decoded as it goes).

    Pieces are the growth of the decoded text, so multi-token characters appear once complete.
    Stops at the tokenizer's EOS (not yielded) or after ``max_new_tokens``.
    """
    ids: list[int] = []
    shown = ""
    for tok in stream_generate(
        decoder.params_tree(),
        decoder.config,
        prompt_ids,
        max_new_tokens=max_new_tokens,
        eos_id=tokenizer.eos_id if stop_at_eos else None,
        temperature=temperature,
        top_p=top_p,
        key=key,
        stats=stats,
        policy=policy,
        policy_options=policy_options,
    ):
        ids.append(tok)
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown) :]
            shown = text
