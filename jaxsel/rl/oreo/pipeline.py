"""The experiment: SFT data -> SFT -> ``k`` samples per prompt -> OREO, the baselines, test-time
search and answer selection, from one PRNG key per seed.

Every phase draws its own key from :class:`PipelineKeys` (one derivation for every entry point),
so a phase's result does not depend on which other phases ran: :func:`make_train`,
:func:`sft_then_oreo`, :func:`run_self_consistency` and :func:`run_pipeline` draw the same data,
initialisation and minibatches for the same key (their SFT and first OREO models differ only by
the rounding of differently compiled programs), and a resumed :func:`run_pipeline` reproduces the
uninterrupted one.

- :func:`make_train` ``(cfg) -> train(key, hparams=None)``: SFT -> sampling -> OREO -> greedy
  accuracy as one pure function, so ``jax.jit(jax.vmap(train))(keys)`` trains a run per seed (and
  per learning rate, vmapping :class:`OreoHyperparams`) in a single program.
- :func:`run_pipeline`: the benchmark, a Python function over jitted phases with a checkpoint
  hook between them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo import task as T
from jaxsel.rl.oreo.config import OreoConfig, OreoHyperparams
from jaxsel.rl.oreo.data import OfflineData, collect, dpo_pairs
from jaxsel.rl.oreo.evaluation import (
    beam_accuracy,
    greedy_accuracy,
    self_consistency_accuracy,
    value_ranking,
)
from jaxsel.rl.oreo.train import make_dpo, make_oreo, make_sft, make_value_fit, value_init

Params = dict[str, Any]

__all__ = [
    "OreoRun",
    "PipelineKeys",
    "TrainOut",
    "fit_value",
    "held_out_prompts",
    "held_out_self_consistency",
    "make_train",
    "oreo_round",
    "run_pipeline",
    "run_self_consistency",
    "sample_offline",
    "sft_then_oreo",
    "train_dpo",
    "train_rft",
    "train_sft",
]


class PipelineKeys(NamedTuple):
    """One PRNG key per phase; :meth:`split` is the only derivation from a seed's key."""

    sft_data: Array
    sft: Array
    prompts: Array
    collect: Array
    rft: Array
    dpo: Array
    oreo: Array
    oreo_step: Array
    iter: Array
    eval: Array
    eval_long: Array
    beam: Array
    sc: Array
    init: Array
    value_fit: Array
    rank: Array

    @classmethod
    def split(cls, key: Array) -> PipelineKeys:
        """The phase keys of a seed's key (field order fixes which draw each phase gets)."""
        return cls(*jax.random.split(key, len(cls._fields)))


def _hparams(cfg: OreoConfig, hparams: OreoHyperparams | None) -> OreoHyperparams:
    if hparams is None:
        return cfg.hparams()
    if not isinstance(hparams, OreoHyperparams):
        raise TypeError(f"hparams must be OreoHyperparams or None, got {type(hparams).__name__}")
    return hparams


def train_sft(
    keys: PipelineKeys, cfg: OreoConfig, hparams: OreoHyperparams | None = None
) -> tuple[Params, Array]:
    """SFT data (with the configured step errors) -> a fresh decoder -> SFT:
    ``(params, loss [sft_steps])``."""
    hp = _hparams(cfg, hparams)
    tcfg = cfg.task_with(cfg.task.n_steps)
    data, _ = T.sft_batch(keys.sft_data, cfg.sft_examples, tcfg, cfg.p_err, cfg.p_confuse)
    p0 = M.init_params_jit(keys.init, cfg.model)
    w = jnp.ones((cfg.sft_examples,))
    sft = make_sft(cfg, steps=cfg.sft_steps)
    return sft(keys.sft, p0, data.tokens, data.prompt_len, data.length, w, lr=hp.sft_lr)


def sample_offline(keys: PipelineKeys, params: Params, cfg: OreoConfig) -> OfflineData:
    """``cfg.k_samples`` responses of ``params`` on each of ``cfg.n_prompts`` fresh prompts."""
    prompts = T.prompt_batch(keys.prompts, cfg.n_prompts, cfg.task_with(cfg.task.n_steps))
    data, _ = collect(
        keys.collect, params, prompts, cfg, k=cfg.k_samples, temperature=cfg.temperature
    )
    return data


