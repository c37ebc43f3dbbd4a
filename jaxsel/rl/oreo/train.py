"""Trainers under ``jit``: SFT / rejection-sampling FT, DPO, OREO (token or step level) and a
critic-only value fit, all on one minibatch loop.

:func:`minibatch_loop` is the loop: ``steps`` times, draw a minibatch of indices (with
replacement, in proportion to ``weights``), take the gradients of one or more parameter sets and
apply one clipped-Adam step to each, inside one ``lax.scan``. Each ``make_*(cfg, *, steps)``
returns ``train(key, params..., data..., *, lr...) -> (params..., losses)``; it only says which
parameters move and what their gradients are. Learning rates are arguments (traced), so
``jax.vmap`` sweeps them.

OREO (arXiv 2412.16145, Alg. 1): per minibatch, a critic step on Eq. 8 and an actor step on
Eq. 9 + ``alpha * KL(pi || pi_ref)`` with the value held fixed (the minibatch's values from
before the critic step, as in the authors' ``pcl_trainer.py``); ``pi_ref`` is the SFT model and
the value model is the SFT trunk with a zero-initialised scalar head (:func:`value_init`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import Array
from jax.typing import ArrayLike

from jaxsel.rl.oreo import losses
from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo.config import OreoConfig
from jaxsel.rl.oreo.data import OfflineData, batch_logps, batch_masks
from jaxsel.utils.compile import fast_jit

Params = dict[str, Any]
GradFn = Callable[[tuple[Params, ...], Array], tuple[tuple[Params, ...], Array]]

__all__ = [
    "make_dpo",
    "make_oreo",
    "make_sft",
    "make_value_fit",
    "minibatch_loop",
    "optimizer",
    "value_init",
]


def optimizer(lr: ArrayLike) -> optax.GradientTransformation:
    """Adam after clipping the update's global norm to 1 (every trainer's optimiser)."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))


def minibatch_loop(
    key: Array,
    params: tuple[Params, ...],
    lrs: tuple[ArrayLike, ...],
    weights: Array,
    grad_fn: GradFn,
    *,
    steps: int,
    batch_size: int,
) -> tuple[tuple[Params, ...], Array]:
    """``steps`` optimiser steps on minibatches drawn from an offline data set.

    Args:
      key: PRNG key; step ``s`` draws its minibatch with ``jax.random.split(key, steps)[s]``.
      params: the parameter sets that move, each with its own optimiser state.
      lrs: one (traced) learning rate per parameter set.
      weights: ``[N]`` non-negative sampling weight of each example (index) of the data set.
      grad_fn: ``grad_fn(params, idx [batch_size]) -> (grads, metrics)``, ``grads`` shaped like
        ``params``; all gradients are taken at the parameters before the step.
      steps, batch_size: static sizes.

    Returns:
      ``(params, metrics)``, ``metrics`` stacked over steps.
    """
    if len(lrs) != len(params):
        raise ValueError(f"lrs must give one learning rate per parameter set, got {len(lrs)=}")
    opts = tuple(optimizer(lr) for lr in lrs)

    def step(carry, k):
        ps, states = carry
        idx = jax.random.choice(k, weights.shape[0], (batch_size,), p=weights / jnp.sum(weights))
        grads, metrics = grad_fn(ps, idx)
        new_ps, new_states = [], []
        for opt, g, s, p in zip(opts, grads, states, ps):
            u, s = opt.update(g, s, p)
            new_ps.append(optax.apply_updates(p, u))
            new_states.append(s)
        return (tuple(new_ps), tuple(new_states)), metrics

    init = (tuple(params), tuple(opt.init(p) for opt, p in zip(opts, params)))
    (params, _), metrics = jax.lax.scan(step, init, jax.random.split(key, steps))
    return params, metrics


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps=}")


def _jit(cfg: OreoConfig, fn: Callable[..., Any]) -> Callable[..., Any]:
    return fast_jit(fn, fast=cfg.fast_compile)


def value_init(policy: Params) -> Params:
    """Value model = a copy of the policy trunk + zero-initialised scalar head (paper Sec. 4)."""
    v = jax.tree.map(jnp.array, policy)
    v["value_head"] = {"w": jnp.zeros_like(policy["final_norm"]), "b": jnp.zeros(())}
    return v


