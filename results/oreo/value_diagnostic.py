"""Value ranking diagnostic (third session): in-sample vs held-out best-of-K by V as a function of the
critic-only fit's data. Run: nice -n 10 /usr/bin/time .venv/bin/python results/oreo/value_diagnostic.py"""

import dataclasses
import resource
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


cfg = TR.OreoConfig(
    batch_size=64, sft_steps=800, rl_steps=200, n_prompts=512, k_samples=8, value_lr=1e-3
)
tcfg = cfg.task_with(cfg.task.n_steps)
key = jax.random.key(0)
ks = jax.random.split(key, 10)
data, _ = T.sft_batch(ks[0], cfg.sft_examples, tcfg, cfg.p_err, cfg.p_confuse)
p0 = M.init_params_jit(ks[1], cfg.model)
sft = TR.make_sft(cfg, steps=cfg.sft_steps, lr=cfg.sft_lr)(
    ks[2], p0, data.tokens, data.prompt_len, data.length, jnp.ones(cfg.sft_examples)
)[0]
say("sft done")
pr = T.prompt_batch(ks[3], cfg.n_prompts, tcfg)
off, _ = TR.collect(sft, pr, ks[4], cfg, k=8, temperature=1.0)
pol, val, _ = TR.make_oreo(cfg, steps=cfg.rl_steps, step_level=False)(
    ks[5], sft, TR.value_init(sft, cfg), sft, off
)
say("oreo done, greedy", float(TR.greedy_accuracy(pol, T.prompt_batch(ks[6], 512, tcfg), cfg)))
held = T.prompt_batch(ks[7], 512, tcfg)


def rank_on(v, d):
    r = TR._jitted(TR._value_ranking, False, ("mcfg", "k"))(
        v, d.tokens, d.prompt_len, d.length, d.reward, mcfg=cfg.model, k=8
    )
    return {k: round(float(x), 3) for k, x in r.items()}


dh, _ = TR.collect(pol, held, ks[8], cfg, k=8, temperature=1.0)
say("joint value, held-out:", rank_on(val, dh))
big = T.prompt_batch(ks[9], 4096, tcfg)
dbig, _ = TR.collect(pol, big, jax.random.fold_in(ks[9], 1), cfg, k=8, temperature=1.0)
for n_pr, steps, lr in [(512, 1500, 1e-3), (4096, 1500, 1e-3)]:
    d = jax.tree.map(lambda x, n=n_pr: x[: n * 8], dbig)
    fit = TR.make_value_fit(dataclasses.replace(cfg, value_prompts=n_pr), steps=steps, lr=lr)
    v, ls = fit(jax.random.key(11), TR.value_init(pol, cfg), pol, sft, d)
    dtr = jax.tree.map(lambda x: x[:4096], d)
    say(
        f"fit prompts={n_pr} steps={steps} lr={lr}: loss {float(ls[:50].mean()):.4f}->{float(ls[-50:].mean()):.4f}",
        "in-sample:",
        rank_on(v, dtr),
        "held-out:",
        rank_on(v, dh),
    )