def train_rft(
    keys: PipelineKeys,
    sft: Params,
    data: OfflineData,
    cfg: OreoConfig,
    hparams: OreoHyperparams | None = None,
) -> tuple[Params, Array]:
    """Rejection-sampling fine-tuning from ``sft`` on the correct samples of ``data``:
    ``(params, loss [rl_steps])``."""
    hp = _hparams(cfg, hparams)
    rft = make_sft(cfg, steps=cfg.rl_steps)
    w = data.reward + 1e-9
    return rft(keys.rft, sft, data.tokens, data.prompt_len, data.length, w, lr=hp.lr)


def train_dpo(
    keys: PipelineKeys,
    sft: Params,
    data: OfflineData,
    cfg: OreoConfig,
    hparams: OreoHyperparams | None = None,
) -> tuple[Params, Array]:
    """DPO from ``sft`` (also the reference) on a (correct, wrong) pair of ``data`` per prompt:
    ``(params, loss [rl_steps])``."""
    hp = _hparams(cfg, hparams)
    dpo = make_dpo(cfg, steps=cfg.rl_steps)
    return dpo(keys.dpo, sft, sft, data, *dpo_pairs(data, cfg.k_samples), lr=hp.lr)


def oreo_round(
    key: Array,
    policy: Params,
    value: Params,
    ref: Params,
    data: OfflineData,
    cfg: OreoConfig,
    hparams: OreoHyperparams | None = None,
    *,
    step_level: bool = False,
) -> tuple[Params, Params, Array]:
    """``cfg.rl_steps`` OREO steps on ``data``: ``(policy, value, losses [rl_steps, 3])``."""
    hp = _hparams(cfg, hparams)
    train = make_oreo(cfg, steps=cfg.rl_steps, step_level=step_level)
    return train(key, policy, value, ref, data, lr=hp.lr, critic_lr=hp.critic_lr)


class OreoRun(NamedTuple):
    """What :func:`sft_then_oreo` returns."""

    sft: Params
    data: OfflineData  # the SFT model's samples OREO learns from
    policy: Params
    value: Params
    sft_loss: Array  # [sft_steps]
    oreo_loss: Array  # [rl_steps, 3]: value loss, policy loss, KL


def sft_then_oreo(
    key: Array | PipelineKeys, cfg: OreoConfig, hparams: OreoHyperparams | None = None
) -> OreoRun:
    """SFT -> ``k_samples`` per prompt of the SFT model -> one round of token-level OREO from it
    (``pi_ref`` = the SFT model, value = its trunk + a zero head). Works eagerly (each phase its
    own program) and under ``jit`` / ``vmap``.

    Args:
      key: a seed's key (split by :meth:`PipelineKeys.split`) or its phase keys.
      cfg: the experiment.
      hparams: traced learning rates (default ``cfg.hparams()``).
    """
    ks = key if isinstance(key, PipelineKeys) else PipelineKeys.split(key)
    hp = _hparams(cfg, hparams)
    sft, sft_loss = train_sft(ks, cfg, hp)
    data = sample_offline(ks, sft, cfg)
    policy, value, oreo_loss = oreo_round(ks.oreo, sft, value_init(sft), sft, data, cfg, hp)
    return OreoRun(sft, data, policy, value, sft_loss, oreo_loss)


def fit_value(
    key: Array,
    policy: Params,
    ref: Params,
    cfg: OreoConfig,
    hparams: OreoHyperparams | None = None,
    *,
    value: Params | None = None,
) -> tuple[Params, Array]:
    """Critic-only value fit (:func:`make_value_fit`) of ``policy`` on ``k_samples`` samples of
    it for each of ``cfg.value_prompts`` fresh prompts, from ``value`` (default: the policy's
    trunk + a zero head): ``(value, loss [value_steps])``."""
    hp = _hparams(cfg, hparams)
    pr = T.prompt_batch(
        jax.random.fold_in(key, 0), cfg.value_prompts, cfg.task_with(cfg.task.n_steps)
    )
    d, _ = collect(
        jax.random.fold_in(key, 1), policy, pr, cfg, k=cfg.k_samples, temperature=cfg.temperature
    )
    v0 = value_init(policy) if value is None else value
    fit = make_value_fit(cfg, steps=cfg.value_steps)
    return fit(jax.random.fold_in(key, 2), v0, policy, ref, d, lr=hp.value_lr)


def held_out_prompts(keys: PipelineKeys, cfg: OreoConfig, *, long: bool = False) -> T.Batch:
    """The ``cfg.n_eval`` evaluation prompts (``long``: chains of ``cfg.eval_long_steps``)."""
    if long:
        return T.prompt_batch(keys.eval_long, cfg.n_eval, cfg.task_with(cfg.eval_long_steps))
    return T.prompt_batch(keys.eval, cfg.n_eval, cfg.task_with(cfg.task.n_steps))


