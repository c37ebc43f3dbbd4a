"""Training and evaluation under ``jit``: SFT, rejection-sampling FT, DPO, OREO (token / step
level, iterative) and test-time search, on the arithmetic-chain task.

Each trainer is ``make_*(cfg) -> train(key, params..., data) -> (params..., losses)`` with a
``lax.scan`` over optimisation steps inside one ``jit``; minibatches are drawn from an offline
data set by index. The orchestration (which data feeds which trainer) is
:func:`run_pipeline`, a thin Python function over these jitted pieces.

OREO (arXiv 2412.16145, Alg. 1): per minibatch, first a critic step on Eq. 8, then an actor step
on Eq. 9 + ``alpha * KL(pi || pi_ref)`` with the value held fixed (the minibatch's values from
before the critic step, as in the authors' ``pcl_trainer.py``); ``pi_ref`` is the SFT model and
the value model is the SFT trunk with a zero-initialised scalar head.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from jaxsel.rl.oreo import consistency, losses, search
from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo._compile import FAST_COMPILE

Params = dict[str, Any]

__all__ = [
    "FAST_COMPILE",
    "OfflineData",
    "OreoConfig",
    "TrainOut",
    "beam_accuracy",
    "collect",
    "dpo_pairs",
    "greedy_accuracy",
    "make_dpo",
    "make_oreo",
    "make_sft",
    "make_train",
    "make_value_fit",
    "ranking_stats",
    "run_pipeline",
    "run_self_consistency",
    "self_consistency_accuracy",
    "uninformative_score",
    "value_init",
    "value_ranking",
]


@dataclasses.dataclass(frozen=True)
class OreoConfig:
    """Everything that defines one experiment (sizes static, so each trainer jits once)."""

    task: T.TaskConfig = dataclasses.field(
        default_factory=lambda: T.TaskConfig(n_steps=4, modulus=7, max_len=32)
    )
    eval_long_steps: int = 6  # longer-than-training chains for evaluation
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    # SFT data: random step errors and a systematic '*' -> '+' slip
    p_err: float = 0.05
    p_confuse: float = 0.6
    sft_examples: int = 8192
    sft_steps: int = 800
    sft_lr: float = 2e-3
    batch_size: int = 64
    # offline RL data: K samples per prompt from the current policy
    n_prompts: int = 512
    k_samples: int = 8
    temperature: float = 1.0
    rl_steps: int = 200
    lr: float = 3e-4
    critic_lr: float = 1e-3
    beta: float = 0.03
    kl_coef: float = 0.01
    kl_coef_step: float = 0.1
    dpo_beta: float = 0.1
    oreo_rounds: int = 2
    n_eval: int = 512
    n_eval_beam: int = 256  # beam search costs ~B^2 samples per prompt: evaluated on a prefix
    # critic-only fit of the final policy's value for beam search (make_value_fit); on 1024
    # prompts x 8 for 1500 steps (~12 epochs) it memorised its data (within-prompt AUC 0.59),
    # on 4096 x 8 for 3000 steps (~3 epochs) it ranks (3-seed AUC 0.79, results/oreo/README.md)
    value_steps: int = 3000
    value_lr: float = 1e-3
    value_prompts: int = 4096
    # initialise the fitted value from the final policy's trunk (which no longer carries the SFT
    # model's preference for the '*'->'+' slip) rather than from the jointly trained value
    value_from_policy: bool = True
    # expansions of value-guided beam search; at 0.7 a blind ranking starts 0.10 below greedy
    beam_temperature: float = 0.3
    n_eval_sc: int = 2048  # held-out prompts for majority vote vs Soft-SC (sampling is cheap)
    # compile without XLA's expensive backend passes: ~3x faster compiles, slower steps; for
    # tests and the quick smoke run, where compilation dominates
    fast_compile: bool = False

    @classmethod
    def quick(cls, **overrides: Any) -> OreoConfig:
        """A tiny configuration that runs the whole pipeline in about a minute (CI smoke test)."""
        small = dict(
            d_model=32,
            n_layers=1,
            n_heads=2,
            d_ff=64,
            sft_examples=512,
            sft_steps=30,
            n_prompts=32,
            k_samples=4,
            rl_steps=5,
            oreo_rounds=2,
            n_eval=32,
            batch_size=16,
            eval_long_steps=5,
            n_eval_beam=16,
            value_steps=5,
            value_prompts=32,
            n_eval_sc=32,
            fast_compile=True,
        )
        small.update(overrides)
        return cls(**small)

    @property
    def model(self) -> M.DecoderConfig:
        long = T.prompt_length(self.eval_long_steps) + T.response_length(self.eval_long_steps)
        return M.DecoderConfig(
            vocab_size=T.VOCAB_SIZE,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
            max_len=max(self.task.max_len, long),
        )

    def task_with(self, n_steps: int) -> T.TaskConfig:
        return dataclasses.replace(self.task, n_steps=n_steps, max_len=self.model.max_len)


class OfflineData(NamedTuple):
    """Sampled responses ``[N, ...]``: buffers, layout, per-response reward and prompt id."""

    tokens: Array
    prompt_len: Array
    length: Array
    reward: Array
    prompt_id: Array


def _jit(cfg: OreoConfig, fn: Callable[..., Any], **kw: Any) -> Callable[..., Any]:
    return jax.jit(fn, compiler_options=FAST_COMPILE if cfg.fast_compile else None, **kw)


_reward_batch = jax.jit(jax.vmap(T.reward))


@functools.cache
def _jitted(fn: Callable[..., Any], fast: bool, static: tuple[str, ...]) -> Callable[..., Any]:
    return jax.jit(fn, static_argnames=static, compiler_options=FAST_COMPILE if fast else None)


def _adam(lr: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))


def _masks(tokens: Array, prompt_len: Array, length: Array) -> tuple[Array, Array]:
    return jax.vmap(T.sequence_masks)(tokens, prompt_len, length)


def _logps(params: Params, tokens: Array, mcfg: M.DecoderConfig) -> tuple[Array, Array]:
    return jax.vmap(lambda t: M.token_logps(params, t, mcfg))(tokens)


def value_init(policy: Params, cfg: OreoConfig) -> Params:
    """Value model = a copy of the policy trunk + zero-initialised scalar head (paper Sec. 4)."""
    del cfg
    v = jax.tree.map(jnp.array, policy)
    v["value_head"] = {"w": jnp.zeros_like(policy["final_norm"]), "b": jnp.zeros(())}
    return v


def _minibatch(key: Array, weights: Array, n: int) -> Array:
    return jax.random.choice(key, weights.shape[0], (n,), p=weights / jnp.sum(weights))


# ---------------------------------------------------------------------------------------------
# SFT / rejection sampling


@functools.cache
def make_sft(cfg: OreoConfig, *, steps: int, lr: float) -> Callable[..., tuple[Params, Array]]:
    """Weighted maximum likelihood on responses; weights=1 is SFT, weights=reward is rejection
    sampling fine-tuning (RFT)."""
    mcfg, opt = cfg.model, _adam(lr)

    def loss_fn(p, tokens, plen, length):
        mask, _ = _masks(tokens, plen, length)
        lp, _ = _logps(p, tokens, mcfg)
        per_seq = -jnp.sum(lp * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
        return jnp.mean(per_seq)

    def train(
        key: Array, params: Params, tokens: Array, plen: Array, length: Array, weights: Array
    ) -> tuple[Params, Array]:
        def step(carry, k):
            p, s = carry
            i = _minibatch(k, weights, cfg.batch_size)
            loss, g = jax.value_and_grad(loss_fn)(p, tokens[i], plen[i], length[i])
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (params, _), ls = jax.lax.scan(
            step, (params, opt.init(params)), jax.random.split(key, steps)
        )
        return params, ls

    return _jit(cfg, train)


# ---------------------------------------------------------------------------------------------
# sampling offline data


def _sample_k(params, tokens, plen, key, *, mcfg, k, temperature):
    step = lambda c, t, p: M.decode_step(params, c, t, p, mcfg)[::2]

    def one(tok, pl, kk):
        return search.sample(step, M.init_cache(mcfg), tok, pl, kk, temperature=temperature)

    n = tokens.shape[0]
    keys = jax.random.split(key, n * k)
    rep = lambda x: jnp.repeat(x, k, axis=0)
    return jax.vmap(one)(rep(tokens), rep(plen), keys)


def collect(
    params: Params, prompts: T.Batch, key: Array, cfg: OreoConfig, *, k: int, temperature: float
) -> tuple[OfflineData, search.Sample]:
    """``k`` sampled responses per prompt, scored 0/1 by the exact checker."""
    out = _jitted(_sample_k, cfg.fast_compile, ("mcfg", "k", "temperature"))(
        params,
        prompts.tokens,
        prompts.prompt_len,
        key,
        mcfg=cfg.model,
        k=k,
        temperature=temperature,
    )
    rep = lambda x: jnp.repeat(x, k, axis=0)
    plen = rep(prompts.prompt_len)
    r = _reward_batch(out.tokens, plen, rep(prompts.answer))
    pid = rep(jnp.arange(prompts.tokens.shape[0]))
    return OfflineData(out.tokens, plen, out.length, r, pid), out


def dpo_pairs(data: OfflineData, k: int) -> tuple[Array, Array, Array]:
    """Per prompt, the first correct and the first wrong sample: ``(chosen, rejected, valid)``."""
    r = data.reward.reshape(-1, k)
    base = jnp.arange(r.shape[0]) * k
    chosen = base + jnp.argmax(r > 0.5, -1)
    rejected = base + jnp.argmax(r < 0.5, -1)
    valid = jnp.any(r > 0.5, -1) & jnp.any(r < 0.5, -1)
    return chosen, rejected, valid


# ---------------------------------------------------------------------------------------------
# DPO


@functools.cache
def make_dpo(cfg: OreoConfig, *, steps: int) -> Callable[..., tuple[Params, Array]]:
    """DPO on (correct, wrong) pairs of offline samples, reference = the initial policy."""
    mcfg, opt = cfg.model, _adam(cfg.lr)

    def seq_logp(p, tokens, plen, length):
        mask, _ = _masks(tokens, plen, length)
        lp, _ = _logps(p, tokens, mcfg)
        return lp, mask

    def loss_fn(p, ref, d: OfflineData, ic, ir):
        lc, mc = seq_logp(p, d.tokens[ic], d.prompt_len[ic], d.length[ic])
        lr_, mr = seq_logp(p, d.tokens[ir], d.prompt_len[ir], d.length[ir])
        rc, _ = seq_logp(ref, d.tokens[ic], d.prompt_len[ic], d.length[ic])
        rr, _ = seq_logp(ref, d.tokens[ir], d.prompt_len[ir], d.length[ir])
        rc, rr = jax.lax.stop_gradient(rc), jax.lax.stop_gradient(rr)
        f = lambda a, b, c, e, m1, m2: losses.dpo_loss(a, b, c, e, m1, m2, beta=cfg.dpo_beta)
        return jnp.mean(jax.vmap(f)(lc, rc, lr_, rr, mc, mr))

    def train(key, params, ref, data: OfflineData, chosen, rejected, valid):
        w = valid.astype(jnp.float32) + 1e-9

        def step(carry, k):
            p, s = carry
            j = _minibatch(k, w, cfg.batch_size)
            loss, g = jax.value_and_grad(loss_fn)(p, ref, data, chosen[j], rejected[j])
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (params, _), ls = jax.lax.scan(
            step, (params, opt.init(params)), jax.random.split(key, steps)
        )
        return params, ls

    return _jit(cfg, train)


# ---------------------------------------------------------------------------------------------
# OREO


@functools.cache
def make_oreo(cfg: OreoConfig, *, steps: int, step_level: bool) -> Callable[..., Any]:
    """OREO actor-critic training on offline data (token- or step-level MDP)."""
    mcfg = cfg.model
    opt_pi, opt_v = _adam(cfg.lr), _adam(cfg.critic_lr)
    alpha = cfg.kl_coef_step if step_level else cfg.kl_coef
    beta = cfg.beta

    def value_loss(vp, lp, rlp, d: OfflineData, mask, starts):
        v = jax.vmap(lambda t: M.values(vp, t, mcfg))(d.tokens)[:, :-1]
        if step_level:
            f = lambda a, b, c, r, m, s: losses.oreo_step_value_loss(a, b, c, r, s, m, beta=beta)
        else:
            f = lambda a, b, c, r, m, s: losses.oreo_value_loss(a, b, c, r, m, beta=beta)
        return jnp.mean(jax.vmap(f)(v, lp, rlp, d.reward, mask, starts)), v

    def policy_loss(lp, logits, v, rlp, rlogits, d: OfflineData, mask, starts):
        if step_level:
            f = lambda a, b, c, r, m, s: losses.oreo_step_policy_loss(a, b, c, r, s, m, beta=beta)
        else:
            f = lambda a, b, c, r, m, s: losses.oreo_policy_loss(a, b, c, r, m, beta=beta)
        pl = jnp.mean(jax.vmap(f)(lp, rlp, v, d.reward, mask, starts))
        kl = jnp.mean(jax.vmap(losses.kl_regularizer)(logits, rlogits, mask))
        return pl + alpha * kl, (pl, kl)

    def train(key, policy, value, ref, data: OfflineData):
        def step(carry, k):
            pp, vp, sp, sv = carry
            i = _minibatch(k, jnp.ones_like(data.reward), cfg.batch_size)
            d = jax.tree.map(lambda x: x[i], data)
            mask, starts = _masks(d.tokens, d.prompt_len, d.length)
            rlp, rlogits = jax.lax.stop_gradient(_logps(ref, d.tokens, mcfg))
            # one policy forward serves both steps: the critic sees its log-probs as constants,
            # the actor pulls its loss gradient back through it
            (lp, logits), pull = jax.vjp(lambda p: _logps(p, d.tokens, mcfg), pp)
            # critic first (Eq. 8, log-ratios fixed) ...
            (lv, v), gv = jax.value_and_grad(value_loss, has_aux=True)(
                vp, jax.lax.stop_gradient(lp), rlp, d, mask, starts
            )
            u, sv = opt_v.update(gv, sv, vp)
            vp = optax.apply_updates(vp, u)
            # ... then the actor with the value held fixed (Eq. 9 + alpha KL); like the authors'
            # code it uses the values computed before this critic update
            (_, (lpi, kl)), (g_lp, g_logits) = jax.value_and_grad(
                policy_loss, argnums=(0, 1), has_aux=True
            )(lp, logits, jax.lax.stop_gradient(v), rlp, rlogits, d, mask, starts)
            (gp,) = pull((g_lp, g_logits))
            u, sp = opt_pi.update(gp, sp, pp)
            pp = optax.apply_updates(pp, u)
            return (pp, vp, sp, sv), jnp.stack([lv, lpi, kl])

        init = (policy, value, opt_pi.init(policy), opt_v.init(value))
        (policy, value, _, _), ls = jax.lax.scan(step, init, jax.random.split(key, steps))
        return policy, value, ls

    return _jit(cfg, train)


@functools.cache
def make_value_fit(cfg: OreoConfig, *, steps: int, lr: float) -> Callable[..., Any]:
    """Critic-only OREO training (Eq. 8 with the policy held fixed) on offline samples.

    The joint actor-critic run gives the critic as many updates as the actor, which leaves a
    value too weak to rank partial solutions for beam search (it must tell a wrong intermediate
    result from a right one). This fits the value of the *final* policy on samples of that
    policy, with its own step count and learning rate; the policy is unchanged.
    """
    mcfg, opt = cfg.model, _adam(lr)

    def loss_fn(vp, lp, rlp, d: OfflineData, mask):
        v = jax.vmap(lambda t: M.values(vp, t, mcfg))(d.tokens)[:, :-1]
        f = lambda a, b, c, r, m: losses.oreo_value_loss(a, b, c, r, m, beta=cfg.beta)
        return jnp.mean(jax.vmap(f)(v, lp, rlp, d.reward, mask))

    def train(key: Array, value: Params, policy: Params, ref: Params, data: OfflineData):
        # the log-ratios are constants of the data: compute them once, not every step
        lp, _ = _logps(policy, data.tokens, mcfg)
        rlp, _ = _logps(ref, data.tokens, mcfg)
        mask, _ = _masks(data.tokens, data.prompt_len, data.length)

        def step(carry, k):
            vp, s = carry
            i = _minibatch(k, jnp.ones_like(data.reward), cfg.batch_size)
            d = jax.tree.map(lambda x: x[i], data)
            loss, g = jax.value_and_grad(loss_fn)(vp, lp[i], rlp[i], d, mask[i])
            u, s = opt.update(g, s, vp)
            return (optax.apply_updates(vp, u), s), loss

        (value, _), ls = jax.lax.scan(step, (value, opt.init(value)), jax.random.split(key, steps))
        return value, ls

    return _jit(cfg, train)


# ---------------------------------------------------------------------------------------------
# evaluation


def greedy_accuracy(params: Params, prompts: T.Batch, cfg: OreoConfig) -> Array:
    """Fraction of prompts solved by greedy decoding."""
    out = _jitted(_sample_k, cfg.fast_compile, ("mcfg", "k", "temperature"))(
        params,
        prompts.tokens,
        prompts.prompt_len,
        jax.random.key(0),
        mcfg=cfg.model,
        k=1,
        temperature=0.0,
    )
    return jnp.mean(_reward_batch(out.tokens, prompts.prompt_len, prompts.answer))


def _beam(policy, value, tokens, plen, key, *, mcfg, beam, max_steps, chunk, temperature):
    step = lambda c, t, p: M.decode_step(policy, c, t, p, mcfg)[::2]
    pre = lambda t: M.prefill(policy, t, mcfg)
    if value is None:  # chance level: uninformative_score of every prefix, blind to correctness
        w = _blind_weights(tokens.shape[1])
        val = lambda t: jnp.cumsum(t.astype(jnp.float32) * w)
    else:
        val = lambda t: M.values(value, t, mcfg)

    def one(args):
        tok, pl, k = args
        return search.step_beam_search(
            step,
            pre,
            val,
            tok,
            pl,
            k,
            beam_size=beam,
            max_steps=max_steps,
            max_step_tokens=5,
            temperature=temperature,
        )[0]

    keys = jax.random.split(key, tokens.shape[0])
    return jax.lax.map(one, (tokens, plen, keys), batch_size=chunk)


def beam_accuracy(
    policy: Params,
    value: Params | None,
    prompts: T.Batch,
    key: Array,
    cfg: OreoConfig,
    *,
    beam: int,
    n_steps: int,
    temperature: float = 1.0,
) -> Array:
    """Accuracy of value-guided step beam search with beam size ``beam`` (expansions sampled at
    ``temperature``). ``value=None`` ranks by a fixed random function of the prefix instead of
    V: the same search with a value that knows nothing, i.e. its chance level."""
    static = ("mcfg", "beam", "max_steps", "chunk", "temperature")
    toks = _jitted(_beam, cfg.fast_compile, static)(
        policy,
        value,
        prompts.tokens,
        prompts.prompt_len,
        key,
        mcfg=cfg.model,
        beam=beam,
        max_steps=n_steps + 2,
        chunk=64,
        temperature=temperature,
    )
    return jnp.mean(_reward_batch(toks, prompts.prompt_len, prompts.answer))


def _value_ranking(value, tokens, plen, length, reward, *, mcfg, k):
    # state before the final <eos>: the last state OREO trains V on, the one beam search reads
    v = jax.vmap(lambda t: M.values(value, t, mcfg))(tokens)
    at = jnp.clip(length - 2, 0, tokens.shape[1] - 1)
    v_end = jnp.take_along_axis(v, at[:, None], 1)[:, 0]
    vc, rc = v_end - jnp.mean(v_end), reward - jnp.mean(reward)
    corr = jnp.sum(vc * rc) / jnp.sqrt(jnp.sum(vc**2) * jnp.sum(rc**2) + 1e-12)
    # chance level of "best of k by a score of the response": a random function of the tokens
    # (equal on identical responses). The right samples of a prompt are mostly copies of one
    # another and the wrong ones differ, so such a score lands on a right one less often than a
    # random sample does (a value can be below random_sample and still above chance).
    uninformative = uninformative_score(tokens)
    st = ranking_stats(v_end, reward, k=k)
    return {
        "best_of_k_by_value": st.pop("best_of_k"),
        **st,
        "best_of_k_uninformative": ranking_stats(uninformative, reward, k=k)["best_of_k"],
        "corr_value_reward": corr,
    }


def uninformative_score(tokens: Array) -> Array:
    """A fixed random function of each response ``tokens [N, L] -> [N]``: equal on identical
    responses, (almost surely) different otherwise; it knows nothing about correctness."""
    return tokens.astype(jnp.float32) @ _blind_weights(tokens.shape[-1])


def _blind_weights(length: int) -> Array:
    """The fixed random weights of :func:`uninformative_score` (and of ``beam_accuracy(None)``,
    which scores every prefix with them)."""
    return jax.random.normal(jax.random.key(0), (length,))


def ranking_stats(score: Array, reward: Array, *, k: int) -> dict[str, Array]:
    """How well ``score [N]`` ranks the ``k`` consecutive samples of each prompt (``reward [N]``
    in {0, 1}): accuracy of the best-of-``k`` by score, of a random sample, of the oracle, and
    the within-prompt AUC ``P(score(right) > score(wrong))`` over (right, wrong) pairs of the
    same prompt (ties count 1/2; NaN without such pairs)."""
    s, r = score.reshape(-1, k), reward.reshape(-1, k)
    pick = jnp.argmax(s, -1)
    right = r[:, :, None] > 0.5
    wrong = r[:, None, :] < 0.5
    pairs = right & wrong
    gt = (s[:, :, None] > s[:, None, :]) + 0.5 * (s[:, :, None] == s[:, None, :])
    return {
        "best_of_k": jnp.mean(jnp.take_along_axis(r, pick[:, None], 1)[:, 0]),
        "random_sample": jnp.mean(r),
        "oracle_any_correct": jnp.mean(jnp.max(r, -1)),
        # NaN when no prompt has both a right and a wrong sample
        "within_prompt_auc": jnp.sum(gt * pairs)
        / jnp.where(jnp.any(pairs), jnp.sum(pairs), jnp.nan),
    }


def value_ranking(
    policy: Params, value: Params, prompts: T.Batch, key: Array, cfg: OreoConfig, *, k: int
) -> dict[str, float]:
    """Does ``V`` rank samples better than chance? Over ``k`` policy samples per prompt, scored
    by the value of the state before ``<eos>``: best-of-``k`` by V, a random sample, the oracle,
    best-of-``k`` by an uninformative score (a random function of the response: the chance level
    of any best-of-``k`` by a score), the within-prompt AUC (:func:`ranking_stats`) and the
    correlation of V with the 0/1 reward across all samples."""
    data, _ = collect(policy, prompts, key, cfg, k=k, temperature=cfg.temperature)
    out = _jitted(_value_ranking, cfg.fast_compile, ("mcfg", "k"))(
        value, data.tokens, data.prompt_len, data.length, data.reward, mcfg=cfg.model, k=k
    )
    return {n: float(x) for n, x in out.items()}


def self_consistency_accuracy(
    params: Params, prompts: T.Batch, key: Array, cfg: OreoConfig, *, k: int
) -> dict[str, float]:
    """Majority vote vs Soft Self-Consistency (mean / min / mean-log; arXiv 2402.13212) and our
    likelihood-weighted vote (:func:`consistency.soft_vote`) over ``k`` samples."""
    data, out = collect(params, prompts, key, cfg, k=k, temperature=cfg.temperature)
    mask, _ = _masks(data.tokens, data.prompt_len, data.length)
    answers = jax.vmap(T.answer_of)(data.tokens, data.prompt_len).reshape(-1, k)
    lp = out.logps.reshape(-1, k, out.logps.shape[-1])
    mask = mask.reshape(lp.shape)
    res = {"majority": jax.vmap(consistency.majority_vote)(answers)}
    for agg in ("mean", "min", "mean_log"):
        f = lambda a, l, m, agg=agg: consistency.soft_self_consistency(a, l, m, aggregation=agg)
        res[f"soft_sc_{agg}"] = jax.vmap(f)(answers, lp, mask)
    for agg in ("mean", "min"):
        f = lambda a, l, m, agg=agg: consistency.soft_vote(a, l, m, aggregation=agg)
        res[f"soft_vote_{agg}"] = jax.vmap(f)(answers, lp, mask)
    return {name: float(jnp.mean(v == prompts.answer)) for name, v in res.items()}


# ---------------------------------------------------------------------------------------------
# purejaxrl-style: one seed = one key, the whole SFT -> sample -> OREO run in one program


class TrainOut(NamedTuple):
    """What :func:`make_train`'s ``train(key)`` returns (leading seed axis when vmapped)."""

    sft: Params
    policy: Params
    value: Params
    sft_loss: Array  # [sft_steps]
    oreo_loss: Array  # [rl_steps, 3]: value loss, policy loss, KL
    offline_reward: Array  # mean 0/1 reward of the SFT samples OREO learns from
    greedy_sft: Array  # held-out greedy accuracy
    greedy_oreo: Array


