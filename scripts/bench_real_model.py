"""Prefill and decode speed of a SmolLM2-sized decoder under dense, TokenSelect and streaming.

    nice -n 10 .venv/bin/python scripts/bench_real_model.py --lengths 4096,8192,16384
    .venv/bin/python scripts/bench_real_model.py --model smollm2     # the real weights (fetched)

For each (policy, prompt length) cell: the prefill (``jaxsel.models.generate.prefill_jit``) and
``--new-tokens`` greedy decode steps (``decode_jit``), each compiled ahead of time (compile time
reported apart) and run once; tokens/s and GFLOP/s (counted by :mod:`jaxsel.models.flops`) against
the f32 matmul rate measured in the same run ([2048, 576] x [576, 1536]). Policies: ``dense``,
``tokenselect`` (sink 128, top-k 2048, local 512, compact positions; the authors' defaults),
``tokenselect_cache`` (the same with the Selection Cache at cosine 0.9; its hit rate is reported)
and ``streaming`` (sink 128 + local 2560, the same budget). Writes
``results/models/smollm2/bench_real_model.json``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxsel._bench import format_table, time_fn, write_json
from jaxsel.models import DecoderConfig, flops, init_params
from jaxsel.models import policies as pol
from jaxsel.models.generate import decode_jit, n_cached_layers, prefill_arguments, prefill_jit
from jaxsel.utils import flag, parse_config
from jaxsel.utils.config_cli import comma_list

SMOLLM2 = DecoderConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)

TS = dict(n_sink=128, top_k=2048, n_local=512)
POLICIES = {
    "dense": pol.Dense(),
    "tokenselect": pol.TokenSelect(**TS),
    "tokenselect_cache": pol.TokenSelect(**TS, cache_threshold=0.9),
    "streaming": pol.Streaming(n_sink=128, n_local=2560),
}


@dataclasses.dataclass(frozen=True)
class RealModelConfig:
    model: str = flag(
        "random", "random weights or the fetched SmolLM2", choices=("random", "smollm2")
    )
    layers: int | None = flag(None, "random model: layers (default 30)")
    lengths: str = flag("4096,8192,16384", "prompt lengths, comma-separated")
    policies: str = flag(
        "dense,tokenselect,tokenselect_cache", f"comma-separated, of {', '.join(POLICIES)}"
    )
    new_tokens: int = flag(16, "greedy decode steps per cell")
    chunk: int = flag(512, "prefill chunk")
    out: Path = Path("results/models/smollm2/bench_real_model.json")

    def __post_init__(self) -> None:
        if self.model not in ("random", "smollm2"):
            raise ValueError(f"model must be 'random' or 'smollm2', got {self.model!r}")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if not self.length_list or min(self.length_list) < 1:
            raise ValueError(f"lengths must be positive ints, got {self.lengths!r}")
        if not self.policy_list:
            raise ValueError("policies must name at least one policy")
        for name in ("new_tokens", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def length_list(self) -> tuple[int, ...]:
        return comma_list(self.lengths, "lengths", int)

    @property
    def policy_list(self) -> tuple[str, ...]:
        return comma_list(self.policies, "policies", _policy)


def _policy(name: str) -> str:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})")
    return name


def parse() -> RealModelConfig:
    return parse_config(RealModelConfig, description=__doc__)


def load(args: RealModelConfig):
    if args.model == "smollm2":
        from jaxsel.models import load_gguf, model_path

        m = load_gguf(model_path("smollm2"))
        return m.params_tree(), m.config
    config = SMOLLM2
    if args.layers:
        config = DecoderConfig(**{**config.__dict__, "num_layers": args.layers})
    params = jax.jit(init_params, static_argnums=1)(jax.random.key(0), config)
    return params, config


def run_cell(params, config, policy, length: int, new_tokens: int, chunk: int) -> dict:
    tokens = np.random.default_rng(length).integers(0, config.vocab_size, length).astype(np.int32)
    policy, args, static = prefill_arguments(
        [tokens], max_new_tokens=new_tokens, policy=policy, prefill_chunk=chunk
    )
    t0 = time.perf_counter()
    pre = prefill_jit.lower(params, *args, config=config, **static).compile()
    t1 = time.perf_counter()
    state = jax.block_until_ready(pre(params, *args))
    t2 = time.perf_counter()
    kw = dict(config=config, policy=policy, n_steps=new_tokens)
    key = jax.random.key(0)
    dec = decode_jit.lower(params, state, key, **kw).compile()
    t3 = time.perf_counter()
    out, state = jax.block_until_ready(dec(params, state, key))
    t4 = time.perf_counter()
    n_pre = static["n_prefill"]
    pre_flops = flops.prefill_flops(config, policy, n_pre, static["chunk"])
    dec_flops = sum(flops.decode_flops(config, policy, length + i) for i in range(new_tokens))
    n_cached = n_cached_layers(policy, config)
    return {
        "length": length,
        "prefill_tokens": n_pre,
        "prefill_compile_s": t1 - t0,
        "prefill_s": t2 - t1,
        "prefill_tok_s": n_pre / (t2 - t1),
        "prefill_gflop_s": pre_flops / (t2 - t1) / 1e9,
        "decode_compile_s": t3 - t2,
        "decode_s": t4 - t3,
        "decode_tok_s": new_tokens / (t4 - t3),
        "decode_gflop_s": dec_flops / (t4 - t3) / 1e9,
        "hit_rate": float(state.hits[0]) / (new_tokens * n_cached) if n_cached else None,
        "first_tokens": np.asarray(out[0, :4]).tolist(),
    }


def main() -> None:
    args = parse()
    params, config = load(args)
    x, w = jnp.ones((2048, 576), jnp.float32), jnp.ones((576, 1536), jnp.float32)
    mm = time_fn(lambda a, b: a @ b, x, w, name="matmul", iters=20)
    mm_gflop_s = 2 * 2048 * 576 * 1536 / mm.median_s / 1e9
    print(f"f32 matmul [2048,576]x[576,1536]: {mm_gflop_s:.0f} GFLOP/s; {config.num_layers} layers")
    rows = []
    for length in args.length_list:
        for name in args.policy_list:
            r = run_cell(params, config, POLICIES[name], length, args.new_tokens, args.chunk)
            r = {"policy": name, **r, "prefill_frac_matmul": r["prefill_gflop_s"] / mm_gflop_s}
            rows.append(r)
            print(
                f"{name:18s} {length:6d}: prefill {r['prefill_s']:7.1f} s "
                f"({r['prefill_gflop_s']:5.0f} GFLOP/s, compile {r['prefill_compile_s']:.0f} s), "
                f"decode {r['decode_tok_s']:6.2f} tok/s, hit rate {r['hit_rate']}",
                flush=True,
            )
    for r in rows:  # ratios to dense at the same length, same run
        base = next(
            (b for b in rows if b["policy"] == "dense" and b["length"] == r["length"]), None
        )
        if base:
            r["prefill_time_vs_dense"] = r["prefill_s"] / base["prefill_s"]
            r["decode_speedup_vs_dense"] = r["decode_tok_s"] / base["decode_tok_s"]
    cols = ("policy", "length", "prefill_s", "prefill_gflop_s", "prefill_time_vs_dense")
    cols += ("decode_tok_s", "decode_speedup_vs_dense", "hit_rate")
    print(format_table([{c: r.get(c) for c in cols} for r in rows]))
    write_json(
        args.out,
        {
            "model": args.model,
            "config": {k: str(v) for k, v in config.__dict__.items()},
            "matmul_gflop_s": mm_gflop_s,
            "new_tokens": args.new_tokens,
            "chunk": args.chunk,
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