def held_out_self_consistency(
    keys: PipelineKeys, models: dict[str, Params], cfg: OreoConfig, *, sc_k: int
) -> dict[str, dict[str, float]]:
    """:func:`self_consistency_accuracy` of each of ``models`` (name -> params) on the same
    ``cfg.n_eval_sc`` held-out prompts, ``sc_k`` samples each."""
    held_sc = T.prompt_batch(
        jax.random.fold_in(keys.sc, 0), cfg.n_eval_sc, cfg.task_with(cfg.task.n_steps)
    )
    key = jax.random.fold_in(keys.sc, 1)
    return {n: self_consistency_accuracy(key, p, held_sc, cfg, k=sc_k) for n, p in models.items()}


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


def make_train(cfg: OreoConfig) -> Callable[..., TrainOut]:
    """``make_train(cfg) -> train(key, hparams=None)``: :func:`sft_then_oreo`, then greedy
    accuracy of the SFT and OREO policies on the held-out prompts.

    ``train`` is a pure function of the PRNG key (and the traced learning rates), so
    ``jax.jit(jax.vmap(train))(keys)`` trains one independent run per seed in a single program;
    its phases draw the keys :func:`run_pipeline` draws (the baselines and test-time search of
    the benchmark stay there).
    """

    def train(key: Array, hparams: OreoHyperparams | None = None) -> TrainOut:
        ks = PipelineKeys.split(key)
        run = sft_then_oreo(ks, cfg, hparams)
        held = held_out_prompts(ks, cfg)
        return TrainOut(
            run.sft,
            run.policy,
            run.value,
            run.sft_loss,
            run.oreo_loss,
            jnp.mean(run.data.reward),
            greedy_accuracy(run.sft, held, cfg),
            greedy_accuracy(run.policy, held, cfg),
        )

    return train


# ---------------------------------------------------------------------------------------------
# the whole experiment


