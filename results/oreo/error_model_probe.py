"""Error-model probe (fourth session, seed 0): systematic '*'->'+' slip vs random step errors.

For each SFT error model: SFT -> 512 x 8 SFT samples -> RFT and token-level OREO (one round) ->
greedy accuracy on 512 held-out prompts, and majority vote vs Soft-SC (mean) over K = 8 samples
of the SFT and of the OREO policy on 2048 held-out prompts.
Run: nice -n 10 /usr/bin/time .venv/bin/python results/oreo/error_model_probe.py P_ERR P_CONFUSE MODULUS ...
"""

import dataclasses
import resource
import sys
import time

import jax
import jax.numpy as jnp

from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo import train as TR

t0 = time.time()


def say(*a):
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(f"[{time.time() - t0:6.0f}s wall {r.ru_utime + r.ru_stime:6.0f}s cpu]", *a, flush=True)


args = [float(x) for x in sys.argv[1:]] or [0.05, 0.6, 7]
for p_err, p_confuse, modulus in zip(args[::3], args[1::3], args[2::3]):
    base = TR.OreoConfig()
    task = dataclasses.replace(base.task, modulus=int(modulus))
    cfg = dataclasses.replace(base, p_err=p_err, p_confuse=p_confuse, task=task)
    mcfg, tcfg = cfg.model, cfg.task_with(cfg.task.n_steps)
    ks = jax.random.split(jax.random.key(0), 12)
    data, _ = T.sft_batch(ks[0], cfg.sft_examples, tcfg, cfg.p_err, cfg.p_confuse)
    p0 = M.init_params_jit(ks[1], mcfg)
    sft = TR.make_sft(cfg, steps=cfg.sft_steps, lr=cfg.sft_lr)(
        ks[2], p0, data.tokens, data.prompt_len, data.length, jnp.ones(cfg.sft_examples)
    )[0]
    off, _ = TR.collect(
        sft, T.prompt_batch(ks[3], cfg.n_prompts, tcfg), ks[4], cfg, k=8, temperature=1.0
    )
    rft = TR.make_sft(cfg, steps=cfg.rl_steps, lr=cfg.lr)(
        ks[5], sft, off.tokens, off.prompt_len, off.length, off.reward + 1e-9
    )[0]
    pol, _, _ = TR.make_oreo(cfg, steps=cfg.rl_steps, step_level=False)(
        ks[6], sft, TR.value_init(sft, cfg), sft, off
    )
    held = T.prompt_batch(ks[7], 512, tcfg)
    g = {
        n: round(float(TR.greedy_accuracy(p, held, cfg)), 3)
        for n, p in (("sft", sft), ("rft", rft), ("oreo", pol))
    }
    sc_pr = T.prompt_batch(ks[8], 2048, tcfg)
    sc = {}
    for n, p in (("sft", sft), ("oreo", pol)):
        r = TR.self_consistency_accuracy(p, sc_pr, ks[9], cfg, k=8)
        sc[n] = {k: round(r[k], 3) for k in ("majority", "soft_sc_mean", "soft_sc_min")}
    say(
        f"p_err={p_err} p_confuse={p_confuse} modulus={int(modulus)}: offline reward {float(off.reward.mean()):.3f}",
        "greedy",
        g,
        "SC",
        sc,
    )