def make_train(cfg: OreoConfig, *, step_level: bool = False) -> Callable[[Array], TrainOut]:
    """``make_train(cfg) -> train(key)``: SFT data -> SFT -> K samples per prompt -> OREO.

    ``train`` is a pure function of the PRNG key, so ``jax.jit(jax.vmap(train))(keys)`` trains
    one independent run per seed in a single program (the baselines and test-time search of the
    benchmark stay in :func:`run_pipeline`).
    """
    # the caller jits the whole program: XLA options cannot be set on nested jits
    cfg = dataclasses.replace(cfg, fast_compile=False)
    tcfg = cfg.task_with(cfg.task.n_steps)
    sft = make_sft(cfg, steps=cfg.sft_steps, lr=cfg.sft_lr)
    oreo = make_oreo(cfg, steps=cfg.rl_steps, step_level=step_level)

    def train(key: Array) -> TrainOut:
        ks = jax.random.split(key, 7)
        examples = lambda k: T.sft_examples(k, tcfg, p_err=cfg.p_err, p_confuse=cfg.p_confuse)
        data, _ = jax.vmap(examples)(jax.random.split(ks[0], cfg.sft_examples))
        p0 = M.init_params(ks[1], cfg.model)
        w = jnp.ones((cfg.sft_examples,))
        sft_p, sft_loss = sft(ks[2], p0, data.tokens, data.prompt_len, data.length, w)
        prompts = jax.vmap(lambda k: T.prompts(k, tcfg))(jax.random.split(ks[3], cfg.n_prompts))
        off, _ = collect(sft_p, prompts, ks[4], cfg, k=cfg.k_samples, temperature=cfg.temperature)
        pol, val, oreo_loss = oreo(ks[5], sft_p, value_init(sft_p, cfg), sft_p, off)
        held = jax.vmap(lambda k: T.prompts(k, tcfg))(jax.random.split(ks[6], cfg.n_eval))
        return TrainOut(
            sft_p,
            pol,
            val,
            sft_loss,
            oreo_loss,
            jnp.mean(off.reward),
            greedy_accuracy(sft_p, held, cfg),
            greedy_accuracy(pol, held, cfg),
        )

    return train


