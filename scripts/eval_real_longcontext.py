"""TokenSelect on a real pretrained model: passkey retrieval and perplexity at 0.25x-4x its
trained context (SmolLM2-135M-Instruct, trained at 8192 tokens).

    .venv/bin/jaxsel fetch smollm2
    nice -n 10 .venv/bin/python scripts/eval_real_longcontext.py --lengths 2048,8192,16384,32768

Passkey (``jaxsel.models.longcontext``; SPEC section 10): raw completion without the chat template,
greedy, ``--new-tokens`` tokens, right when the first integer equals the key; trial t of a cell puts
the needle at depth ``(t mod 10) / 9`` with a 5-digit key drawn from (length, t). Every cell reports
accuracy with a 95% Wilson interval, prefill and decode times. Perplexity: next-token NLL of the
first ``L`` tokens of The Devil's Dictionary (Debian's ``dict-devil``, public domain; ``apt-get
install dict-devil``) under each policy, chunked exactly as a prefill, with the mean over the whole
window and over its last 1024 tokens (95% interval from 512-token block means).

Policies at the authors' budget (2688 tokens): ``dense``; ``tokenselect`` (sink 128, top-k 2048,
local 512) with ``compact`` or ``original`` RoPE positions; ``streaming`` (sink 128 + local 2560);
``quest`` (sink 128, 128 pages of 16 tokens ranked by Quest's min/max key bound, local 512, compact
positions). The filler before the needle is shared by all trials of a cell: it is prefilled once and
each trial resumes from the chunk where its needle starts (the same cache as a full prefill; a
re-run with more ``--trials`` keeps the finished trials and runs the rest).
Results go to ``results/models/smollm2/eval_longcontext.json`` after every cell; a re-run skips the
finished cells (``--no-resume`` starts over). ``--plot-only`` redraws the PNG from the JSON.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsel._bench import environment_info, format_table
from jaxsel.models import Tokenizer, load_gguf, model_path
from jaxsel.models import longcontext as lc
from jaxsel.models import policies as pol
from jaxsel.models.generate import (
    decode_jit,
    prefill_arguments,
    prefill_jit,
    prefill_resume_jit,
    sequence_nll,
)
from jaxsel.utils import flag, parse_config
from jaxsel.utils.config_cli import comma_list

POLICIES = {
    "dense": pol.Dense(),
    "tokenselect_compact": pol.at_paper_budget("tokenselect", position_mode="compact"),
    "tokenselect_original": pol.at_paper_budget("tokenselect", position_mode="original"),
    "streaming": pol.at_paper_budget("streaming"),
    "quest": pol.at_paper_budget("quest"),
}


@dataclasses.dataclass(frozen=True)
class RealLongContextConfig:
    lengths: str = flag("2048,4096,8192,12288,16384,32768", "passkey lengths, comma-separated")
    policies: str = flag(",".join(POLICIES), f"comma-separated, of {', '.join(POLICIES)}")
    trials: int = flag(20, "passkey trials per cell")
    trials_at: str = flag("32768=10", "per-length overrides, e.g. 32768=10")
    new_tokens: int = 8
    ppl_lengths: str = flag("", "perplexity window lengths ('' = none)")
    out: Path = Path("results/models/smollm2")
    resume: bool = flag(True, "skip the finished cells of <out>/eval_longcontext.json")
    plot_only: bool = flag(False, "redraw the PNG from the JSON")

    def __post_init__(self) -> None:
        if min(self.length_list + self.ppl_length_list, default=1) < 1:
            raise ValueError(
                f"lengths must be positive, got {self.lengths!r} / {self.ppl_lengths!r}"
            )
        if not self.policy_list:
            raise ValueError("policies must name at least one policy")
        if self.trials < 1 or min(self.trials_by_length.values(), default=1) < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials} / {self.trials_at!r}")
        if self.new_tokens < 1:
            raise ValueError(f"new_tokens must be >= 1, got {self.new_tokens}")

    @property
    def length_list(self) -> tuple[int, ...]:
        return comma_list(self.lengths, "lengths", int)

    @property
    def ppl_length_list(self) -> tuple[int, ...]:
        return comma_list(self.ppl_lengths, "ppl_lengths", int)

    @property
    def policy_list(self) -> tuple[str, ...]:
        return comma_list(self.policies, "policies", _policy)

    @property
    def trials_by_length(self) -> dict[int, int]:
        """``--trials-at`` as ``{length: trials}``."""
        return dict(comma_list(self.trials_at, "trials_at", _length_trials))


def _policy(name: str) -> str:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})")
    return name


def _length_trials(text: str) -> tuple[int, int]:
    length, sep, trials = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r} is not LENGTH=TRIALS")
    return int(length), int(trials)


def parse() -> RealLongContextConfig:
    return parse_config(RealLongContextConfig, description=__doc__)


def _prefill(params, config, ids, policy, new_tokens: int, prefix=None):
    """Prefill ``ids``; with ``prefix = (state, prefix_ids)`` resume from the first chunk where
    ``ids`` leaves the shared prefix (the same cache as a full prefill, half the work on average).
    Returns ``(policy, state, static, tokens_computed)``."""
    policy_obj, args, static = prefill_arguments(
        [np.asarray(ids, np.int32)], max_new_tokens=new_tokens, policy=policy
    )
    if prefix is None:
        return policy_obj, prefill_jit(params, *args, config=config, **static), static, len(ids)
    state, prefix_ids = prefix
    same = np.asarray(ids[: len(prefix_ids)]) == np.asarray(prefix_ids[: len(ids)])
    shared = int(np.argmin(same)) if not same.all() else len(same)
    first = min(shared // static["chunk"], static["n_prefill"] // static["chunk"])
    st = prefill_resume_jit(params, state, *args, jnp.int32(first), config=config, **static)
    return policy_obj, st, static, len(ids) - first * static["chunk"]


def passkey_cell(params, config, tok, policy, length, trials, new_tokens, done=()) -> dict:
    """Trials ``len(done) .. trials - 1`` of a cell (``done``: answers of earlier runs, kept)."""
    encode = lambda s: tok.encode(s, add_special_tokens=False)
    depths = lc.depths(10)
    answers = list(done)
    # The filler before the needle is the same for every trial: prefill it once (the prompt with
    # the needle at depth 1) and resume each trial from the chunk where its needle starts.
    prefix_ids = lc.passkey_prompt(encode, length, 1.0, 0)
    _, prefix_state, _, _ = _prefill(params, config, prefix_ids, policy, new_tokens)
    prefix = (jax.block_until_ready(prefix_state), prefix_ids)
    for t in tqdm(range(len(done), trials), desc=f"{length}", leave=False):
        rng = np.random.default_rng([length, t])
        key = int(rng.integers(10000, 100000))
        ids = lc.passkey_prompt(encode, length, depths[t % len(depths)], key)
        t0 = time.perf_counter()
        policy_obj, state, _, computed = _prefill(params, config, ids, policy, new_tokens, prefix)
        jax.block_until_ready(state)
        t1 = time.perf_counter()
        out, _ = decode_jit(
            params, state, jax.random.key(0), config=config, policy=policy_obj, n_steps=new_tokens
        )
        text = tok.decode(np.asarray(out[0]).tolist(), skip_special_tokens=True)
        t2 = time.perf_counter()
        ok = lc.first_integer(text) == key
        answers.append(
            {
                "depth": depths[t % len(depths)],
                "key": key,
                "answer": text,
                "ok": ok,
                "prefill_tokens_computed": computed,
                "prefill_s": t1 - t0,
                "decode_s": t2 - t1,
            }
        )
    correct = sum(a["ok"] for a in answers)
    lo, hi = lc.wilson_interval(correct, trials)
    # Timings skip each run's first trial (it pays the compilation) and trials of older runs.
    timed = answers[len(done) + 1 :]
    mean = lambda key: float(np.mean([a[key] for a in timed])) if timed else None
    return {
        "accuracy": correct / trials,
        "correct": correct,
        "n": trials,
        "wilson95": [lo, hi],
        "prefill_s_mean": mean("prefill_s"),
        "prefill_tokens_computed_mean": mean("prefill_tokens_computed"),
        "decode_s_mean": mean("decode_s"),
        "answers": answers,
    }


def ppl_cell(params, config, tokens: np.ndarray, policy, length: int) -> dict:
    t0 = time.perf_counter()
    nll = np.asarray(sequence_nll(params, tokens[:length], config=config, policy=policy))
    blocks = nll[: (len(nll) // 512) * 512].reshape(-1, 512).mean(axis=1)
    tail = nll[-1024:]
    tail_blocks = tail.reshape(-1, 512).mean(axis=1)
    ci = lambda b: 1.96 * float(np.std(b, ddof=1) / np.sqrt(len(b))) if len(b) > 1 else None
    return {
        "nll": float(nll.mean()),
        "ppl": float(np.exp(nll.mean())),
        "nll_ci95": ci(blocks),
        "nll_last1024": float(tail.mean()),
        "ppl_last1024": float(np.exp(tail.mean())),
        "nll_last1024_ci95": ci(tail_blocks),
        "seconds": time.perf_counter() - t0,
    }


def plot(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in POLICIES:
        cells = sorted(
            (c for c in data["passkey"].values() if c["policy"] == name), key=lambda c: c["length"]
        )
        if cells:
            x = [c["length"] for c in cells]
            y = [c["accuracy"] for c in cells]
            err = [[c["accuracy"] - c["wilson95"][0] for c in cells]]
            err.append([c["wilson95"][1] - c["accuracy"] for c in cells])
            axes[0].errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        cells = sorted(
            (c for c in data["perplexity"].values() if c["policy"] == name),
            key=lambda c: c["length"],
        )
        if cells:
            axes[1].plot([c["length"] for c in cells], [c["ppl"] for c in cells], "o-", label=name)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.axvline(8192, color="grey", ls=":", lw=1)
        ax.set_xlabel("prompt tokens (dotted: trained context 8192)")
    axes[0].set_ylabel("passkey accuracy (95% Wilson)")
    axes[1].set_ylabel("perplexity, The Devil's Dictionary")
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct (Q4_1 GGUF, f32 compute)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "eval_longcontext.json"
    data = {"passkey": {}, "perplexity": {}}
    if path.exists() and args.resume:
        data = json.loads(path.read_text())
    if args.plot_only:
        plot(data, args.out / "eval_longcontext.png")
        return
    m = load_gguf(model_path("smollm2"))
    params, config = m.params_tree(), m.config
    tok = Tokenizer.from_gguf(model_path("smollm2"))
    data["environment"] = environment_info()
    save = lambda: path.write_text(json.dumps(data, indent=1) + "\n")
    for length in args.length_list:
        trials = args.trials_by_length.get(length, args.trials)
        for name in args.policy_list:
            cell = f"{name}@{length}"
            old = data["passkey"].get(cell, {})
            if old.get("n", 0) >= trials:
                continue
            t0 = time.perf_counter()
            res = passkey_cell(
                params,
                config,
                tok,
                POLICIES[name],
                length,
                trials,
                args.new_tokens,
                done=old.get("answers", []),
            )
            res.update(
                policy=name, length=length, wall_s=old.get("wall_s", 0) + time.perf_counter() - t0
            )
            data["passkey"][cell] = res
            save()
            print(
                f"passkey {cell}: {res['correct']}/{trials} "
                f"[{res['wilson95'][0]:.2f}, {res['wilson95'][1]:.2f}], "
                f"prefill {res['prefill_s_mean']:.1f} s, wall {res['wall_s']:.0f} s",
                flush=True,
            )
    if args.ppl_lengths:
        tokens = lc.devil_dictionary_tokens(lambda t: tok.encode(t, add_special_tokens=False))
        for length in args.ppl_length_list:
            for name in args.policy_list:
                cell = f"{name}@{length}"
                if cell in data["perplexity"]:
                    continue
                res = ppl_cell(params, config, tokens, POLICIES[name], length)
                data["perplexity"][cell] = {"policy": name, "length": length, **res}
                save()
                print(f"ppl {cell}: {res['ppl']:.2f} (last 1024: {res['ppl_last1024']:.2f})")
    rows = [
        {k: c[k] for k in ("policy", "length", "correct", "n", "prefill_s_mean")}
        for c in data["passkey"].values()
    ]
    print(format_table(rows))
    plot(data, args.out / "eval_longcontext.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
