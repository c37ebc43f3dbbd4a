"""Value-depth probe (fourth session, seed 0): can a deeper trunk learn to rank within a prompt?

Hypothesis: to score a finished chain the value must recompute every step (gather ``y_{k-1}``,
``op``, ``a`` and apply the modular operation) AND compare the result with the written ``y_k``;
generation only needs the first half. A 2-layer trunk that just fits the generator may lack the
depth for the comparison, so its value learns which prompts are easy (across-prompt correlation)
but not which sample of a prompt is right (within-prompt ranking at chance).

For each ``n_layers``: SFT -> 512 x 8 SFT samples -> token-level OREO (one round) -> critic-only
fit (Eq. 8, policy fixed) from the policy's trunk on 1024 x 8 policy samples -> on 512 held-out
prompts x 8 policy samples: best-of-8 by V, a random sample, best-of-8 by a random score that is
equal for identical responses (what an uninformative value does), and the within-prompt AUC
P(V(correct) > V(wrong)).
Run: nice -n 10 /usr/bin/time .venv/bin/python results/oreo/value_depth_probe.py N_LAYERS ...
"""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
from diag_common import say, sft_offline_oreo

from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo import train as TR


def within_prompt(score, R, tok, k=8):
    s, r = score.reshape(-1, k), R.reshape(-1, k)
    best = float(np.mean(r[np.arange(r.shape[0]), s.argmax(1)]))
    wins = ties = tot = 0
    for p in range(r.shape[0]):
        c, w = s[p][r[p] > 0.5], s[p][r[p] < 0.5]
        wins += (c[:, None] > w[None]).sum()
        ties += (c[:, None] == w[None]).sum()
        tot += len(c) * len(w)
    # a random score per distinct response: how an uninformative value picks
    rng = np.random.default_rng(0)
    rows = tok.reshape(r.shape[0], k, -1)
    picks = []
    for p in range(r.shape[0]):
        _, inv = np.unique(rows[p], axis=0, return_inverse=True)
        u = rng.random(inv.max() + 1)[inv.reshape(-1)]
        picks.append(r[p, u.argmax()])
    return {
        "best_of_8": round(best, 3),
        "random_sample": round(float(r.mean()), 3),
        "best_of_8_by_random_score_per_distinct_response": round(float(np.mean(picks)), 3),
        "within_prompt_auc": round(float((wins + 0.5 * ties) / max(tot, 1)), 3),
        "distinct_per_prompt": round(float(np.mean([len(np.unique(x, axis=0)) for x in rows])), 2),
    }


for n_layers in [int(x) for x in sys.argv[1:]] or [2]:
    cfg = dataclasses.replace(TR.OreoConfig(), n_layers=n_layers)
    mcfg, tcfg = cfg.model, cfg.task_with(cfg.task.n_steps)
    ks = jax.random.split(jax.random.key(0), 12)
    sft, off, pol, val = sft_offline_oreo(cfg, ks)
    held = T.prompt_batch(ks[7], 512, tcfg)
    say(
        f"n_layers={n_layers} trained; greedy sft/oreo",
        round(float(TR.greedy_accuracy(sft, held, cfg)), 3),
        round(float(TR.greedy_accuracy(pol, held, cfg)), 3),
    )
    fd, _ = TR.collect(
        pol, T.prompt_batch(ks[9], cfg.value_prompts, tcfg), ks[10], cfg, k=8, temperature=1.0
    )
    fit = TR.make_value_fit(cfg, steps=cfg.value_steps, lr=cfg.value_lr)
    fitted, ls = fit(ks[11], TR.value_init(pol, cfg), pol, sft, fd)
    say(
        f"n_layers={n_layers} value fit loss {float(ls[:50].mean()):.4f} -> {float(ls[-50:].mean()):.4f}"
    )
    dh, _ = TR.collect(pol, held, ks[8], cfg, k=8, temperature=1.0)
    at = jnp.clip(dh.length - 2, 0, dh.tokens.shape[1] - 1)
    for name, v in (("joint", val), ("fitted", fitted)):
        vv = jax.jit(jax.vmap(lambda t, v=v, mcfg=mcfg: M.values(v, t, mcfg)))(dh.tokens)
        v_end = np.asarray(jnp.take_along_axis(vv, at[:, None], 1)[:, 0])
        say(
            f"n_layers={n_layers} {name} value, held-out:",
            within_prompt(v_end, np.asarray(dh.reward), np.asarray(dh.tokens)),
        )
