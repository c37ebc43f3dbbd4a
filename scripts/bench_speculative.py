"""Lossless speculative decoding on SmolLM2-135M: TokenSelect drafts, dense target.

    .venv/bin/jaxsel fetch smollm2
    nice -n 5 .venv/bin/python scripts/bench_speculative.py --lengths 4096,16384

For each context length, the first L tokens of The Devil's Dictionary (Debian's ``dict-devil``) are
prefilled densely once; then for each (scheme, K drafts, gamma draft tokens) cell,
:func:`jaxsel.models.speculative.speculative_decode_jit` samples ``--new-tokens`` tokens at
``--temperature`` from the dense target with K chains drafted by the same model under TokenSelect
(sink 128, top-k 2048, local 512, compact positions; the paper's budget), and plain dense decoding
(``decode_jit``) samples the same number of tokens in the same run. Reported per cell: block
efficiency (tokens per target call), the draft acceptance rate (accepted / drafted along the
surviving chain), tokens/s and the ratio to dense; compile time apart (AOT). Writes
``results/speculative/bench_speculative.json``.
"""

from __future__ import annotations

import argparse
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
from jaxsel.models.speculative import speculative_decode_jit

DEVIL = Path("/usr/share/dictd/devil.dict.dz")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lengths", default="4096,16384")
    p.add_argument("--schemes", default=",".join(S.SCHEMES))
    p.add_argument("--drafts", default="1,2,4")
    p.add_argument("--gammas", default="2,4,8")
    p.add_argument(
        "--cells",
        default="",
        help="explicit scheme:K:gamma cells instead of the grid, e.g. single:1:4,specinfer:2:4",
    )
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--draft", choices=("tokenselect", "streaming", "quest"), default="tokenselect")
    p.add_argument("--out", type=Path, default=Path("results/speculative"))
    return p.parse_args()


def devil_tokens(tok, n: int) -> np.ndarray:
    import gzip

    if not DEVIL.exists():
        raise FileNotFoundError(f"{DEVIL} missing: apt-get install dict-devil")
    text = gzip.open(DEVIL).read().decode("utf-8", "replace")
    ids = np.asarray(tok.encode(text, add_special_tokens=False), np.int32)
    if len(ids) < n:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {n}")
    return ids[:n]


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
    rows = []
    for length in [int(s) for s in args.lengths.split(",")]:
        ids = devil_tokens(tok, length)
        gmax = max(
            [int(g) for g in args.gammas.split(",")]
            + [int(c.split(":")[2]) for c in args.cells.split(",") if c]
        )
        _, pargs, static = prefill_arguments(
            [ids], max_new_tokens=n_new, cache_len=length + n_new + gmax + 1, policy=dense
        )
        state = jax.block_until_ready(prefill_jit(params, *pargs, config=config, **static))
        k0, v0, pos0, tok0 = state.k[0], state.v[0], state.pos[0], state.token[0]
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
        _, dense_s = timed(dec, params, jax.tree.map(jnp.copy, state), jax.random.key(2))
        dense_tok_s = n_new / dense_s
        rows.append(
            {
                "length": length,
                "scheme": "dense",
                "K": 0,
                "gamma": 0,
                "tok_s": dense_tok_s,
                "vs_dense": 1.0,
            }
        )
        cells = [
            (s, int(k), int(g))
            for s in args.schemes.split(",")
            for k in args.drafts.split(",")
            for g in args.gammas.split(",")
            if not (s == "single" and int(k) > 1)
        ]
        if args.cells:
            cells = [
                (c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2]))
                for c in args.cells.split(",")
            ]
        for name, K, g in tqdm(cells, desc=f"{length}"):
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
                    "vs_dense": (n_new / sec) / dense_tok_s,
                    "compile_s": compile_s,
                }
            )
            print(format_table(rows[-1:]), flush=True)
    print(format_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / "bench_speculative.json",
        {"args": vars(args) | {"out": str(args.out)}, "rows": rows},
    )


if __name__ == "__main__":
    main()
