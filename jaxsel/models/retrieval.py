"""Synthetic long-context retrieval: passkey and multi-key associative recall, plus training.

Both tasks hide needles in random filler and ask for them at the end. Each needle token carries
its own key (as in a real document where the fact sits next to its subject), so the question token
finds it with ONE content match ``q . k``: exactly what TokenSelect's soft vote ranks, and a circuit
a small decoder learns in a few hundred CPU steps.

Vocabulary (256 ids): PAD 0, BOS 1, QUERY 2, PASS 3; keys ``[8, 24)``; values ``[24, 32)``;
facts ``fact(k, v)`` ``[32, 160)``; passkey digits ``digit(i, v)`` (slot i < 4) ``[160, 192)``;
answer digits ``answer(i, v)`` ``[192, 224)``; filler ``[224, 240)``.

- Associative recall (AR): ``n_pairs`` fact tokens (distinct keys) at random places in the filler;
  training asks all of them (``QUERY k v`` each, shuffled) after the context; evaluation asks one:
  prompt ``... QUERY k`` -> answer ``v``.
- Passkey: the needle ``digit(0, v0) .. digit(3, v3)`` (contiguous) in the filler; question
  ``QUERY PASS`` -> answer ``answer(0, v0) .. answer(3, v3)``. Each answer token names its slot,
  so the next step's query looks up the next digit.

Training (``make_train(config) -> train(key)``, ``lax.scan`` inside) minimises cross-entropy on the
answer tokens only, at one fixed training length. RoPE theta is small (500) so that every
frequency turns noticeably within the training window: past it, dense attention meets relative
positions it never saw, as pretrained LLMs do past their context length.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsel.models.config import DecoderConfig
from jaxsel.models.decoder import Params, forward, init_params
from jaxsel.utils.checkpoint import restore_tree, save_tree

PAD, BOS, QUERY, PASS = 0, 1, 2, 3
KEY0, N_KEYS = 8, 16
VAL0, N_VALUES = 24, 8
FACT0 = 32
PASSKEY_LEN = 4
DIGIT0 = FACT0 + N_KEYS * N_VALUES
ANSWER0 = DIGIT0 + PASSKEY_LEN * N_VALUES
FILL0, N_FILL = ANSWER0 + PASSKEY_LEN * N_VALUES, 16
VOCAB = 256
ANSWER_LEN = PASSKEY_LEN  # generated tokens per question (AR reads the first)

ASSET_DIR = Path(__file__).parent / "assets" / "retrieval"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training of the retrieval model (all static)."""

    train_len: int = 64
    n_pairs: int = 4
    batch_size: int = 32
    steps: int = 600
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    rope_theta: float = 500.0

    def __post_init__(self) -> None:
        for name in ("train_len", "n_pairs", "batch_size", "steps", "hidden_size",
                     "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {name}={value!r}")
        if self.n_pairs > N_KEYS:
            raise ValueError(
                f"TrainConfig.n_pairs={self.n_pairs} exceeds the {N_KEYS} distinct keys"
            )
        for name in ("lr", "weight_decay", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a number >= 0, got {name}={value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"TrainConfig.warmup must be an int >= 0, got warmup={self.warmup!r}")
        self.model_config()  # the decoder's own checks (head split, GQA)

    def model_config(self) -> DecoderConfig:
        return DecoderConfig(
            vocab_size=VOCAB,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            rope_theta=self.rope_theta,
            rms_norm_eps=1e-6,
            max_position_embeddings=self.train_len,
        )


# ----------------------------------------------------------------------------- data
def _context(key: jax.Array, ctx_len: int, needles: jax.Array) -> jax.Array:
    """Filler of ``ctx_len`` tokens with the rows of ``needles [n, w]`` at distinct random cells
    of width w (non-overlapping)."""
    n, w = needles.shape
    n_cells = ctx_len // w
    if n_cells < n:
        raise ValueError(f"context of {ctx_len} tokens cannot hold {n} needles of width {w}")
    kf, kc, ks = jax.random.split(key, 3)
    ctx = FILL0 + jax.random.randint(kf, (ctx_len,), 0, N_FILL)
    cells = jax.random.choice(kc, n_cells, (n,), replace=False)
    shift = jax.random.randint(ks, (), 0, ctx_len - n_cells * w + 1)
    pos = (shift + cells[:, None] * w + jnp.arange(w)).reshape(-1)
    return ctx.at[pos].set(needles.reshape(-1)).astype(jnp.int32)


def ar_example(key: jax.Array, length: int, *, n_pairs: int, n_queries: int) -> tuple:
    """Associative recall, one sequence of ``length`` tokens ending with ``n_queries`` questions.

    Returns ``(tokens [length], answer_mask [length])``: ``answer_mask[t]`` marks positions whose
    NEXT token is an answer (the positions the loss reads).
    """
    kk, kv, kc, kq = jax.random.split(key, 4)
    keys = jax.random.choice(kk, N_KEYS, (n_pairs,), replace=False)
    vals = jax.random.randint(kv, (n_pairs,), 0, N_VALUES)
    facts = (FACT0 + keys * N_VALUES + vals)[:, None]
    ctx_len = length - 1 - 3 * n_queries
    ctx = _context(kc, ctx_len, facts)
    ask = jax.random.permutation(kq, n_pairs)[:n_queries]
    tail = jnp.stack(
        [jnp.full((n_queries,), QUERY), KEY0 + keys[ask], VAL0 + vals[ask]], axis=1
    ).reshape(-1)
    tokens = jnp.concatenate([jnp.array([BOS]), ctx, tail]).astype(jnp.int32)
    mask = jnp.zeros((length,), bool).at[1 + ctx_len + 1 + 3 * jnp.arange(n_queries)].set(True)
    return tokens, mask


def passkey_example(key: jax.Array, length: int) -> tuple:
    """Passkey retrieval, one sequence of ``length`` tokens ending with the full answer."""
    kv, kc = jax.random.split(key)
    vals = jax.random.randint(kv, (PASSKEY_LEN,), 0, N_VALUES)
    slot = jnp.arange(PASSKEY_LEN) * N_VALUES
    needle = (DIGIT0 + slot + vals)[None]
    ctx_len = length - 1 - 2 - PASSKEY_LEN
    ctx = _context(kc, ctx_len, needle)
    tail = jnp.concatenate([jnp.array([QUERY, PASS]), ANSWER0 + slot + vals])
    tokens = jnp.concatenate([jnp.array([BOS]), ctx, tail]).astype(jnp.int32)
    start = 1 + ctx_len + 1  # position of PASS in the question: predicts answer(0, v0)
    mask = jnp.zeros((length,), bool).at[start + jnp.arange(PASSKEY_LEN)].set(True)
    return tokens, mask


def train_batch(key: jax.Array, config: TrainConfig) -> tuple[jax.Array, jax.Array]:
    """Half AR (all facts asked), half passkey: ``tokens, answer_mask`` each ``[B, train_len]``."""

    def one(k):
        kt, ka, kp = jax.random.split(k, 3)
        t_ar, m_ar = ar_example(
            ka, config.train_len, n_pairs=config.n_pairs, n_queries=config.n_pairs
        )
        t_pk, m_pk = passkey_example(kp, config.train_len)
        use_ar = jax.random.bernoulli(kt)
        return jnp.where(use_ar, t_ar, t_pk), jnp.where(use_ar, m_ar, m_pk)

    return jax.vmap(one)(jax.random.split(key, config.batch_size))


class EvalBatch(NamedTuple):
    """prompts ``[n, length]`` int32; answers ``[n, ANSWER_LEN]``; answer_len ``[n]`` (1 for AR,
    4 for passkey); is_ar ``[n]`` bool."""

    prompts: np.ndarray
    answers: np.ndarray
    answer_len: np.ndarray
    is_ar: np.ndarray


def eval_batch(key: jax.Array, *, length: int, n: int, n_pairs: int = 4) -> EvalBatch:
    """``n`` questions (alternating AR / passkey) with prompts of exactly ``length`` tokens."""

    def one(k, is_ar):
        ka, kp = jax.random.split(k)
        t_ar, _ = ar_example(ka, length + 1, n_pairs=n_pairs, n_queries=1)
        t_pk, _ = passkey_example(kp, length + PASSKEY_LEN)
        ans_ar = jnp.concatenate([t_ar[length : length + 1], jnp.full((PASSKEY_LEN - 1,), PAD)])
        return (
            jnp.where(is_ar, t_ar[:length], t_pk[:length]),
            jnp.where(is_ar, ans_ar, t_pk[length:]),
        )

    is_ar = jnp.arange(n) % 2 == 0
    prompts, answers = jax.jit(jax.vmap(one))(jax.random.split(key, n), is_ar)
    return EvalBatch(
        np.asarray(prompts),
        np.asarray(answers),
        np.where(np.asarray(is_ar), 1, PASSKEY_LEN).astype(np.int32),
        np.asarray(is_ar),
    )


def score(batch: EvalBatch, generated: np.ndarray) -> np.ndarray:
    """Exact match per question: the first ``answer_len`` generated tokens equal the answer."""
    pos = np.arange(ANSWER_LEN)[None]
    ok = (generated[:, :ANSWER_LEN] == batch.answers) | (pos >= batch.answer_len[:, None])
    return ok.all(axis=1)


# ----------------------------------------------------------------------------- training
class TrainState(NamedTuple):
    params: Params
    opt_state: Any
    step: jax.Array


def make_train(config: TrainConfig):
    """Returns ``(init(key) -> TrainState, run(state, key, n_steps) -> (state, metrics), train)``.

    ``run`` scans ``n_steps`` updates; batch ``i`` is drawn from ``fold_in(key, step)``, so running
    in segments (and resuming from a checkpoint) reproduces one uninterrupted run.
    ``train(key)`` is the whole run in one scan.
    """
    mcfg = config.model_config()
    sched = optax.warmup_cosine_decay_schedule(
        0.0, config.lr, config.warmup, max(config.steps, config.warmup + 1), config.lr * 0.05
    )
    opt = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=config.weight_decay)
    )

    def loss_fn(params, tokens, mask):
        logits = jax.vmap(lambda t: forward(params, t, config=mcfg))(tokens)
        targets = jnp.roll(tokens, -1, axis=1)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        m = mask.astype(jnp.float32)
        acc = jnp.sum((jnp.argmax(logits, -1) == targets) * m) / jnp.sum(m)
        return jnp.sum(ce * m) / jnp.sum(m), acc

    def init(key):
        params = init_params(key, mcfg)
        return TrainState(params, opt.init(params), jnp.int32(0))

    def run(state, key, n_steps: int):
        def body(s, _):
            tokens, mask = train_batch(jax.random.fold_in(key, s.step), config)
            (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(s.params, tokens, mask)
            updates, opt_state = opt.update(g, s.opt_state, s.params)
            params = optax.apply_updates(s.params, updates)
            return TrainState(params, opt_state, s.step + 1), (loss, acc)

        return jax.lax.scan(body, state, None, length=n_steps)

    def train(key):
        k_init, k_data = jax.random.split(key)
        return run(init(k_init), k_data, config.steps)

    return init, jax.jit(run, static_argnums=2), train


# ----------------------------------------------------------------------------- checkpoint
def save_model(path: str | Path, params: Params, config: TrainConfig, meta: dict) -> Path:
    """Saves ``params`` with orbax (float32) plus ``train_config.json`` beside them."""
    path = Path(path).absolute()
    save_tree(path / "params", jax.tree.map(np.asarray, params))
    (path / "train_config.json").write_text(
        json.dumps({"train_config": dataclasses.asdict(config), **meta}, indent=2)
    )
    return path


def load_model(path: str | Path | None = None) -> tuple[Params, DecoderConfig, dict]:
    """Loads a retrieval model saved by :func:`save_model` (default: the shipped one).

    Returns ``(params, decoder_config, info)`` where ``info`` holds the train config and metadata.
    """
    path = Path(path or ASSET_DIR).absolute()
    info = json.loads((path / "train_config.json").read_text())
    tcfg = TrainConfig(**info["train_config"])
    mcfg = tcfg.model_config()
    abstract = jax.eval_shape(lambda: init_params(jax.random.key(0), mcfg))
    return restore_tree(path / "params", abstract), mcfg, info


# ----------------------------------------------------------------------------- evaluation
def eval_policies(train_len: int = 64) -> dict[str, Any]:
    """The compared policies at one budget of ``train_len // 2 + 4`` tokens (36 for 64).

    TokenSelect keeps 4 sinks + top 16 + 16 local (prefill chunks of 16, so a chunk query sees at
    most 52 < train_len tokens); streaming keeps 4 sinks + the last 32; the adaptive-temperature
    row is dense attention with adaptive-temperature softmax.
    """
    from jaxsel.models import policies as pol

    q = train_len // 4
    ts = dict(n_sink=4, top_k=q, n_local=q)
    return {
        "dense": pol.Dense(),
        "tokenselect_compact": pol.TokenSelect(**ts, position_mode="compact"),
        "tokenselect_original": pol.TokenSelect(**ts, position_mode="original"),
        "streaming": pol.Streaming(n_sink=4, n_local=2 * q, position_mode="compact"),
        "adaptive_temperature": pol.Dense(adaptive_temperature=True),
    }


def prefill_chunk_for(policy: Any, train_len: int = 64) -> int:
    """Dense policies prefill in large chunks (same result, fewer steps); sparse ones in chunks of
    ``train_len // 4`` so a chunk plus its budget stays inside the training window."""
    from jaxsel.models import policies as pol

    return 256 if isinstance(policy, pol.Dense) else train_len // 4


def evaluate(
    params: Params,
    config: DecoderConfig,
    policy: Any,
    *,
    length: int,
    n: int,
    key: jax.Array,
    batch_size: int = 100,
    train_len: int = 64,
    n_pairs: int = 4,
) -> dict[str, float]:
    """Exact-match accuracy of greedy answers for ``n`` questions with prompts of ``length``.

    Returns accuracy overall, on AR and on passkey questions, and the wall time.
    """
    import time

    from jaxsel.models.generate import generate

    data = eval_batch(key, length=length, n=n, n_pairs=n_pairs)
    t0 = time.perf_counter()
    outs = []
    for i in range(0, n, batch_size):
        outs.append(
            generate(
                params,
                config,
                data.prompts[i : i + batch_size],
                max_new_tokens=ANSWER_LEN,
                cache_len=length + ANSWER_LEN,
                policy=policy,
                prefill_chunk=prefill_chunk_for(policy, train_len),
            )
        )
    ok = score(data, np.concatenate(outs))
    return {
        "accuracy": float(ok.mean()),
        "accuracy_ar": float(ok[data.is_ar].mean()),
        "accuracy_passkey": float(ok[~data.is_ar].mean()),
        "n": int(n),
        "seconds": time.perf_counter() - t0,
    }


def decode_tokens_per_s(
    params: Params,
    config: DecoderConfig,
    policy: Any,
    *,
    length: int,
    batch: int = 4,
    steps: int = 32,
    train_len: int = 64,
    repeats: int = 3,
) -> float:
    """Decode throughput at a prompt of ``length``: (batch * steps) / (t(steps + 1) - t(1)), each
    generate call timed after its compilation (min of ``repeats``), so prefill and compile cancel
    out. NaN when the two timings cannot be separated."""
    import time

    from jaxsel.models.generate import generate

    prompts = eval_batch(jax.random.key(123), length=length, n=batch).prompts
    times = []
    for new in (1, steps + 1):
        kw = dict(
            max_new_tokens=new,
            cache_len=length + steps + 1,
            policy=policy,
            prefill_chunk=prefill_chunk_for(policy, train_len),
        )
        jax.block_until_ready(generate(params, config, prompts, **kw))  # compile
        # Min of a few repeats: one sample each made the difference noisy enough to go negative
        # (the prefill dominates t(1)), which printed an absurd rate.
        reps = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(generate(params, config, prompts, **kw))
            reps.append(time.perf_counter() - t0)
        times.append(min(reps))
    decode_s = times[1] - times[0]
    if decode_s <= 0:
        return float("nan")  # the measurement could not separate decode from prefill
    return batch * steps / decode_s


def evaluate_lengths(
    params: Params,
    config: DecoderConfig,
    policy: Any,
    *,
    lengths: list[int],
    n: int,
    key: jax.Array,
    train_len: int = 64,
    n_pairs: int = 4,
) -> list[dict[str, float]]:
    """:func:`evaluate` for several prompt lengths in ONE right-padded batch (one compilation).

    Questions for length ``L`` are drawn with ``fold_in(key, L // train_len)``, as in
    :func:`evaluate`, so the two agree question by question.
    """
    import time

    from jaxsel.models.generate import generate

    batches = [
        eval_batch(jax.random.fold_in(key, L // train_len), length=L, n=n, n_pairs=n_pairs)
        for L in lengths
    ]
    prompts = [p for b in batches for p in b.prompts]
    t0 = time.perf_counter()
    out = generate(
        params,
        config,
        prompts,
        max_new_tokens=ANSWER_LEN,
        cache_len=max(lengths) + ANSWER_LEN,
        policy=policy,
        prefill_chunk=prefill_chunk_for(policy, train_len),
    )
    seconds = time.perf_counter() - t0
    rows = []
    for i, (L, b) in enumerate(zip(lengths, batches)):
        ok = score(b, out[i * n : (i + 1) * n])
        rows.append(
            {
                "length": L,
                "accuracy": float(ok.mean()),
                "accuracy_ar": float(ok[b.is_ar].mean()),
                "accuracy_passkey": float(ok[~b.is_ar].mean()),
                "n": int(n),
                "seconds": seconds,
            }
        )
    return rows