# ---------------------------------------------------------------------------------------------
# the whole experiment


def run_pipeline(
    cfg: OreoConfig,
    key: Array,
    *,
    beams: tuple[int, ...] = (1, 3, 5, 7),
    sc_k: int = 8,
    checkpoint: Callable[[str, Any], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """SFT -> sample K per prompt -> {SFT, RFT, DPO, OREO token, OREO step, iterative OREO}
    -> greedy accuracy on held-out prompts (training length and longer chains); a critic-only
    fit of the final OREO policy's value (:func:`make_value_fit`), how well each value ranks
    samples (:func:`value_ranking`), value-guided beam search with the fitted value, and majority
    vote vs Soft-SC on samples of the SFT and of the final OREO policy.

    ``checkpoint(name, make) -> tree`` lets a caller return a stored result of phase ``name``
    (resume) or call ``make()`` and store it; by default it just calls ``make()``. Every phase
    draws its own key, so a resumed run reproduces the uninterrupted one.
    """
    ck = checkpoint or (lambda name, make: make())
    say = progress or (lambda s: None)
    ks = dict(
        zip(
            [
                "sft_data",
                "sft",
                "prompts",
                "collect",
                "rft",
                "dpo",
                "oreo",
                "oreo_step",
                "iter",
                "eval",
                "eval_long",
                "beam",
                "sc",
                "init",
                "value_fit",
                "rank",
            ],
            jax.random.split(key, 16),
        )
    )
    mcfg = cfg.model
    tcfg = cfg.task_with(cfg.task.n_steps)

    say("sft")

    def do_sft():
        data, _ = T.sft_batch(ks["sft_data"], cfg.sft_examples, tcfg, cfg.p_err, cfg.p_confuse)
        p0 = M.init_params_jit(ks["init"], mcfg)
        w = jnp.ones((cfg.sft_examples,))
        sft = make_sft(cfg, steps=cfg.sft_steps, lr=cfg.sft_lr)
        return sft(ks["sft"], p0, data.tokens, data.prompt_len, data.length, w)[0]

    sft_params = ck("sft", do_sft)

    prompts = T.prompt_batch(ks["prompts"], cfg.n_prompts, tcfg)
    data, _ = collect(
        sft_params, prompts, ks["collect"], cfg, k=cfg.k_samples, temperature=cfg.temperature
    )
    stats = {"offline_reward": float(jnp.mean(data.reward))}

    models: dict[str, Params] = {"sft": sft_params}
    say("rft")
    rft = make_sft(cfg, steps=cfg.rl_steps, lr=cfg.lr)
    models["rft"] = ck(
        "rft",
        lambda: rft(
            ks["rft"], sft_params, data.tokens, data.prompt_len, data.length, data.reward + 1e-9
        )[0],
    )
    say("dpo")
    dpo = make_dpo(cfg, steps=cfg.rl_steps)
    pairs = dpo_pairs(data, cfg.k_samples)
    models["dpo"] = ck("dpo", lambda: dpo(ks["dpo"], sft_params, sft_params, data, *pairs)[0])

    values: dict[str, Params] = {}
    for name, step_level in (("oreo", False), ("oreo_step", True)):
        say(name)
        tr = make_oreo(cfg, steps=cfg.rl_steps, step_level=step_level)

        def do(tr=tr, name=name):
            pol, val, _ = tr(ks[name], sft_params, value_init(sft_params, cfg), sft_params, data)
            return {"policy": pol, "value": val}

        out = ck(name, do)
        models[name], values[name] = out["policy"], out["value"]

    # iterative OREO: re-collect with the current policy, continue training (ref stays SFT)
    tr = make_oreo(cfg, steps=cfg.rl_steps, step_level=False)  # cached: compiled above
    pol, val = models["oreo"], values["oreo"]
    for r in range(1, cfg.oreo_rounds):
        say(f"oreo_iter{r}")
        kr = jax.random.fold_in(ks["iter"], r)

        def do(pol=pol, val=val, kr=kr):
            pr = T.prompt_batch(jax.random.fold_in(kr, 0), cfg.n_prompts, tcfg)
            d, _ = collect(
                pol,
                pr,
                jax.random.fold_in(kr, 1),
                cfg,
                k=cfg.k_samples,
                temperature=cfg.temperature,
            )
            p2, v2, _ = tr(jax.random.fold_in(kr, 2), pol, val, sft_params, d)
            return {"policy": p2, "value": v2}

        out = ck(f"oreo_iter{r}", do)
        pol, val = out["policy"], out["value"]
    if cfg.oreo_rounds > 1:
        models["oreo_iter"], values["oreo_iter"] = pol, val

    say("eval")
    held = T.prompt_batch(ks["eval"], cfg.n_eval, tcfg)
    ltcfg = cfg.task_with(cfg.eval_long_steps)
    long = T.prompt_batch(ks["eval_long"], cfg.n_eval, ltcfg)
    res: dict[str, Any] = {"stats": stats, "greedy": {}, "greedy_long": {}}
    for name, p in models.items():
        res["greedy"][name] = float(greedy_accuracy(p, held, cfg))
        res["greedy_long"][name] = float(greedy_accuracy(p, long, cfg))
    best = "oreo_iter" if "oreo_iter" in models else "oreo"
    say("value_fit")

    def do_fit():
        kf = ks["value_fit"]
        pr = T.prompt_batch(jax.random.fold_in(kf, 0), cfg.value_prompts, tcfg)
        d, _ = collect(
            models[best],
            pr,
            jax.random.fold_in(kf, 1),
            cfg,
            k=cfg.k_samples,
            temperature=cfg.temperature,
        )
        fit = make_value_fit(cfg, steps=cfg.value_steps, lr=cfg.value_lr)
        v0 = value_init(models[best], cfg) if cfg.value_from_policy else values[best]
        return fit(jax.random.fold_in(kf, 2), v0, models[best], sft_params, d)[0]

    fitted = ck("value_fit", do_fit) if cfg.value_steps > 0 else values[best]
    nb = min(cfg.n_eval_beam, cfg.n_eval)
    held_b = jax.tree.map(lambda x: x[:nb], held)
    # is the value any good at ranking finished samples? (chance = best_of_k_uninformative); on all
    # held-out prompts: sampling is cheap and best-of-K on a few dozen prompts is noise
    res["value_ranking"] = {
        name: value_ranking(models[best], v, held, ks["rank"], cfg, k=cfg.k_samples)
        for name, v in (("joint", values[best]), ("fitted", fitted))
    }
    say("beam")

    def beam_acc(value: Params | None, b: int) -> float:
        return float(
            beam_accuracy(
                models[best], value, held_b, ks["beam"], cfg, beam=b, n_steps=tcfg.n_steps,
                temperature=cfg.beam_temperature,
            )
        )  # fmt: skip

    res["beam"] = {b: beam_acc(fitted, b) for b in beams}
    # chance level of the search itself: same beams, ranked by a score blind to correctness
    res["beam_uninformative"] = {b: beam_acc(None, b) for b in beams if b == 5}
    res["greedy_beam_subset"] = float(greedy_accuracy(models[best], held_b, cfg))
    res["beam_policy"] = best
    say("sc")
    held_sc = T.prompt_batch(jax.random.fold_in(ks["sc"], 0), cfg.n_eval_sc, tcfg)
    res["self_consistency"] = {
        name: self_consistency_accuracy(
            models[name], held_sc, jax.random.fold_in(ks["sc"], 1), cfg, k=sc_k
        )
        for name in ("sft", best)
    }
    return res


def run_self_consistency(cfg: OreoConfig, key: Array, *, sc_k: int = 8) -> dict[str, Any]:
    """Majority vote vs Soft-SC only: SFT -> ``k_samples`` per prompt -> one round of token-level
    OREO -> :func:`self_consistency_accuracy` on ``n_eval_sc`` held-out prompts for samples of
    the SFT and of the OREO policy (plus greedy accuracy on ``n_eval`` prompts, for context).

    For task variants where only answer selection is compared (e.g. random instead of
    systematic step errors in the SFT data); keys are drawn as in :func:`run_pipeline`, so the
    SFT model of a configuration equals that of the full pipeline with the same key.
    """
    names = ["sft_data", "sft", "prompts", "collect", "rft", "dpo", "oreo", "oreo_step"]
    names += ["iter", "eval", "eval_long", "beam", "sc", "init"]
    ks = dict(zip(names, jax.random.split(key, 16)))
    tcfg = cfg.task_with(cfg.task.n_steps)
    data, _ = T.sft_batch(ks["sft_data"], cfg.sft_examples, tcfg, cfg.p_err, cfg.p_confuse)
    p0 = M.init_params_jit(ks["init"], cfg.model)
    sft = make_sft(cfg, steps=cfg.sft_steps, lr=cfg.sft_lr)(
        ks["sft"], p0, data.tokens, data.prompt_len, data.length, jnp.ones((cfg.sft_examples,))
    )[0]
    prompts = T.prompt_batch(ks["prompts"], cfg.n_prompts, tcfg)
    off, _ = collect(sft, prompts, ks["collect"], cfg, k=cfg.k_samples, temperature=cfg.temperature)
    tr = make_oreo(cfg, steps=cfg.rl_steps, step_level=False)
    pol, _, _ = tr(ks["oreo"], sft, value_init(sft, cfg), sft, off)
    held = T.prompt_batch(ks["eval"], cfg.n_eval, tcfg)
    held_sc = T.prompt_batch(jax.random.fold_in(ks["sc"], 0), cfg.n_eval_sc, tcfg)
    models = {"sft": sft, "oreo": pol}
    return {
        "stats": {"offline_reward": float(jnp.mean(off.reward))},
        "greedy": {n: float(greedy_accuracy(p, held, cfg)) for n, p in models.items()},
        "self_consistency": {
            n: self_consistency_accuracy(p, held_sc, jax.random.fold_in(ks["sc"], 1), cfg, k=sc_k)
            for n, p in models.items()
        },
    }
