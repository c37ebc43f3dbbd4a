"""Set-up shared by the OREO diagnostics in this folder (one-off scripts, not library code).

``say`` prints wall and CPU time since import. ``sft_offline_oreo`` trains one seed the way the
first round of :func:`jaxsel.rl.oreo.train.run_pipeline` does: SFT on the task's SFT data -> 8
samples per prompt of the SFT model at T = 1 -> one round of token-level OREO. The keys are
passed in, so each script keeps its own key layout (and therefore its logged numbers).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import jax.numpy as jnp

from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo import train as TR

_T0 = time.time()


def say(*a: Any) -> None:
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(f"[{time.time() - _T0:6.0f}s wall {r.ru_utime + r.ru_stime:6.0f}s cpu]", *a, flush=True)


def sft_offline(cfg: TR.OreoConfig, ks: Any) -> tuple[Any, Any]:
    """``(sft params, offline samples)``; keys ``ks[0..4]``: SFT data, init, SFT, prompts, sampling."""
    tcfg = cfg.task_with(cfg.task.n_steps)
    data, _ = T.sft_batch(ks[0], cfg.sft_examples, tcfg, cfg.p_err, cfg.p_confuse)
    p0 = M.init_params_jit(ks[1], cfg.model)
    sft = TR.make_sft(cfg, steps=cfg.sft_steps, lr=cfg.sft_lr)(
        ks[2], p0, data.tokens, data.prompt_len, data.length, jnp.ones(cfg.sft_examples)
    )[0]
    off, _ = TR.collect(
        sft, T.prompt_batch(ks[3], cfg.n_prompts, tcfg), ks[4], cfg, k=8, temperature=1.0
    )
    return sft, off


def oreo_round(cfg: TR.OreoConfig, key: Any, sft: Any, off: Any) -> tuple[Any, Any]:
    """``(policy, value)`` after one round of token-level OREO from the SFT model on ``off``."""
    pol, val, _ = TR.make_oreo(cfg, steps=cfg.rl_steps, step_level=False)(
        key, sft, TR.value_init(sft, cfg), sft, off
    )
    return pol, val


def sft_offline_oreo(cfg: TR.OreoConfig, ks: Any, *, oreo_key: int = 5) -> tuple[Any, ...]:
    """``(sft, offline samples, policy, value)``: :func:`sft_offline` then :func:`oreo_round`."""
    sft, off = sft_offline(cfg, ks)
    return (sft, off, *oreo_round(cfg, ks[oreo_key], sft, off))
