"""``jaxsel demo``: the main job -- a real pretrained LLM answering, then finding a passkey beyond
its trained context with TokenSelect next to dense attention.

:func:`run_demo` fetches SmolLM2-135M-Instruct (once, into the user cache), streams its answer to a
chat question, then asks it for a 5-digit passkey hidden at mid-depth of a 12288-token prompt (1.5x
its trained 8192 tokens; raw completion, the protocol of ``scripts/eval_real_longcontext.py``) with
TokenSelect (sink 128, top-k 2048, local 512, compact positions) and with dense attention, and
prints the answers, prefill time and decode tokens/s of each.

:func:`run_toy_demo` (``jaxsel demo --toy``) is the earlier demo on a tiny shipped model: it loads
the retrieval decoder shipped in ``jaxsel/models/assets/retrieval`` (trained on CPU at 64
tokens by ``scripts/train_retrieval.py``; no training or download here), asks it passkey and
associative-recall questions hidden in prompts up to 16x its training length with dense attention,
TokenSelect (compact positions) and StreamingLLM at the same budget, prints the accuracy table and
the decode tokens/s of dense vs TokenSelect at the longest prompt, and writes a PNG and a JSON.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxsel._bench import format_table, write_json


def run_toy_demo(*, quick: bool = False, out_dir: str = "results/demo") -> int:
    from jaxsel.models import retrieval as rt

    t_start = time.perf_counter()
    params, config, info = rt.load_model()
    train_len = info["train_config"]["train_len"]
    n_pairs = info["train_config"]["n_pairs"]
    print(
        f"jaxsel demo on {jax.devices()[0].device_kind} (jax {jax.__version__}): retrieval decoder "
        f"({config.num_layers} layers, {config.num_heads}/{config.num_kv_heads} q/kv heads) "
        f"trained at {train_len} tokens"
    )
    all_policies = rt.eval_policies(train_len)
    names = ["dense", "tokenselect_compact"] + ([] if quick else ["streaming"])
    multiples = [1, 4] if quick else [1, 4, 16]
    n = 8 if quick else 40
    rows = []
    for name in tqdm(names, desc="policies (all lengths in one batch)"):
        for r in rt.evaluate_lengths(
            params,
            config,
            all_policies[name],
            lengths=[m * train_len for m in multiples],
            n=n,
            key=jax.random.key(0),
            train_len=train_len,
            n_pairs=n_pairs,
        ):
            rows.append({"policy": name, "x_train": r["length"] // train_len, **r})
    table = {
        name: {r["length"]: r["accuracy"] for r in rows if r["policy"] == name} for name in names
    }
    print(f"\nexact-match accuracy ({n} questions per cell; half passkey, half key-value recall)")
    print(
        format_table(
            [
                {"policy": k, **{f"{L} tok": f"{v:.2f}" for L, v in t.items()}}
                for k, t in table.items()
            ]
        )
    )
    speed = []
    longest = multiples[-1] * train_len
    if not quick:
        for name in ("dense", "tokenselect_compact"):
            tps = rt.decode_tokens_per_s(
                params, config, all_policies[name], length=longest, train_len=train_len
            )
            speed.append({"policy": name, "prompt_tokens": longest, "decode_tokens_per_s": tps})
        print(f"\ndecode throughput at {longest} prompt tokens (batch 4, after compilation)")
        print(format_table(speed))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot(rows, names, out / "demo.png", train_len)
    path = write_json(
        out / "demo.json", {"train_len": train_len, "quick": quick, "rows": rows, "speed": speed}
    )
    print(f"wrote {path} and {out / 'demo.png'} in {time.perf_counter() - t_start:.1f} s")
    return 0 if np.all(np.isfinite([r["accuracy"] for r in rows])) else 1


def run_demo(*, out_dir: str = "results/demo", length: int = 12288, depth: float = 0.5) -> int:
    """The real-model demo (see the module docstring); returns 0 when it ran."""
    from jaxsel.models import fetch, text
    from jaxsel.models import longcontext as lc

    t_start = time.perf_counter()
    fetch.fetch_model("smollm2", quiet=True)
    decoder, tok = text.load_pretrained("smollm2")
    c = decoder.config
    print(
        f"jaxsel demo on {jax.devices()[0].device_kind} (jax {jax.__version__}): SmolLM2-135M-"
        f"Instruct ({c.num_layers} layers, {c.num_heads}/{c.num_kv_heads} q/kv heads, trained "
        f"context {c.max_position_embeddings} tokens), loaded in {time.perf_counter() - t_start:.1f} s"
    )
    question = "What is the capital of France?"
    print(f"\nchat> {question}\n", end="", flush=True)
    stats = text.StreamStats()
    answer = ""
    for piece in text.stream_text(
        decoder, tok, text.chat_prompt(tok, question), max_new_tokens=24, stats=stats
    ):
        answer += piece
        print(piece, end="", flush=True)
    print()
    passkey = 71432
    ids = lc.passkey_prompt(
        lambda s: tok.encode(s, add_special_tokens=False), length, depth, passkey
    )
    print(
        f"\npasskey {passkey} hidden at depth {depth:.0%} of a {length}-token prompt "
        f"({length / c.max_position_embeddings:.1f}x the trained context), greedy completion:"
    )
    ts = {"n_sink": 128, "top_k": 2048, "n_local": 512}
    rows = []
    for name, options in (("tokenselect", ts), ("dense", {})):
        st = text.StreamStats()
        out = "".join(
            text.stream_text(
                decoder, tok, ids, max_new_tokens=8, policy=name, policy_options=options, stats=st
            )
        )
        found = lc.first_integer(out)
        rows.append(
            {
                "policy": name,
                "answer": out.strip()[:24],
                "correct": found == passkey,
                "prefill_s": round(st.prefill_s, 1),
                "decode_tok_s": round(st.decode_tok_s, 2),
            }
        )
        r = rows[-1]
        print(
            f"  {name:12s} answers {r['answer']!r:14s} ({'right' if r['correct'] else 'wrong'}); "
            f"prefill {r['prefill_s']} s (compilation included), decode {r['decode_tok_s']} tok/s",
            flush=True,
        )
    out_path = Path(out_dir)
    path = write_json(
        out_path / "demo_smollm2.json",
        {"chat": {"question": question, "answer": answer}, "length": length, "rows": rows},
    )
    print(f"\nwrote {path} in {time.perf_counter() - t_start:.1f} s (prefill includes compilation)")
    return 0


def _plot(rows: list[dict], names: list[str], path: Path, train_len: int) -> None:
    try:
        import matplotlib
    except ImportError:  # the plot extra is optional; the table is the result
        print("matplotlib not installed: no PNG")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in names:
        rs = [r for r in rows if r["policy"] == name]
        ax.plot([r["x_train"] for r in rs], [r["accuracy"] for r in rs], "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"prompt length / training length ({train_len})")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
