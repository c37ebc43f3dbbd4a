"""``jaxsel demo``: the main job.

Foundation version: measures one decode step of dense attention (one layer, GQA) against attention
restricted to sinks + a recent window at the same budget, for a few cache lengths, and reports the
share of the dense attention mass the window keeps. The TokenSelect model issue replaces this with the
long-context extrapolation demo on the shipped retrieval model.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsel._bench import format_table, time_fn, write_json


def _dense_decode(q, k, v):
    # q [Hq, d], k/v [N, Hkv, d]
    hq, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(hkv, hq // hkv, d).astype(jnp.float32)
    s = jnp.einsum("hgd,nhd->hgn", qg, k.astype(jnp.float32)) / jnp.sqrt(d)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("hgn,nhd->hgd", p, v.astype(jnp.float32))
    return o.reshape(hq, d), p.reshape(hq, -1)


def run_demo(*, quick: bool = False, out_dir: str = "results/demo") -> int:
    t_start = time.perf_counter()
    print(f"jaxsel demo on {jax.devices()[0].device_kind} (jax {jax.__version__})")
    hq, hkv, d = (8, 2, 32) if quick else (32, 8, 128)
    lengths = [1024, 4096] if quick else [4096, 16384, 65536]
    n_sink, n_local = 16, 240 if quick else 2560
    budget = n_sink + n_local
    rows = []
    key = jax.random.key(0)
    for n in tqdm(lengths, desc="cache lengths"):
        kq, kk, kv = jax.random.split(jax.random.fold_in(key, n), 3)
        q = jax.random.normal(kq, (hq, d), jnp.float32)
        k = jax.random.normal(kk, (n, hkv, d), jnp.float32).astype(jnp.bfloat16)
        v = jax.random.normal(kv, (n, hkv, d), jnp.float32).astype(jnp.bfloat16)
        idx = jnp.concatenate([jnp.arange(n_sink), jnp.arange(n - n_local, n)])
        dense = time_fn(lambda q, k, v: _dense_decode(q, k, v)[0], q, k, v, name="dense", iters=5)
        window = time_fn(
            lambda q, k, v, idx=idx: _dense_decode(q, k[idx], v[idx])[0],
            q,
            k,
            v,
            name="window",
            iters=5,
        )
        _, p = _dense_decode(q, k, v)
        kept = float(jnp.mean(jnp.sum(p[:, idx], axis=-1)))
        rows.append(
            {
                "N": n,
                "dense_ms": dense.median_s * 1e3,
                "sink+window_ms": window.median_s * 1e3,
                "ratio": window.median_s / dense.median_s,
                "mass_kept": kept,
            }
        )
    print(format_table(rows))
    out = write_json(
        Path(out_dir) / "demo.json",
        {"shapes": {"Hq": hq, "Hkv": hkv, "d": d, "budget": budget}, "rows": rows},
    )
    print(f"wrote {out} in {time.perf_counter() - t_start:.1f} s")
    return 0 if np.all(np.isfinite([r["dense_ms"] for r in rows])) else 1
