"""``jaxsel demo``: the main job -- TokenSelect extrapolating far past a model's training length.

Loads the retrieval decoder shipped in ``jaxsel/models/assets/retrieval`` (trained on CPU at 64
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


def run_demo(*, quick: bool = False, out_dir: str = "results/demo") -> int:
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
