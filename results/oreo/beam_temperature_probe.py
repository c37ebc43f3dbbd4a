"""Beam-temperature probe (fourth session, seed 0): value-guided beam B=5 vs greedy vs the same
beam ranked by a score blind to correctness, as a function of the expansion temperature.

Seed 0 of the 3-seed benchmark: value-guided B=5 0.797 vs greedy 0.813 vs blind-score B=5 0.703
(64 prompts, expansions at T = 0.7): the value adds ~0.09 over chance, but sampling the
expansions at T = 0.7 starts the search 0.11 below greedy. Colder expansions move the chance
level of the search towards greedy; does V's gain survive? Setup as ``value_depth_probe.py``
(SFT -> one round of token-level OREO -> critic-only value fit on 1024 x 8 policy samples), then
on 256 fresh prompts.
Run: nice -n 10 /usr/bin/time .venv/bin/python results/oreo/beam_temperature_probe.py
"""

import dataclasses
import sys

import jax
from diag_common import say, sft_offline_oreo

from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo import train as TR

# optional: VALUE_PROMPTS VALUE_STEPS T1 T2 ... (a bigger critic-only fit, other temperatures)
argv = sys.argv[1:]
cfg = TR.OreoConfig()
if argv:
    cfg = dataclasses.replace(cfg, value_prompts=int(argv[0]), value_steps=int(argv[1]))
temps = [float(t) for t in argv[2:]] or [0.3, 0.5, 0.7]
mcfg, tcfg = cfg.model, cfg.task_with(cfg.task.n_steps)
ks = jax.random.split(jax.random.key(0), 12)
sft, off, pol, _ = sft_offline_oreo(cfg, ks)
fd, _ = TR.collect(
    pol, T.prompt_batch(ks[9], cfg.value_prompts, tcfg), ks[10], cfg, k=8, temperature=1.0
)
fitted, vls = TR.make_value_fit(cfg, steps=cfg.value_steps, lr=cfg.value_lr)(
    ks[11], TR.value_init(pol, cfg), pol, sft, fd
)
say(
    f"value fit {cfg.value_prompts} prompts x 8, {cfg.value_steps} steps: loss",
    f"{float(vls[:50].mean()):.4f} -> {float(vls[-50:].mean()):.4f}",
)
ev = T.prompt_batch(ks[7], 256, tcfg)
dh, _ = TR.collect(pol, T.prompt_batch(ks[8], 512, tcfg), ks[6], cfg, k=8, temperature=1.0)
rank = TR._jitted(TR._value_ranking, False, ("mcfg", "k"))(
    fitted, dh.tokens, dh.prompt_len, dh.length, dh.reward, mcfg=mcfg, k=8
)
say("fitted value, 512 held-out prompts x 8:", {k: round(float(x), 3) for k, x in rank.items()})
say("trained; greedy (256 prompts):", round(float(TR.greedy_accuracy(pol, ev, cfg)), 3))
for temp in temps:
    acc = {
        name: round(
            float(
                TR.beam_accuracy(
                    pol,
                    v,
                    ev,
                    jax.random.key(5),
                    cfg,
                    beam=5,
                    n_steps=tcfg.n_steps,
                    temperature=temp,
                )
            ),
            3,
        )
        for name, v in (("value", fitted), ("blind", None))
    }
    say(f"B=5, expansions at T={temp}:", acc)
