"""Benchmark TokenSelect (jaxsel.attention) on one decode step of one layer, in three parts.

1. Speed: dense attention vs TokenSelect (select + sparse attention) vs TokenSelect on a Selection
   Cache hit, Hq=32, Hkv=8, d=128, bf16 cache, N in {8K, 32K, 128K}, budget 128 + 2048 + 512; also
   ``jax.nn.dot_product_attention`` as the library dense peer. Ratios to dense, and achieved bytes/s
   against a memory-copy bandwidth measured in the same run.
2. Selection quality on synthetic queries/keys with planted relevant tokens: the share of the true
   (dense) attention mass captured by soft voting, raw-logit sum, per-head top-k and streaming at
   equal budget (and an oracle shared selection).
3. Selection Cache hit rate vs threshold on a query sequence with AR(1) step-to-step correlation,
   with the attention mass the reused selections keep.

    nice -n 10 .venv/bin/python scripts/bench_tokenselect.py            # full (CPU: ~15-20 min)
    .venv/bin/python scripts/bench_tokenselect.py --quick               # smoke run, small shapes

Writes ``results/attention/bench_tokenselect.json`` and ``.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsel._bench import copy_bandwidth, format_table, time_fn, write_json
from jaxsel.attention import (
    SelectionCacheState,
    cached_select,
    dense_attention,
    per_head_select,
    raw_logit_select,
    select_tokens,
    sparse_attention,
    streaming_select,
    token_scores,
)
from jaxsel.attention.select import select_from_votes
from jaxsel.utils import flag, parse_config, pyplot, save_figure

PARTS = ("speed", "quality", "cache")


@dataclasses.dataclass(frozen=True)
class Config:
    lengths: tuple[int, ...] = (8192, 32768, 131072)
    hq: int = 32
    hkv: int = 8
    d: int = 128
    n_sink: int = 128
    top_k: int = 2048
    n_local: int = 512
    iters: int = 5
    warmup: int = 1
    quality_n: int = 32768
    quality_trials: int = 4
    quality_top_ks: tuple[int, ...] = (256, 512, 1024, 2048)
    cache_n: int = 16384
    cache_steps: int = 64
    cache_rho: float = 0.9
    thresholds: tuple[float, ...] = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
    seed: int = 0
    out: str = "results/attention"
    quick: bool = flag(False, "small shapes for a smoke run (QUICK; flags given still win)")
    skip: tuple[str, ...] = flag((), "parts not to run", choices=PARTS)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.skip) - set(PARTS))
        if unknown:
            raise ValueError(f"skip: unknown parts {unknown} (choose from {PARTS})")

    @property
    def budget(self) -> dict[str, int]:
        return dict(top_k=self.top_k, n_sink=self.n_sink, n_local=self.n_local)


QUICK = dict(
    lengths=(2048, 8192),
    hq=8,
    hkv=2,
    d=64,
    n_sink=16,
    top_k=256,
    n_local=64,
    iters=3,
    quality_n=4096,
    quality_trials=2,
    quality_top_ks=(64, 128, 256),
    cache_n=2048,
    cache_steps=16,
)


# ----------------------------------------------------------------------------- 1. speed


def bench_speed(cfg: Config, copy_bw: float) -> list[dict]:
    budget = cfg.budget
    b = cfg.n_sink + cfg.top_k + cfg.n_local

    def tokenselect(q, k, v, n):
        idx, valid = select_tokens(q, k, n, **budget)
        return sparse_attention(q, k, v, idx, valid)

    def selection_only(q, k, v, n):
        return select_tokens(q, k, n, **budget)

    def cache_hit(state, q, k, v, n):
        idx, valid, state, hit = cached_select(state, q, k, n, threshold=0.9, **budget)
        return sparse_attention(q, k, v, idx, valid), hit

    def sdpa(q, k, v, n):
        return jax.nn.dot_product_attention(
            q[None, None], k[None], v[None], key_value_seq_lengths=n[None]
        )[0, 0]

    rows = []
    for n in tqdm(cfg.lengths, desc="speed: cache lengths"):
        kq, kk, kv = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), n), 3)
        q = jax.random.normal(kq, (cfg.hq, cfg.d), jnp.float32).astype(jnp.bfloat16)
        k = jax.random.normal(kk, (n, cfg.hkv, cfg.d), jnp.bfloat16)
        v = jax.random.normal(kv, (n, cfg.hkv, cfg.d), jnp.bfloat16)
        kv_len = jnp.int32(n)
        # A state whose last selection was made one token earlier with the same query: a hit.
        state = SelectionCacheState.init(q, **budget)
        _, _, state, _ = jax.jit(functools.partial(cached_select, **budget))(
            state, q, k, kv_len - 1
        )
        _, hit = jax.jit(cache_hit)(state, q, k, v, kv_len)
        assert bool(hit), "the cache-hit benchmark state did not hit"

        t = {}
        for name, fn, args in (
            ("dense", lambda q, k, v, n: dense_attention(q, k, v, n), (q, k, v, kv_len)),
            ("sdpa", sdpa, (q, k, v, kv_len)),
            ("tokenselect", tokenselect, (q, k, v, kv_len)),
            ("select_only", selection_only, (q, k, v, kv_len)),
            ("cache_hit", cache_hit, (state, q, k, v, kv_len)),
        ):
            t[name] = time_fn(fn, *args, name=name, warmup=cfg.warmup, iters=cfg.iters)
        # sanity: TokenSelect output is close to dense on random data (not a quality measure)
        item = k.dtype.itemsize
        kv_bytes = n * cfg.hkv * cfg.d * item
        bytes_moved = {
            "dense": 2 * kv_bytes,
            "sdpa": 2 * kv_bytes,
            "tokenselect": kv_bytes + 2 * b * cfg.hkv * cfg.d * item,
            "select_only": kv_bytes,
            "cache_hit": 2 * b * cfg.hkv * cfg.d * item,
        }
        dense_s = t["dense"].median_s
        for name, tm in t.items():
            rows.append(
                {
                    "N": n,
                    "method": name,
                    "median_ms": tm.median_s * 1e3,
                    "min_ms": tm.min_s * 1e3,
                    "compile_s": tm.compile_s,
                    "ratio_to_dense": tm.median_s / dense_s,
                    "ratio_to_sdpa": tm.median_s / t["sdpa"].median_s,
                    "bytes": bytes_moved[name],
                    "GB_per_s": bytes_moved[name] / tm.median_s / 1e9,
                    "frac_copy_bw": bytes_moved[name] / tm.median_s / copy_bw,
                    # what dense would take if it streamed K and V at the copy bandwidth
                    "ratio_to_ideal_dense": tm.median_s / (2 * kv_bytes / copy_bw),
                }
            )
        del k, v
    return rows


# ----------------------------------------------------------------------------- 2. quality


def planted_problem(key, cfg: Config, n: int):
    """Queries and keys where each query head has its own planted relevant tokens.

    Background keys are N(0, I). Query head h points along a unit vector u_h with attention-logit
    scale c_h (a few "loud" heads have c_h = 4); each head gets 32 planted tokens in the middle
    whose keys (in its KV head) gain m * u_h, m ~ U(6, 9), so their attention logit rises by about
    c_h * m. Loud heads give large raw logits, which dominate a raw-logit sum; per-head
    normalisation (soft voting) gives every head one vote.
    """
    hq, hkv, d = cfg.hq, cfg.hkv, cfg.d
    g = hq // hkv
    ks = jax.random.split(key, 6)
    u = jax.random.normal(ks[0], (hq, d))
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    c = jax.random.uniform(ks[1], (hq,), minval=0.5, maxval=1.5)
    c = c.at[jnp.arange(0, hq, max(hq // 4, 1))].set(4.0)
    q = u * (c * jnp.sqrt(d))[:, None]
    k = jax.random.normal(ks[2], (n, hkv, d))
    n_plant = 32
    lo, hi = cfg.n_sink, n - cfg.n_local
    pos = jax.random.randint(ks[3], (hq, n_plant), lo, hi)
    m = jax.random.uniform(ks[4], (hq, n_plant), minval=6.0, maxval=9.0)
    kvh = jnp.arange(hq) // g
    add = m[..., None] * u[:, None, :]  # [hq, n_plant, d]
    k = k.at[pos, jnp.broadcast_to(kvh[:, None], pos.shape)].add(add)
    return q, k


def attention_mass(q, k, kv_len, idx, valid):
    """Share of each head's dense attention probability on the selected tokens, mean over heads."""
    s = token_scores(q, k, kv_len, scale=1.0 / np.sqrt(q.shape[-1]))
    p = jax.nn.softmax(s, axis=-1)
    if idx.ndim == 1:
        sel = jnp.zeros(k.shape[0], jnp.float32).at[idx].add(valid.astype(jnp.float32))
        return jnp.mean(p @ sel)
    sel = jax.vmap(lambda i, m: jnp.zeros(k.shape[0]).at[i].add(m.astype(jnp.float32)))(idx, valid)
    return jnp.mean(jnp.sum(p * sel, axis=-1))


