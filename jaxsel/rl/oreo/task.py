"""A synthetic multi-step reasoning task: chains of modular arithmetic, one step per line.

A problem is a start value ``x0`` and ``n`` operations ``(op_k, a_k)`` with ``op`` in
``{+, -, *}``, all modulo ``m``. The solution writes one step per operation and then the answer:

    prompt:    <bos> x0 op1 a1 op2 a2 ... opn an |
    response:  op1 a1 y1 ;  op2 a2 y2 ;  ...  opn an yn ;  > yn <eos>

with ``y_k = y_{k-1} op_k a_k (mod m)``, ``y_0 = x0``. Each step restates its operation, so a
step is checkable locally; the answer is only right if every step is. The SFT data generator
injects step errors (a wrong ``y_k`` after which the chain continues consistently from the wrong
value), so a model trained on it makes plausible mid-chain mistakes and a sparse 0/1 final
reward has to be assigned back to the step that caused it: the credit-assignment problem OREO
addresses (arXiv 2412.16145, Sec. 1).

Difficulty knobs: ``n_steps`` (chain length), ``modulus`` (numbers are single tokens, so
``modulus <= MAX_MODULUS``), ``ops`` and the SFT error rate ``p_err``.

Everything is a pure jax function of a PRNG key; sequences live in fixed-size buffers
``[max_len]`` padded with ``PAD`` so batches vmap and jit.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxsel.utils.compile import fast_jit

PAD, BOS, EOS, SEP, SEMI, ANS, PLUS, MINUS, TIMES = range(9)
NUM0 = 9  # token of the number 0; number k is token NUM0 + k
MAX_MODULUS = 23
VOCAB_SIZE = NUM0 + MAX_MODULUS
_SYMBOLS = {PAD: "_", BOS: "^", EOS: "$", SEP: "|", SEMI: ";", ANS: ">", PLUS: "+", MINUS: "-"}
_SYMBOLS[TIMES] = "*"
OP_TOKENS = (PLUS, MINUS, TIMES)

__all__ = [
    "ANS",
    "BOS",
    "EOS",
    "MAX_MODULUS",
    "NUM0",
    "PAD",
    "SEMI",
    "SEP",
    "VOCAB_SIZE",
    "Batch",
    "TaskConfig",
    "answer_of",
    "decode",
    "encode",
    "make_problems",
    "prompt_batch",
    "prompt_length",
    "prompts",
    "response_length",
    "reward",
    "sequence_masks",
    "sft_batch",
    "sft_examples",
    "solve",
]


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs of the arithmetic-chain task.

    Attributes:
      n_steps: operations per problem (chain length).
      modulus: arithmetic modulus ``m``; numbers ``0..m-1`` are single tokens.
      ops: operator tokens to draw from (subset of ``(PLUS, MINUS, TIMES)``).
      max_len: buffer length; must fit prompt + response.
    """

    n_steps: int = 4
    modulus: int = 7
    ops: tuple[int, ...] = OP_TOKENS
    max_len: int = 40

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps=}")
        if not 2 <= self.modulus <= MAX_MODULUS:
            raise ValueError(f"modulus must be in [2, {MAX_MODULUS}], got {self.modulus=}")
        if not self.ops or any(o not in OP_TOKENS for o in self.ops):
            raise ValueError(f"ops must be a non-empty subset of {OP_TOKENS}, got {self.ops=}")
        need = prompt_length(self.n_steps) + response_length(self.n_steps)
        if self.max_len < need:
            raise ValueError(
                f"max_len={self.max_len} cannot hold a {self.n_steps}-step problem "
                f"(needs {need} tokens)"
            )


def prompt_length(n_steps: int) -> int:
    """``<bos> x0 (op a)*n |``."""
    return 3 + 2 * n_steps


def response_length(n_steps: int) -> int:
    """``(op a y ;)*n > y <eos>``."""
    return 4 * n_steps + 3


class Batch(NamedTuple):
    """Token buffers with their layout; leading batch axis when batched.

    tokens: ``[max_len]`` int32; prompt then response then PAD.
    prompt_len: int32 scalar; response starts at this index.
    length: int32 scalar; prompt + response length.
    answer: int32 scalar; the correct final answer.
    """

    tokens: Array
    prompt_len: Array
    length: Array
    answer: Array