def run_pipeline(
    key: Array,
    cfg: OreoConfig,
    *,
    hparams: OreoHyperparams | None = None,
    beams: tuple[int, ...] = (1, 3, 5, 7),
    sc_k: int = 8,
    checkpoint: Callable[[str, Any], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """SFT -> sample K per prompt -> {SFT, RFT, DPO, OREO token, OREO step, iterative OREO}
    -> greedy accuracy on held-out prompts (training length and longer chains); a critic-only
    fit of the final OREO policy's value (:func:`fit_value`), how well each value ranks
    samples (:func:`value_ranking`), value-guided beam search with the fitted value, and majority
    vote vs Soft-SC on samples of the SFT and of the final OREO policy.

    ``checkpoint(name, make) -> tree`` lets a caller return a stored result of phase ``name``
    (resume) or call ``make()`` and store it; by default it just calls ``make()``. Every phase
    draws its own key, so a resumed run reproduces the uninterrupted one.
    """
    if not beams or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in beams):
        raise ValueError(f"beams must be positive ints, got {beams=}")
    if isinstance(sc_k, bool) or not isinstance(sc_k, int) or sc_k < 1:
        raise ValueError(f"sc_k must be a positive int, got {sc_k=}")
    ck = checkpoint or (lambda name, make: make())
    say = progress or (lambda s: None)
    hp = _hparams(cfg, hparams)
    ks = PipelineKeys.split(key)
    tcfg = cfg.task_with(cfg.task.n_steps)

    say("sft")
    sft_params = ck("sft", lambda: train_sft(ks, cfg, hp)[0])
    data = sample_offline(ks, sft_params, cfg)
    stats = {"offline_reward": float(jnp.mean(data.reward))}

    models: dict[str, Params] = {"sft": sft_params}
    say("rft")
    models["rft"] = ck("rft", lambda: train_rft(ks, sft_params, data, cfg, hp)[0])
    say("dpo")
    models["dpo"] = ck("dpo", lambda: train_dpo(ks, sft_params, data, cfg, hp)[0])

    values: dict[str, Params] = {}
    for name, step_level in (("oreo", False), ("oreo_step", True)):
        say(name)

        def do(name=name, step_level=step_level):
            pol, val, _ = oreo_round(
                getattr(ks, name),
                sft_params,
                value_init(sft_params),
                sft_params,
                data,
                cfg,
                hp,
                step_level=step_level,
            )
            return {"policy": pol, "value": val}

        out = ck(name, do)
        models[name], values[name] = out["policy"], out["value"]

    # iterative OREO: re-collect with the current policy, continue training (ref stays SFT)
    pol, val = models["oreo"], values["oreo"]
    for r in range(1, cfg.oreo_rounds):
        say(f"oreo_iter{r}")
        kr = jax.random.fold_in(ks.iter, r)

        def do(pol=pol, val=val, kr=kr):
            pr = T.prompt_batch(jax.random.fold_in(kr, 0), cfg.n_prompts, tcfg)
            d, _ = collect(
                jax.random.fold_in(kr, 1),
                pol,
                pr,
                cfg,
                k=cfg.k_samples,
                temperature=cfg.temperature,
            )
            p2, v2, _ = oreo_round(jax.random.fold_in(kr, 2), pol, val, sft_params, d, cfg, hp)
            return {"policy": p2, "value": v2}

        out = ck(f"oreo_iter{r}", do)
        pol, val = out["policy"], out["value"]
    if cfg.oreo_rounds > 1:
        models["oreo_iter"], values["oreo_iter"] = pol, val

    say("eval")
    held = held_out_prompts(ks, cfg)
    long = held_out_prompts(ks, cfg, long=True)
    res: dict[str, Any] = {"stats": stats, "greedy": {}, "greedy_long": {}}
    for name, p in models.items():
        res["greedy"][name] = float(greedy_accuracy(p, held, cfg))
        res["greedy_long"][name] = float(greedy_accuracy(p, long, cfg))
    best = "oreo_iter" if "oreo_iter" in models else "oreo"
    say("value_fit")

    def do_fit():
        v0 = None if cfg.value_from_policy else values[best]
        return fit_value(ks.value_fit, models[best], sft_params, cfg, hp, value=v0)[0]

    fitted = ck("value_fit", do_fit) if cfg.value_steps > 0 else values[best]
    nb = min(cfg.n_eval_beam, cfg.n_eval)
    held_b = jax.tree.map(lambda x: x[:nb], held)
    # is the value any good at ranking finished samples? (chance = best_of_k_uninformative); on all
    # held-out prompts: sampling is cheap and best-of-K on a few dozen prompts is noise
    res["value_ranking"] = {
        name: value_ranking(ks.rank, models[best], v, held, cfg, k=cfg.k_samples)
        for name, v in (("joint", values[best]), ("fitted", fitted))
    }
    say("beam")

    def beam_acc(value: Params | None, b: int) -> float:
        return float(
            beam_accuracy(
                ks.beam, models[best], value, held_b, cfg, beam=b, n_steps=tcfg.n_steps,
                temperature=cfg.beam_temperature,
            )
        )  # fmt: skip

    res["beam"] = {b: beam_acc(fitted, b) for b in beams}
    # chance level of the search itself: same beams, ranked by a score blind to correctness
    res["beam_uninformative"] = {b: beam_acc(None, b) for b in beams if b == 5}
    res["greedy_beam_subset"] = float(greedy_accuracy(models[best], held_b, cfg))
    res["beam_policy"] = best
    say("sc")
    res["self_consistency"] = held_out_self_consistency(
        ks, {"sft": models["sft"], best: models[best]}, cfg, sc_k=sc_k
    )
    return res


def run_self_consistency(
    key: Array,
    cfg: OreoConfig,
    *,
    hparams: OreoHyperparams | None = None,
    sc_k: int = 8,
) -> dict[str, Any]:
    """Majority vote vs Soft-SC only: :func:`sft_then_oreo` -> :func:`self_consistency_accuracy`
    on ``n_eval_sc`` held-out prompts for samples of the SFT and of the OREO policy (plus greedy
    accuracy on ``n_eval`` prompts, for context).

    For task variants where only answer selection is compared (e.g. random instead of
    systematic step errors in the SFT data); the keys are :func:`run_pipeline`'s, so each model
    and prompt set equals the full pipeline's for the same key.
    """
    if isinstance(sc_k, bool) or not isinstance(sc_k, int) or sc_k < 1:
        raise ValueError(f"sc_k must be a positive int, got {sc_k=}")
    ks = PipelineKeys.split(key)
    run = sft_then_oreo(ks, cfg, hparams)
    held = held_out_prompts(ks, cfg)
    models = {"sft": run.sft, "oreo": run.policy}
    return {
        "stats": {"offline_reward": float(jnp.mean(run.data.reward))},
        "greedy": {n: float(greedy_accuracy(p, held, cfg)) for n, p in models.items()},
        "self_consistency": held_out_self_consistency(ks, models, cfg, sc_k=sc_k),
    }