def oracle_select(q, k, kv_len, *, top_k, n_sink, n_local):
    """The shared selection maximising mean dense attention mass (top_k by mean probability)."""
    s = token_scores(q, k, kv_len, scale=1.0 / np.sqrt(q.shape[-1]))
    votes = jnp.mean(jax.nn.softmax(s, axis=-1), axis=0)
    return select_from_votes(votes, kv_len, top_k=top_k, n_sink=n_sink, n_local=n_local)


def bench_quality(cfg: Config) -> list[dict]:
    methods = {
        "soft_vote (TokenSelect)": select_tokens,
        "raw_logit (InfLLM-style)": raw_logit_select,
        "per_head": per_head_select,
        "streaming": streaming_select,
        "oracle_shared": oracle_select,
    }
    n = cfg.quality_n
    rows = []
    for top_k in tqdm(cfg.quality_top_ks, desc="quality: top_k"):
        bud = dict(top_k=top_k, n_sink=cfg.n_sink, n_local=cfg.n_local)
        fns = {
            name: jax.jit(lambda q, k, f=f, b=bud: attention_mass(q, k, n, *f(q, k, n, **b)))
            for name, f in methods.items()
        }
        acc = {name: [] for name in methods}
        for trial in range(cfg.quality_trials):
            q, k = planted_problem(jax.random.key(1000 + trial), cfg, n)
            for name, f in fns.items():
                acc[name].append(float(f(q, k)))
        for name, vals in acc.items():
            rows.append(
                {
                    "N": n,
                    "top_k": top_k,
                    "budget": top_k + cfg.n_sink + cfg.n_local,
                    "method": name,
                    "mass_mean": float(np.mean(vals)),
                    "mass_std": float(np.std(vals)),
                }
            )
    return rows


