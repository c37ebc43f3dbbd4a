"""Long-context evaluation helpers: passkey prompts (Landmark Attention's protocol), answer
parsing and Wilson intervals.

Passkey retrieval (Mohtashami & Jaggi 2023, arXiv 2305.16300; used by InfLLM and TokenSelect): a
task line, a filler text repeated, a needle "The pass key is K. Remember it. K is the pass key."
at a chosen depth (the share of the filler before it), and the question "What is the pass key?
The pass key is"; parts joined by newlines. The model answers by greedy completion; it is right
when the first integer it writes equals K.
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"


def needle(passkey: int) -> str:
    return f"The pass key is {passkey}. Remember it. {passkey} is the pass key."


def passkey_prompt(
    encode: Callable[[str], list[int]], length: int, depth: float, passkey: int
) -> list[int]:
    """Token ids of a passkey prompt of exactly ``length`` tokens, needle at ``depth`` in [0, 1].

    The parts are tokenized apart and joined with newline tokens; the filler is a whole number of
    sentences before the needle and is cut at a token boundary after it so the total is exact.

    Raises:
      ValueError: ``length`` too short for the task, needle and question, or depth outside [0, 1].
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth=}")
    nl = encode("\n")
    head = encode(TASK) + nl
    tail = nl + encode(needle(passkey)) + nl
    question = nl + encode(QUESTION)
    unit = encode(" " + FILLER)
    room = length - len(head) - len(tail) - len(question)
    if room < len(unit):
        raise ValueError(f"length={length} leaves no room for filler (needs > {length - room})")
    n_units = room // len(unit)
    before = round(depth * n_units)
    filler_after = (unit * (n_units - before + 1))[: room - before * len(unit)]
    ids = head + unit * before + tail + filler_after + question
    assert len(ids) == length, (len(ids), length)
    return ids


def first_integer(text: str) -> int | None:
    """The first run of digits in ``text`` as an int (``None`` if there is none)."""
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


def wilson_interval(successes: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def depths(n: int) -> Sequence[float]:
    """``n`` needle depths evenly spread over [0, 1] (both ends included for n > 1)."""
    return [i / max(n - 1, 1) for i in range(n)]


# The Devil's Dictionary (Ambrose Bierce, public domain), as Debian's dict-devil package ships it:
# a long English text for perplexity and natural-text prompts.
DEVIL_DICTIONARY = Path("/usr/share/dictd/devil.dict.dz")


def devil_dictionary_tokens(encode: Callable[[str], list[int]], n: int | None = None) -> np.ndarray:
    """The first ``n`` tokens (all when ``None``) of The Devil's Dictionary, int32.

    Raises:
      FileNotFoundError: the text is not installed (``apt-get install dict-devil``).
      ValueError: the text has fewer than ``n`` tokens.
    """
    if not DEVIL_DICTIONARY.exists():
        raise FileNotFoundError(f"{DEVIL_DICTIONARY} missing: apt-get install dict-devil")
    text = gzip.open(DEVIL_DICTIONARY).read().decode("utf-8", "replace")
    ids = np.asarray(encode(text), np.int32)
    if n is not None and len(ids) < n:
        raise ValueError(f"The Devil's Dictionary has {len(ids)} tokens, fewer than n={n}")
    return ids if n is None else ids[:n]
