"""Implicit-value diagnostic (third session, seed 0): does the OREO policy's own implicit value rank
samples within a prompt, where the learned value head does not?

OREO's soft Bellman equation with a sparse terminal reward (r_t = 0 before the end) gives
V(s_{t+1}) = V(s_t) + beta log(pi/pi_ref)(a_t | s_t), so along any path
V(s_t) = V(s_0) + beta sum_{i<t} log(pi/pi_ref)(a_i | s_i) ("From r to Q*", arXiv 2404.12358):
the policy itself carries a value, up to the per-prompt constant V(s_0), which cancels when
candidates of one prompt are compared. This script trains seed 0 with the benchmark's
configuration (SFT -> offline samples -> OREO token level), then compares on held-out prompts
(a) best-of-8 by the learned value, by the implicit value and by the policy's log-likelihood
against a random sample, and (b) step beam search guided by the implicit value against greedy.
Run: nice -n 10 /usr/bin/time .venv/bin/python results/oreo/implicit_value_diagnostic.py
"""

import jax
import jax.numpy as jnp
from diag_common import say, sft_offline_oreo

from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo import search
from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo import train as TR

cfg = TR.OreoConfig()
mcfg = cfg.model
tcfg = cfg.task_with(cfg.task.n_steps)
ks = jax.random.split(jax.random.key(0), 10)
sft, off, pol, val = sft_offline_oreo(cfg, ks)
say("trained")


def implicit_values(tokens, plen):
    """[L]: out[j] = beta * sum_{plen-1 <= i < j} log(pi/pi_ref)(tokens[i+1] | tokens[:i+1])."""
    lp, _ = M.token_logps(pol, tokens, mcfg)
    lr, _ = M.token_logps(sft, tokens, mcfg)
    d = jnp.where(jnp.arange(lp.shape[0]) >= plen - 1, lp - lr, 0.0)
    return cfg.beta * jnp.concatenate([jnp.zeros(1), jnp.cumsum(d)])


@jax.jit
def ranking(tokens, plen, length, reward):
    at = jnp.clip(length - 2, 0, tokens.shape[1] - 1)
    pick_at = lambda v: jnp.take_along_axis(v, at[:, None], 1)[:, 0]
    learned = pick_at(jax.vmap(lambda t: M.values(val, t, mcfg))(tokens))
    implicit = pick_at(jax.vmap(implicit_values)(tokens, plen))
    lp, _ = jax.vmap(lambda t: M.token_logps(pol, t, mcfg))(tokens)
    i = jnp.arange(lp.shape[1])
    resp = (i[None] >= plen[:, None] - 1) & (i[None] < length[:, None] - 1)
    loglik = jnp.sum(jnp.where(resp, lp, 0.0), -1)
    r = reward.reshape(-1, 8)
    best = lambda s: jnp.mean(jnp.take_along_axis(r, jnp.argmax(s.reshape(-1, 8), -1)[:, None], 1))
    return {
        "best_of_8_learned_value": best(learned),
        "best_of_8_implicit_value": best(implicit),
        "best_of_8_loglik": best(loglik),
        "random_sample": jnp.mean(r),
        "oracle": jnp.mean(jnp.max(r, -1)),
    }


held = T.prompt_batch(ks[7], 512, tcfg)
dh, _ = TR.collect(pol, held, ks[8], cfg, k=8, temperature=1.0)
say(
    "held-out ranking (512 prompts x 8 samples, T=1):",
    {
        k: round(float(v), 3)
        for k, v in ranking(dh.tokens, dh.prompt_len, dh.length, dh.reward).items()
    },
)


def beam_tokens(tokens, plen, key, *, beam):
    step = lambda c, t, p: M.decode_step(pol, c, t, p, mcfg)[::2]
    pre = lambda t: M.prefill(pol, t, mcfg)

    def one(args):
        tok, pl, k = args
        return search.step_beam_search(
            step,
            pre,
            lambda t: implicit_values(t, pl),
            tok,
            pl,
            k,
            beam_size=beam,
            max_steps=cfg.task.n_steps + 2,
            max_step_tokens=5,
            temperature=cfg.beam_temperature,
        )[0]

    return jax.lax.map(one, (tokens, plen, jax.random.split(key, tokens.shape[0])), batch_size=64)


ev = T.prompt_batch(ks[9], 256, tcfg)
say("greedy (256 prompts):", round(float(TR.greedy_accuracy(pol, ev, cfg)), 3))
for b in (1, 3, 5, 7):
    toks = jax.jit(beam_tokens, static_argnames="beam")(
        ev.tokens, ev.prompt_len, jax.random.key(5), beam=b
    )
    acc = jnp.mean(TR._reward_batch(toks, ev.prompt_len, ev.answer))
    say(f"implicit-value beam B={b} (256 prompts):", round(float(acc), 3))