def _apply(op: Array, y: Array, a: Array, modulus: int) -> Array:
    out = jnp.where(op == PLUS, y + a, jnp.where(op == MINUS, y - a, y * a))
    return jnp.mod(out, modulus)


def make_problems(key: Array, cfg: TaskConfig) -> tuple[Array, Array, Array]:
    """One random problem: ``(x0, ops [n], operands [n])`` (unbatched; vmap over keys)."""
    k0, k1, k2 = jax.random.split(key, 3)
    x0 = jax.random.randint(k0, (), 0, cfg.modulus)
    ops = jnp.asarray(cfg.ops, jnp.int32)[jax.random.randint(k1, (cfg.n_steps,), 0, len(cfg.ops))]
    # operand 0 makes "* 0" collapse the chain and "+ 0" trivial: draw from 1..m-1
    operands = jax.random.randint(k2, (cfg.n_steps,), 1, cfg.modulus)
    return x0, ops, operands


def solve(
    x0: Array,
    ops: Array,
    operands: Array,
    cfg: TaskConfig,
    errors: Array | None = None,
    confuse: Array | None = None,
) -> Array:
    """Intermediate results ``y_1..y_n`` ``[n]``.

    ``errors[k] != 0`` adds that offset to ``y_k``; ``confuse[k]`` computes a ``*`` step as ``+``
    (a systematic slip). Either way the chain continues from the corrupted value.
    """
    if errors is None:
        errors = jnp.zeros_like(ops)
    if confuse is None:
        confuse = jnp.zeros(ops.shape, bool)
    eff = jnp.where(confuse & (ops == TIMES), PLUS, ops)

    def body(y, xs):
        op, a, e = xs
        y = jnp.mod(_apply(op, y, a, cfg.modulus) + e, cfg.modulus)
        return y, y

    _, ys = jax.lax.scan(body, jnp.asarray(x0, jnp.int32), (eff, operands, errors))
    return ys


def encode(x0: Array, ops: Array, operands: Array, ys: Array | None, cfg: TaskConfig) -> Batch:
    """Token buffer of a problem and (if ``ys`` given) its written solution."""
    n = cfg.n_steps
    num = lambda v: NUM0 + jnp.asarray(v, jnp.int32)
    pairs = jnp.stack([ops, num(operands)], -1).reshape(-1)
    prompt = jnp.concatenate([jnp.array([BOS]), num(x0)[None], pairs, jnp.array([SEP])])
    plen = prompt_length(n)
    if ys is None:
        toks = jnp.full((cfg.max_len,), PAD, jnp.int32).at[:plen].set(prompt)
        return Batch(toks, jnp.int32(plen), jnp.int32(plen), solve(x0, ops, operands, cfg)[-1])
    steps = jnp.stack([ops, num(operands), num(ys), jnp.full_like(ops, SEMI)], -1).reshape(-1)
    resp = jnp.concatenate([steps, jnp.array([ANS]), num(ys[-1])[None], jnp.array([EOS])])
    seq = jnp.concatenate([prompt, resp]).astype(jnp.int32)
    toks = jnp.full((cfg.max_len,), PAD, jnp.int32).at[: seq.shape[0]].set(seq)
    answer = solve(x0, ops, operands, cfg)[-1]
    return Batch(toks, jnp.int32(plen), jnp.int32(seq.shape[0]), answer)


