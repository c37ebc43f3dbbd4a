"""Error-model probe (fourth session, seed 0): systematic '*'->'+' slip vs random step errors.

For each SFT error model: SFT -> 512 x 8 SFT samples -> RFT and token-level OREO (one round) ->
greedy accuracy on 512 held-out prompts, and majority vote vs Soft-SC (mean) over K = 8 samples
of the SFT and of the OREO policy on 2048 held-out prompts.
Run: nice -n 10 /usr/bin/time .venv/bin/python results/oreo/error_model_probe.py P_ERR P_CONFUSE MODULUS ...
"""

import dataclasses
import sys

import jax
from diag_common import oreo_round, say, sft_offline

from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo import train as TR

args = [float(x) for x in sys.argv[1:]] or [0.05, 0.6, 7]
for p_err, p_confuse, modulus in zip(args[::3], args[1::3], args[2::3]):
    base = TR.OreoConfig()
    task = dataclasses.replace(base.task, modulus=int(modulus))
    cfg = dataclasses.replace(base, p_err=p_err, p_confuse=p_confuse, task=task)
    mcfg, tcfg = cfg.model, cfg.task_with(cfg.task.n_steps)
    ks = jax.random.split(jax.random.key(0), 12)
    sft, off = sft_offline(cfg, ks)
    rft = TR.make_sft(cfg, steps=cfg.rl_steps, lr=cfg.lr)(
        ks[5], sft, off.tokens, off.prompt_len, off.length, off.reward + 1e-9
    )[0]
    pol, _ = oreo_round(cfg, ks[6], sft, off)
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