# ----------------------------------------------------------------------------- 3. cache


def correlated_queries(key, mu, rho: float, steps: int):
    """``q_t = mu + (|mu_h| / sqrt(d)) z_t`` per head, with ``z_t`` a unit AR(1) process.

    The noise is as large as the signal, and consecutive steps correlate through ``rho``: with
    rho = 0.9 adjacent queries have cosine ~0.95, while queries far apart drop to ~0.5.
    """
    k1, k2 = jax.random.split(key)
    eps = jax.random.normal(k1, (steps, *mu.shape))

    def body(z, e):
        z = rho * z + np.sqrt(1 - rho**2) * e
        return z, z

    _, zs = jax.lax.scan(body, jax.random.normal(k2, mu.shape), eps)
    noise_scale = jnp.linalg.norm(mu, axis=-1, keepdims=True) / np.sqrt(mu.shape[-1])
    return mu[None] + noise_scale[None] * zs


def bench_cache(cfg: Config) -> tuple[list[dict], dict]:
    """Decode steps over the planted problem (keys fixed, queries drifting around its queries)."""
    n, steps = cfg.cache_n, cfg.cache_steps
    bud = cfg.budget
    kp, kq = jax.random.split(jax.random.key(cfg.seed + 7))
    mu, k = planted_problem(kp, cfg, n)
    qs = correlated_queries(kq, mu, cfg.cache_rho, steps)
    lens = jnp.arange(n - steps, n, dtype=jnp.int32) + 1

    def run(threshold):
        def body(state, x):
            q, kv_len = x
            idx, valid, state, hit = cached_select(state, q, k, kv_len, threshold=threshold, **bud)
            fresh = select_tokens(q, k, kv_len, **bud)
            mass = attention_mass(q, k, kv_len, idx, valid)
            mass_fresh = attention_mass(q, k, kv_len, *fresh)
            return state, (hit, mass, mass_fresh)

        state0 = SelectionCacheState.init(qs[0], **bud)
        _, out = jax.lax.scan(body, state0, (qs, lens))
        return out

    run = jax.jit(run)
    rows = []
    for th in tqdm(cfg.thresholds, desc="cache: thresholds"):
        hits, mass, mass_fresh = run(jnp.float32(th))
        rows.append(
            {
                "threshold": th,
                "hit_rate": float(jnp.mean(hits[1:])),  # the first step can never hit
                "mass_with_cache": float(jnp.mean(mass)),
                "mass_fresh_selection": float(jnp.mean(mass_fresh)),
            }
        )
    cos = jax.vmap(lambda a, b: jnp.vdot(a, b) / jnp.linalg.norm(a) / jnp.linalg.norm(b))(
        qs[1:], qs[:-1]
    )
    stats = {
        "N": n,
        "steps": steps,
        "rho": cfg.cache_rho,
        "adjacent_cosine_mean": float(jnp.mean(cos)),
        "adjacent_cosine_p10_p90": [float(x) for x in jnp.percentile(cos, jnp.array([10, 90]))],
    }
    return rows, stats