def _seq_nll(params: Params, tokens: Array, plen: Array, length: Array, mcfg) -> Array:
    mask, _ = batch_masks(tokens, plen, length)
    lp, _ = batch_logps(params, tokens, mcfg)
    return jnp.mean(-jnp.sum(lp * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0))


@functools.cache
def make_sft(cfg: OreoConfig, *, steps: int) -> Callable[..., tuple[Params, Array]]:
    """Weighted maximum likelihood on responses: ``train(key, params, tokens, prompt_len, length,
    weights, *, lr) -> (params, loss [steps])``; ``weights=1`` is SFT, ``weights=reward`` is
    rejection sampling fine-tuning (RFT)."""
    _check_steps(steps)
    mcfg = cfg.model

    def train(key, params, tokens, plen, length, weights, *, lr):
        def grads(ps, i):
            loss, g = jax.value_and_grad(_seq_nll)(ps[0], tokens[i], plen[i], length[i], mcfg)
            return (g,), loss

        (params,), ls = minibatch_loop(
            key, (params,), (lr,), weights, grads, steps=steps, batch_size=cfg.batch_size
        )
        return params, ls

    return _jit(cfg, train)


@functools.cache
def make_dpo(cfg: OreoConfig, *, steps: int) -> Callable[..., tuple[Params, Array]]:
    """DPO on (correct, wrong) pairs of offline samples: ``train(key, params, ref, data, chosen,
    rejected, valid, *, lr) -> (params, loss [steps])``, pairs from :func:`data.dpo_pairs`."""
    _check_steps(steps)
    mcfg = cfg.model

    def seq_logp(p, d: OfflineData, i):
        mask, _ = batch_masks(d.tokens[i], d.prompt_len[i], d.length[i])
        lp, _ = batch_logps(p, d.tokens[i], mcfg)
        return lp, mask

    def loss_fn(p, ref, d: OfflineData, ic, ir):
        (lc, mc), (lr_, mr) = seq_logp(p, d, ic), seq_logp(p, d, ir)
        rc, rr = seq_logp(ref, d, ic)[0], seq_logp(ref, d, ir)[0]
        rc, rr = jax.lax.stop_gradient(rc), jax.lax.stop_gradient(rr)
        f = lambda a, b, c, e, m1, m2: losses.dpo_loss(a, b, c, e, m1, m2, beta=cfg.dpo_beta)
        return jnp.mean(jax.vmap(f)(lc, rc, lr_, rr, mc, mr))

    def train(key, params, ref, data: OfflineData, chosen, rejected, valid, *, lr):
        def grads(ps, j):
            loss, g = jax.value_and_grad(loss_fn)(ps[0], ref, data, chosen[j], rejected[j])
            return (g,), loss

        w = valid.astype(jnp.float32) + 1e-9
        (params,), ls = minibatch_loop(
            key, (params,), (lr,), w, grads, steps=steps, batch_size=cfg.batch_size
        )
        return params, ls

    return _jit(cfg, train)


def _value_loss(cfg: OreoConfig, step_level: bool):
    """``loss(value_params, data, logp, ref_logp, mask, starts) -> (loss, V [N, L-1])``, Eq. 8."""
    mcfg = cfg.model

    def loss(vp, d: OfflineData, lp, rlp, mask, starts):
        v = jax.vmap(lambda t: M.values(vp, t, mcfg))(d.tokens)[:, :-1]
        if step_level:
            f = lambda a, b, c, r, s, m: losses.oreo_step_value_loss(
                a, b, c, r, s, m, beta=cfg.beta
            )
        else:
            f = lambda a, b, c, r, s, m: losses.oreo_value_loss(a, b, c, r, m, beta=cfg.beta)
        return jnp.mean(jax.vmap(f)(lp, rlp, v, d.reward, starts, mask)), v

    return loss


