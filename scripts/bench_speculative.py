"""Lossless speculative decoding on SmolLM2-135M: TokenSelect drafts, dense target.

    .venv/bin/jaxsel fetch smollm2
    nice -n 5 .venv/bin/python scripts/bench_speculative.py --lengths 4096,16384

For each context length, the first L tokens of The Devil's Dictionary (Debian's ``dict-devil``) are
prefilled densely once; then for each (scheme, K drafts, gamma draft tokens) cell,
:func:`jaxsel.models.speculative.speculative_decode_jit` samples ``--new-tokens`` tokens at
``--temperature`` from the dense target with K chains drafted by the same model under TokenSelect
(sink 128, top-k 2048, local 512, compact positions; the paper's budget), and plain dense decoding
(``decode_jit``) samples the same number of tokens right before each cell (the ratio is against
that adjacent dense run). Reported per cell: block
efficiency (tokens per target call), the draft acceptance rate (accepted / drafted along the
surviving chain), tokens/s and the ratio to dense; compile time apart (AOT). Writes
``results/speculative/bench_speculative_<lengths>.json``. Before the cells, the exact acceptance
probability of each scheme and the paper's optimum for K = 2 (``optimal_acceptance_two_drafts``)
are averaged over the next ``--bound-positions`` positions of the text (dense ``p``, draft ``q``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jaxsel.speculative as S
from jaxsel._bench import format_table, write_json
from jaxsel.models import Tokenizer, load_gguf, model_path
from jaxsel.models import policies as pol
from jaxsel.models.generate import decode_jit, prefill_arguments, prefill_jit
from jaxsel.models.longcontext import devil_dictionary_tokens
from jaxsel.models.speculative import speculative_decode_jit
from jaxsel.utils import flag, parse_config
from jaxsel.utils.config_cli import comma_list


@dataclasses.dataclass(frozen=True)
class SpeculativeConfig:
    lengths: str = flag("4096,16384", "context lengths, comma-separated")
    schemes: str = flag(",".join(S.SCHEMES), "grid: schemes, comma-separated")
    drafts: str = flag("1,2,4", "grid: K drafts, comma-separated")
    gammas: str = flag("2,4,8", "grid: gamma draft tokens, comma-separated")
    cells: str = flag(
        "", "explicit scheme:K:gamma cells instead of the grid, e.g. single:1:4,specinfer:2:4"
    )
    new_tokens: int = 32
    temperature: float = 1.0
    draft: str = flag("tokenselect", "draft policy", choices=("tokenselect", "streaming", "quest"))
    bound_positions: int = flag(
        16, "positions of the text after the prompt over which exact acceptances are averaged"
    )
    bounds_only: bool = flag(False, "only the acceptance table")
    out: Path = Path("results/speculative")

    def __post_init__(self) -> None:
        if self.draft not in ("tokenselect", "streaming", "quest"):
            raise ValueError(f"draft must be tokenselect, streaming or quest, got {self.draft!r}")
        if not self.length_list or min(self.length_list) < 1:
            raise ValueError(f"lengths must be positive ints, got {self.lengths!r}")
        if not self.cell_list and not self.bounds_only:
            raise ValueError("the grid (--schemes, --drafts, --gammas) or --cells has no cell")
        if min((g for *_, g in self.cell_list), default=1) < 1:
            raise ValueError(f"gammas must be >= 1, got {self.gammas!r} / cells {self.cells!r}")
        if min((k for _, k, _ in self.cell_list), default=1) < 1:
            raise ValueError(f"drafts must be >= 1, got {self.drafts!r} / cells {self.cells!r}")
        if self.new_tokens < 1:
            raise ValueError(f"new_tokens must be >= 1, got {self.new_tokens}")
        if self.bound_positions < 0:
            raise ValueError(f"bound_positions must be >= 0, got {self.bound_positions}")

    @property
    def length_list(self) -> tuple[int, ...]:
        return comma_list(self.lengths, "lengths", int)

    @property
    def gamma_list(self) -> tuple[int, ...]:
        return comma_list(self.gammas, "gammas", int)

    @property
    def cell_list(self) -> tuple[tuple[str, int, int], ...]:
        """``(scheme, K, gamma)``: ``--cells``, else the grid (``single`` only at K = 1)."""
        if self.cells:
            return comma_list(self.cells, "cells", _cell)
        return tuple(
            (s, k, g)
            for s in comma_list(self.schemes, "schemes", _scheme)
            for k in comma_list(self.drafts, "drafts", int)
            for g in self.gamma_list
            if not (s == "single" and k > 1)
        )


def _scheme(name: str) -> str:
    if name not in S.SCHEMES:
        raise ValueError(f"unknown scheme {name!r} (choose from {', '.join(S.SCHEMES)})")
    return name


def _cell(text: str) -> tuple[str, int, int]:
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"cell {text!r} is not scheme:K:gamma")
    return _scheme(parts[0]), int(parts[1]), int(parts[2])


def parse() -> SpeculativeConfig:
    return parse_config(SpeculativeConfig, description=__doc__)


def acceptance_table(params, config, state, text_next, draft, temperature: float) -> dict:
    """Exact acceptance probabilities of each scheme and the paper's optimum, averaged over the
    next ``len(text_next)`` positions of the text (teacher-forced): ``p`` from a dense forward
    over them, ``q`` from draft decode steps (the draft's real single-token path)."""
    from jaxsel.models.decoder import forward_chunk
    from jaxsel.models.generate import sampling_probs

    k0, v0, pos0, tok0 = state.k[0], state.v[0], state.pos[0], state.token[0]
    toks = jnp.concatenate([tok0[None], jnp.asarray(text_next[:-1], jnp.int32)])
    logits, *_ = jax.jit(
        lambda k, v: forward_chunk(params, toks, k, v, pos0, config=config, policy=pol.Dense())
    )(k0, v0)
    p = sampling_probs(logits, temperature=temperature)

    @jax.jit
    def draft_steps(k, v):
        def step(c, x):
            k, v = c
            t, i = x
            lg, k, v, _ = forward_chunk(
                params, t[None], k, v, pos0 + i, config=config, policy=draft
            )
            return (k, v), lg[0]

        _, lg = jax.lax.scan(step, (k, v), (toks, jnp.arange(len(toks), dtype=jnp.int32)))
        return lg

    q = sampling_probs(draft_steps(k0, v0), temperature=temperature)
    rows = {
        "single (K=1) = 1 - TV": jax.vmap(S.speculative_acceptance)(p, q),
        "specinfer K=2": jax.vmap(
            lambda a, b: S.recursive_rejection_acceptance(a, b, num_drafts=2)
        )(p, q),
        "spectr K=2": jax.vmap(lambda a, b: S.k_sequential_acceptance(a, b, num_drafts=2))(p, q),
        "importance K=2": jax.vmap(
            lambda a, b: S.importance_acceptance(
                a, b, num_drafts=2, support_size=S.IMPORTANCE_SUPPORT
            )
        )(p, q),
        "importance opt. weights K=2": jax.vmap(
            lambda a, b: S.optimize_importance_weights(
                a, b, num_drafts=2, support_size=S.IMPORTANCE_SUPPORT
            )[1]
        )(p, q),
        "optimal K=2 (Khisti et al.)": jax.vmap(S.optimal_acceptance_two_drafts)(p, q),
        "specinfer K=4": jax.vmap(
            lambda a, b: S.recursive_rejection_acceptance(a, b, num_drafts=4)
        )(p, q),
        "upper bound K=4": jax.vmap(lambda a, b: S.acceptance_upper_bound(a, b, num_drafts=4))(
            p, q
        ),
    }
    return {name: float(np.mean(np.asarray(v))) for name, v in rows.items()}


def timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def main() -> None:
    args = parse()
    m = load_gguf(model_path("smollm2"))
    params, config = m.params_tree(), m.config
    tok = Tokenizer.from_gguf(model_path("smollm2"))
    draft = pol.at_paper_budget(args.draft)
    dense = pol.Dense()
    T, n_new = float(args.temperature), args.new_tokens
    rows, bounds = [], {}
    for length in args.length_list:
        encode = lambda t: tok.encode(t, add_special_tokens=False)
        text = devil_dictionary_tokens(encode, length + args.bound_positions)
        ids, text_next = text[:length], text[length:]
        gmax = max((*args.gamma_list, *(g for *_, g in args.cell_list)), default=0)
        _, pargs, static = prefill_arguments(
            [ids], max_new_tokens=n_new, cache_len=length + n_new + gmax + 1, policy=dense
        )
        state = jax.block_until_ready(prefill_jit(params, *pargs, config=config, **static))
        k0, v0, pos0, tok0 = state.k[0], state.v[0], state.pos[0], state.token[0]
        if args.bound_positions:
            bounds[length] = acceptance_table(params, config, state, text_next, draft, T)
            print(format_table([{"scheme": k, "acceptance": v} for k, v in bounds[length].items()]))
        if args.bounds_only:
            continue
        # Dense baseline: the same number of sampled tokens from the same cache.
        dec = decode_jit.lower(
            params,
            state,
            jax.random.key(1),
            config=config,
            policy=dense,
            n_steps=n_new,
            temperature=T,
        ).compile()
        dec(params, jax.tree.map(jnp.copy, state), jax.random.key(1))  # warm

        def dense_tok_s(dec=dec, state=state) -> float:
            _, sec = timed(dec, params, jax.tree.map(jnp.copy, state), jax.random.key(2))
            return n_new / sec

        rows.append(
            {
                "length": length,
                "scheme": "dense",
                "K": 0,
                "gamma": 0,
                "tok_s": dense_tok_s(),
                "vs_dense": 1.0,
            }
        )
        for name, K, g in tqdm(args.cell_list, desc=f"{length}"):
            kw = dict(
                config=config,
                draft_policy=draft,
                target_policy=dense,
                scheme=S.SCHEMES[name],
                n_drafts=K,
                draft_len=g,
                max_new_tokens=n_new,
                temperature=T,
            )
            t0 = time.perf_counter()
            fn = speculative_decode_jit.lower(
                params, k0, v0, pos0, tok0, jax.random.key(0), **kw
            ).compile()
            compile_s = time.perf_counter() - t0
            # Dense decoding timed right before each cell: the ratio is against the machine's
            # state at that moment (a shared machine's load drifts over a run).
            ref = dense_tok_s()
            (_, stats), sec = timed(fn, params, k0, v0, pos0, tok0, jax.random.key(3))
            rounds, acc = int(stats.rounds), int(stats.accepted)
            rows.append(
                {
                    "length": length,
                    "scheme": name,
                    "K": K,
                    "gamma": g,
                    "block_efficiency": n_new / rounds,
                    "acceptance": acc / (rounds * g),
                    "rounds": rounds,
                    "tok_s": n_new / sec,
                    "dense_tok_s": ref,
                    "vs_dense": (n_new / sec) / ref,
                    "compile_s": compile_s,
                }
            )
            print(format_table(rows[-1:]), flush=True)
    print(format_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / f"{'acceptance' if args.bounds_only else 'bench_speculative'}_"
        f"{args.lengths.replace(',', '_')}.json",
        {
            "args": dataclasses.asdict(args) | {"out": str(args.out)},
            "rows": rows,
            "acceptance": bounds,
        },
    )


if __name__ == "__main__":
    main()
