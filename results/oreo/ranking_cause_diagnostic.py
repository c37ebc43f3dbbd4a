"""Why do the values rank samples of one prompt below chance? (fourth session, seed 0)

Trains seed 0 like ``implicit_value_diagnostic.py`` (default ``OreoConfig``: SFT -> 512 x 8 SFT
samples -> one round of token-level OREO), draws 512 held-out prompts x 8 samples of the OREO
policy at T = 1, parses every sample into its steps and splits the implicit reward
``log(pi/pi_ref)`` and the learned value by where a sample goes wrong and how (the SFT data's
systematic ``*``->``+`` slip vs a random wrong result, malformed restatements of the prompt).
Run: nice -n 10 /usr/bin/time .venv/bin/python results/oreo/ranking_cause_diagnostic.py
"""

import jax
import numpy as np
from diag_common import say, sft_offline_oreo

from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo import train as TR

cfg = TR.OreoConfig()
mcfg = cfg.model
tcfg = cfg.task_with(cfg.task.n_steps)
ks = jax.random.split(jax.random.key(0), 10)
sft, off, pol, val = sft_offline_oreo(cfg, ks)
say("trained")


@jax.jit
def per_token(tokens):
    lp, _ = jax.vmap(lambda t: M.token_logps(pol, t, mcfg))(tokens)
    lr, _ = jax.vmap(lambda t: M.token_logps(sft, t, mcfg))(tokens)
    v = jax.vmap(lambda t: M.values(val, t, mcfg))(tokens)
    return lp, lr, v


def parse(tok, plen, length, modulus, n):
    """Per sample: first wrong step (-1 if none), its kind, malformed flag."""
    x0 = tok[1] - T.NUM0
    ops = tok[2 : 2 + 2 * n : 2]
    ar = tok[3 : 3 + 2 * n : 2] - T.NUM0
    y = x0
    for k in range(n):
        s = plen + 4 * k
        if tok[s] != ops[k] or tok[s + 1] - T.NUM0 != ar[k] or tok[s + 3] != T.SEMI:
            return k, "malformed"
        w = tok[s + 2] - T.NUM0
        a = ar[k]
        good = {T.PLUS: y + a, T.MINUS: y - a, T.TIMES: y * a}[int(ops[k])] % modulus
        if w != good:
            kind = "slip" if ops[k] == T.TIMES and w == (y + a) % modulus else "random"
            return k, kind
        y = w
    return -1, "none"


held = T.prompt_batch(ks[7], 512, tcfg)
d, _ = TR.collect(pol, held, ks[8], cfg, k=8, temperature=1.0)
lp, lr, v = (np.asarray(x) for x in per_token(d.tokens))
tok, plen, length, R = (np.asarray(x) for x in (d.tokens, d.prompt_len, d.length, d.reward))
N, n = tok.shape[0], tcfg.n_steps
first, kind = zip(*(parse(tok[i], plen[i], length[i], tcfg.modulus, n) for i in range(N)))
first, kind = np.array(first), np.array(kind)
j = np.arange(lp.shape[1])
resp = (j[None] >= plen[:, None] - 1) & (j[None] < length[:, None] - 1)
ratio = np.where(resp, lp - lr, 0.0)
v_end = v[np.arange(N), np.clip(length - 2, 0, tok.shape[1] - 1)]
say("R mean", R.mean(), "kinds:", {k: int((kind == k).sum()) for k in np.unique(kind)})
say("R by kind:", {k: round(float(R[kind == k].mean()), 3) for k in np.unique(kind)})

# where do the log-ratios of a wrong sample sit? index j scores token j+1; the result y of
# step k is token plen + 4k + 2, scored at j = plen + 4k + 1
for k_ in ("none", "slip", "random", "malformed"):
    sel = kind == k_
    if not sel.any():
        continue
    tot = ratio[sel].sum(1)
    msg = f"{k_:9s} n={sel.sum():4d} sum ratio {tot.mean():+.3f}  sum logpi {np.where(resp, lp, 0)[sel].sum(1).mean():+.2f}"
    msg += f"  sum logref {np.where(resp, lr, 0)[sel].sum(1).mean():+.2f}  V_end {v_end[sel].mean():+.3f}"
    if k_ != "none":
        idx = np.where(sel)[0]
        at = plen[idx] + 4 * first[idx] + 1
        err = ratio[idx, at]
        before = np.array([ratio[i, plen[i] - 1 : a].sum() for i, a in zip(idx, at)])
        after = np.array([ratio[i, a + 1 :].sum() for i, a in zip(idx, at)])
        msg += (
            f"  | before {before.mean():+.3f} at-error {err.mean():+.3f} after {after.mean():+.3f}"
        )
        msg += f" (logpi at error {lp[idx, at].mean():+.2f}, logref {lr[idx, at].mean():+.2f})"
    say(msg)

# result tokens of correct samples: ratio by operator
for op, name in ((T.PLUS, "+"), (T.MINUS, "-"), (T.TIMES, "*")):
    vals = []
    for i in np.where(kind == "none")[0]:
        for k in range(n):
            s = plen[i] + 4 * k
            if tok[i, s] == op:
                vals.append(ratio[i, s + 1])
    say(
        f"correct samples, result of a '{name}' step: mean ratio {np.mean(vals):+.3f} (n={len(vals)})"
    )

# within-prompt comparisons: how often does a wrong sample beat a correct one of the same prompt?
Rk, tk, vk = R.reshape(-1, 8), ratio.sum(1).reshape(-1, 8), v_end.reshape(-1, 8)
kk = kind.reshape(-1, 8)
for name, s in (("implicit", tk), ("V_end", vk)):
    for wk in ("slip", "random", "malformed"):
        wins = tot = 0
        for p in range(Rk.shape[0]):
            c = s[p][Rk[p] > 0.5]
            w = s[p][(Rk[p] < 0.5) & (kk[p] == wk)]
            if len(c) and len(w):
                wins += (w[:, None] > c[None]).sum()
                tot += len(w) * len(c)
        if tot:
            say(
                f"{name}: P(wrong[{wk}] scored above a correct sample of its prompt) = {wins / tot:.3f} ({tot} pairs)"
            )