@functools.cache
def make_oreo(cfg: OreoConfig, *, steps: int, step_level: bool) -> Callable[..., Any]:
    """OREO actor-critic training on offline data (token- or step-level MDP): ``train(key,
    policy, value, ref, data, *, lr, critic_lr) -> (policy, value, losses [steps, 3])``, the
    losses being (value loss, policy loss, KL)."""
    _check_steps(steps)
    mcfg = cfg.model
    alpha = cfg.kl_coef_step if step_level else cfg.kl_coef
    beta = cfg.beta
    value_loss = _value_loss(cfg, step_level)

    def policy_loss(lp, logits, v, rlp, rlogits, d: OfflineData, mask, starts):
        if step_level:
            f = lambda a, b, c, r, s, m: losses.oreo_step_policy_loss(a, b, c, r, s, m, beta=beta)
        else:
            f = lambda a, b, c, r, s, m: losses.oreo_policy_loss(a, b, c, r, m, beta=beta)
        pl = jnp.mean(jax.vmap(f)(lp, rlp, v, d.reward, starts, mask))
        kl = jnp.mean(jax.vmap(losses.kl_regularizer)(logits, rlogits, mask))
        return pl + alpha * kl, (pl, kl)

    def train(key, policy, value, ref, data: OfflineData, *, lr, critic_lr):
        def grads(ps, i):
            pp, vp = ps
            d = jax.tree.map(lambda x: x[i], data)
            mask, starts = batch_masks(d.tokens, d.prompt_len, d.length)
            rlp, rlogits = jax.lax.stop_gradient(batch_logps(ref, d.tokens, mcfg))
            # one policy forward serves both steps: the critic sees its log-probs as constants,
            # the actor pulls its loss gradient back through it
            (lp, logits), pull = jax.vjp(lambda p: batch_logps(p, d.tokens, mcfg), pp)
            # critic: Eq. 8 with the log-ratios fixed
            (lv, v), gv = jax.value_and_grad(value_loss, has_aux=True)(
                vp, d, jax.lax.stop_gradient(lp), rlp, mask, starts
            )
            # actor: Eq. 9 + alpha KL with the value fixed at its pre-step values
            (_, (lpi, kl)), (g_lp, g_logits) = jax.value_and_grad(
                policy_loss, argnums=(0, 1), has_aux=True
            )(lp, logits, jax.lax.stop_gradient(v), rlp, rlogits, d, mask, starts)
            (gp,) = pull((g_lp, g_logits))
            return (gp, gv), jnp.stack([lv, lpi, kl])

        (policy, value), ls = minibatch_loop(
            key,
            (policy, value),
            (lr, critic_lr),
            jnp.ones_like(data.reward),
            grads,
            steps=steps,
            batch_size=cfg.batch_size,
        )
        return policy, value, ls

    return _jit(cfg, train)


@functools.cache
def make_value_fit(cfg: OreoConfig, *, steps: int) -> Callable[..., Any]:
    """Critic-only OREO training (Eq. 8 with the policy held fixed) on offline samples:
    ``train(key, value, policy, ref, data, *, lr) -> (value, loss [steps])``.

    The joint actor-critic run gives the critic as many updates as the actor, which leaves a
    value too weak to rank partial solutions for beam search (it must tell a wrong intermediate
    result from a right one). This fits the value of the *final* policy on samples of that
    policy, with its own step count and learning rate; the policy is unchanged.
    """
    _check_steps(steps)
    mcfg = cfg.model
    value_loss = _value_loss(cfg, step_level=False)

    def train(key, value, policy, ref, data: OfflineData, *, lr):
        # the log-ratios are constants of the data: compute them once, not every step
        lp, _ = batch_logps(policy, data.tokens, mcfg)
        rlp, _ = batch_logps(ref, data.tokens, mcfg)
        mask, starts = batch_masks(data.tokens, data.prompt_len, data.length)

        def grads(ps, i):
            d = jax.tree.map(lambda x: x[i], data)
            (loss, _), g = jax.value_and_grad(value_loss, has_aux=True)(
                ps[0], d, lp[i], rlp[i], mask[i], starts[i]
            )
            return (g,), loss

        (value,), ls = minibatch_loop(
            key,
            (value,),
            (lr,),
            jnp.ones_like(data.reward),
            grads,
            steps=steps,
            batch_size=cfg.batch_size,
        )
        return value, ls

    return _jit(cfg, train)