def sft_examples(
    key: Array, cfg: TaskConfig, *, p_err: float | Array = 0.0, p_confuse: float | Array = 0.0
) -> tuple[Batch, Array]:
    """One SFT trace with injected step errors (unbatched; vmap over keys).

    Each step's result is replaced by a random wrong value with probability ``p_err``, and each
    ``*`` step is computed as ``+`` with probability ``p_confuse`` (a systematic slip: above 0.5
    it becomes the most likely continuation, so even greedy decoding of the SFT model makes it).

    Returns:
      ``(batch, n_errors)``: the trace and how many of its steps are locally wrong (the written
      result differs from applying the written operation to the previous written result).
    """
    kp, ke, ko, kc = jax.random.split(key, 4)
    x0, ops, operands = make_problems(kp, cfg)
    wrong = jax.random.bernoulli(ke, p_err, (cfg.n_steps,))
    offset = jax.random.randint(ko, (cfg.n_steps,), 1, cfg.modulus)
    confuse = jax.random.bernoulli(kc, p_confuse, (cfg.n_steps,)) & (ops == TIMES)
    confuse = confuse & ~wrong
    ys = solve(x0, ops, operands, cfg, jnp.where(wrong, offset, 0), confuse)
    prev = jnp.concatenate([jnp.asarray(x0, jnp.int32)[None], ys[:-1]])
    n_wrong = jnp.sum(ys != _apply(ops, prev, operands, cfg.modulus))
    return encode(x0, ops, operands, ys, cfg), n_wrong


# data generation runs once per data set: compile fast (see jaxsel.utils.compile); under jit / vmap these
# trace into the caller's program
@functools.partial(fast_jit, static_argnames=("n", "cfg"))
def sft_batch(
    key: Array, n: int, cfg: TaskConfig, p_err: float | Array = 0.0, p_confuse: float | Array = 0.0
) -> tuple[Batch, Array]:
    """``n`` SFT traces (batched :func:`sft_examples`), jitted."""
    f = lambda k: sft_examples(k, cfg, p_err=p_err, p_confuse=p_confuse)
    return jax.vmap(f)(jax.random.split(key, n))


@functools.partial(fast_jit, static_argnames=("n", "cfg"))
def prompt_batch(key: Array, n: int, cfg: TaskConfig) -> Batch:
    """``n`` prompt-only buffers, jitted."""
    return jax.vmap(lambda k: prompts(k, cfg))(jax.random.split(key, n))


def prompts(key: Array, cfg: TaskConfig) -> Batch:
    """A prompt-only buffer (unbatched)."""
    x0, ops, operands = make_problems(key, cfg)
    return encode(x0, ops, operands, None, cfg)


def answer_of(tokens: Array, prompt_len: Array) -> Array:
    """The number after the first ``>`` of the response if followed by ``<eos>``, else -1."""
    tokens = jnp.asarray(tokens)
    pos = jnp.arange(tokens.shape[0])
    is_ans = (tokens == ANS) & (pos >= prompt_len)
    has = jnp.any(is_ans)
    i = jnp.argmax(is_ans)
    nxt = jnp.concatenate([tokens, jnp.array([PAD, PAD], tokens.dtype)])
    val, end = nxt[i + 1], nxt[i + 2]
    ok = has & (val >= NUM0) & (val < NUM0 + MAX_MODULUS) & (end == EOS)
    return jnp.where(ok, val - NUM0, -1).astype(jnp.int32)


def reward(tokens: Array, prompt_len: Array, answer: Array) -> Array:
    """Exact-match reward in {0., 1.} for one response."""
    return (answer_of(tokens, prompt_len) == answer).astype(jnp.float32)


def sequence_masks(tokens: Array, prompt_len: Array, length: Array) -> tuple[Array, Array]:
    """Per-token masks aligned with next-token log-probs (index ``j`` scores ``tokens[j+1]``).

    Returns:
      ``(mask [L-1], step_starts [L-1])``: ``mask[j] = 1`` when ``tokens[j+1]`` is a response
      token; ``step_starts[j]`` when it opens a reasoning step (the first response token, or the
      token after a ``;``). The state before action ``j`` is the prefix ``tokens[:j+1]``.
    """
    tokens = jnp.asarray(tokens)
    j = jnp.arange(tokens.shape[0] - 1)
    mask = (j + 1 >= prompt_len) & (j + 1 < length)
    starts = mask & ((j + 1 == prompt_len) | (tokens[:-1] == SEMI))
    return mask.astype(jnp.float32), starts


def decode(tokens: np.ndarray | Array) -> str:
    """Human-readable string of a token buffer (PAD dropped)."""
    out = []
    for t in np.asarray(tokens).tolist():
        if t == PAD:
            continue
        out.append(str(t - NUM0) if t >= NUM0 else _SYMBOLS[t])
        if t == SEMI:
            out.append("\n")
    return " ".join(out).replace(" \n ", "\n")