# ----------------------------------------------------------------------------- main


def plot(speed, quality, cache, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    for method in ("dense", "sdpa", "tokenselect", "cache_hit"):
        r = [x for x in speed if x["method"] == method]
        ax[0].loglog([x["N"] for x in r], [x["median_ms"] for x in r], "o-", label=method)
    ax[0].set(xlabel="cache length N", ylabel="ms per decode step (1 layer)", title="speed")
    ax[0].legend()
    for method in sorted({x["method"] for x in quality}):
        r = [x for x in quality if x["method"] == method]
        ax[1].errorbar(
            [x["budget"] for x in r],
            [x["mass_mean"] for x in r],
            [x["mass_std"] for x in r],
            marker="o",
            label=method,
        )
    ax[1].set(
        xlabel="budget (tokens)", ylabel="dense attention mass captured", title="quality (planted)"
    )
    ax[1].legend(fontsize=8)
    th = [x["threshold"] for x in cache]
    ax[2].plot(th, [x["hit_rate"] for x in cache], "o-", label="hit rate")
    ax[2].plot(th, [x["mass_with_cache"] for x in cache], "s-", label="mass with cache")
    ax[2].plot(th, [x["mass_fresh_selection"] for x in cache], "--", label="mass, fresh selection")
    ax[2].set(xlabel="cosine threshold", title="Selection Cache")
    ax[2].legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120, tight=False)


def main(argv=None) -> int:
    cfg = parse_config(Config, argv, description=__doc__, presets={"quick": QUICK})
    out = Path(cfg.out)
    t0 = time.perf_counter()
    print(f"TokenSelect benchmark on {jax.devices()[0].device_kind}, jax {jax.__version__}")
    copy_bw = copy_bandwidth(256 * 2**20)
    print(f"copy bandwidth (read + write): {copy_bw / 1e9:.2f} GB/s")
    speed = [] if "speed" in cfg.skip else bench_speed(cfg, copy_bw)
    if speed:
        print(
            format_table(
                speed,
                [
                    "N",
                    "method",
                    "median_ms",
                    "ratio_to_dense",
                    "ratio_to_sdpa",
                    "GB_per_s",
                    "frac_copy_bw",
                    "ratio_to_ideal_dense",
                    "compile_s",
                ],
            )
        )
    quality = [] if "quality" in cfg.skip else bench_quality(cfg)
    if quality:
        print(format_table(quality))
    cache, cache_stats = ([], {}) if "cache" in cfg.skip else bench_cache(cfg)
    if cache:
        print(cache_stats)
        print(format_table(cache))
    copy_bw_end = copy_bandwidth(256 * 2**20)
    name = "bench_tokenselect_quick" if cfg.quick else "bench_tokenselect"
    write_json(
        out / f"{name}.json",
        {
            "config": dataclasses.asdict(cfg),
            "copy_bandwidth_bytes_per_s": {"start": copy_bw, "end": copy_bw_end},
            "speed": speed,
            "quality": quality,
            "cache": cache,
            "cache_stats": cache_stats,
            "wall_s": time.perf_counter() - t0,
        },
    )
    if speed and quality and cache:
        plot(speed, quality, cache, out / f"{name}.png")
    print(f"wrote {out}/{name}.json ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
