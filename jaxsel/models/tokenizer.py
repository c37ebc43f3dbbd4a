"""A byte-level BPE tokenizer and chat template read from a GGUF file's metadata.

A GGUF file carries its tokenizer as metadata (ggml ``docs/gguf.md``, "Tokenizer"):
``tokenizer.ggml.model`` (``gpt2`` = byte-level BPE), ``.pre`` (the pre-tokenizer llama.cpp
applies), ``.tokens``, ``.merges`` (``"a b"`` strings, best first), ``.token_type`` (1 normal,
3 control, 4 user-defined), ``.bos_token_id`` / ``.eos_token_id`` / ``.padding_token_id`` /
``.unknown_token_id``, ``.add_bos_token`` / ``.add_eos_token`` and ``tokenizer.chat_template``
(Jinja). We rebuild it with the ``tokenizers`` library (no transformers at run time):

- model: BPE over the file's vocabulary and merges, no byte fallback, no unknown token;
- pre-tokenizer: GPT-2's byte-level split; for ``pre == "smollm"`` the digits are split one by one
  first, as SmolLM2's own ``tokenizer.json`` does (``Sequence[Digits(individual_digits=True),
  ByteLevel(add_prefix_space=False, use_regex=True)]``);
- decoder: byte-level; control tokens (type 3) are special tokens, user-defined ones (type 4) added
  tokens, so both are matched whole in text (as llama.cpp and transformers' GGUF loader do).

The digit split is what llama.cpp applies for ``pre == "smollm"`` (its first regex is ``\\p{N}``).
transformers' GGUF converter leaves it out, so its ids differ from ours (and from llama.cpp's and
SmolLM2's own ``tokenizer.json``) where a whitespace run precedes a digit (``"  12"``: ours
``ĠĠ 1 2``, transformers ``Ġ Ġ 1 2``) and around non-ASCII numerals such as ``½``.

The chat template is rendered like transformers' ``apply_chat_template``: a sandboxed Jinja
environment with ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson``
filter that does not escape HTML, ``raise_exception`` and ``strftime_now``, and the special tokens
(``bos_token``, ``eos_token``, ...) as variables.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jaxsel.models.gguf import field_value, open_gguf

CONTROL = 3
USER_DEFINED = 4

#: ``tokenizer.ggml.pre`` values we rebuild; anything else is refused rather than split wrongly.
SUPPORTED_PRE_TOKENIZERS = ("smollm", "gpt2", "default")


@functools.lru_cache(maxsize=8)
def _compile_chat_template(template: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class Tokenizer:
    """Byte-level BPE tokenizer with the special tokens and chat template of a GGUF file.

    Example:
      >>> tok = Tokenizer.from_gguf(model_path("smollm2"))  # doctest: +SKIP
      >>> tok.encode(" 71432")  # doctest: +SKIP
      [216, 39, 33, 36, 35, 34]
    """

    def __init__(
        self,
        backend: Any,
        *,
        bos_id: int | None,
        eos_id: int | None,
        pad_id: int | None = None,
        unk_id: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        chat_template: str | None = None,
        source: str = "<tokenizer>",
    ):
        self.backend = backend
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.add_bos, self.add_eos = add_bos, add_eos
        self.chat_template = chat_template
        self.source = source

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
        """Builds the tokenizer from the metadata of the GGUF file at ``path``.

        Raises:
          FileNotFoundError: no such file.
          ValueError: not a GGUF file, no vocabulary, a tokenizer model other than ``gpt2``
            (byte-level BPE) or a pre-tokenizer outside :data:`SUPPORTED_PRE_TOKENIZERS`, naming
            the file and the value.
        """
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as Backend

        path = Path(path)
        reader = open_gguf(path)

        def get(key: str, default: Any = None) -> Any:
            return field_value(reader, f"tokenizer.{key}", default)

        kind = get("ggml.model")
        if kind != "gpt2":
            raise ValueError(
                f"{path}: tokenizer.ggml.model={kind!r} is not supported (supported: 'gpt2', "
                "byte-level BPE)"
            )
        pre = get("ggml.pre", "default")
        if pre not in SUPPORTED_PRE_TOKENIZERS:
            raise ValueError(
                f"{path}: tokenizer.ggml.pre={pre!r} is not supported (supported: "
                f"{', '.join(SUPPORTED_PRE_TOKENIZERS)})"
            )
        tokens = get("ggml.tokens")
        merges = get("ggml.merges")
        if not tokens or merges is None:
            raise ValueError(f"{path} has no tokenizer.ggml.tokens / tokenizer.ggml.merges")
        types = get("ggml.token_type") or [1] * len(tokens)
        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        backend = Backend(
            models.BPE(vocab=vocab, merges=pairs, byte_fallback=False, fuse_unk=False)
        )
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre == "smollm":
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        else:
            backend.pre_tokenizer = byte_level
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens(
            [
                AddedToken(t, special=True, normalized=False)
                for t, k in zip(tokens, types)
                if k == CONTROL
            ]
        )
        backend.add_tokens(
            [
                AddedToken(t, special=False, normalized=False)
                for t, k in zip(tokens, types)
                if k == USER_DEFINED
            ]
        )
        return cls(
            backend,
            bos_id=get("ggml.bos_token_id"),
            eos_id=get("ggml.eos_token_id"),
            pad_id=get("ggml.padding_token_id"),
            unk_id=get("ggml.unknown_token_id"),
            add_bos=bool(get("ggml.add_bos_token", False)),
            add_eos=bool(get("ggml.add_eos_token", False)),
            chat_template=get("chat_template"),
            source=str(path),
        )

    @property
    def vocab_size(self) -> int:
        """Number of token ids (special tokens included)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token(self, token_id: int | None) -> str | None:
        """The vocabulary string of ``token_id`` (``None`` for ``None``)."""
        return None if token_id is None else self.backend.id_to_token(int(token_id))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in the text map to their ids.

        ``add_special_tokens`` adds BOS/EOS only where the file's ``add_bos_token`` /
        ``add_eos_token`` ask for them (SmolLM2: neither).
        """
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens:
            if self.add_bos and self.bos_id is not None:
                ids = [self.bos_id, *ids]
            if self.add_eos and self.eos_id is not None:
                ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (byte-level decoding; special tokens kept unless skipped)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        """Renders ``messages`` (``[{"role": ..., "content": ...}, ...]``) with the file's template.

        Returns the prompt string, or its ids (no BOS/EOS added) with ``tokenize=True``. Extra
        keyword arguments are template variables, as in transformers.

        Raises:
          ValueError: the file has no ``tokenizer.chat_template``.
        """
        if not self.chat_template:
            raise ValueError(f"{self.source} has no tokenizer.chat_template")
        variables = {
            "bos_token": self.token(self.bos_id),
            "eos_token": self.token(self.eos_id),
            "unk_token": self.token(self.unk_id),
            "pad_token": self.token(self.pad_id),
            **kwargs,
        }
        text = _compile_chat_template(self.chat_template).render(
            messages=[dict(m) for m in messages],
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text
