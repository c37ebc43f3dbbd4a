"""OREO: offline soft-Bellman learning for multi-step reasoning (arXiv 2412.16145).

Pure losses (token and step level), implicit rewards, DPO (:mod:`.losses`); a synthetic
modular-arithmetic reasoning task (:mod:`.task`) and a small decoder policy / value (:mod:`.model`);
the experiment's configuration (:mod:`.config`), offline data (:mod:`.data`), trainers on one
minibatch loop (:mod:`.train`), evaluation (:mod:`.evaluation`) and the SFT -> sampling -> OREO
pipeline (:mod:`.pipeline`); value-guided step beam search (:mod:`.search`) and Soft
Self-Consistency (:mod:`.consistency`) at test time.

    import jax
    from jaxsel.rl.oreo import OreoConfig, make_train

    train = make_train(OreoConfig.quick())
    out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 3))  # 3 seeds
"""

from jaxsel.rl.oreo.config import OreoConfig, OreoHyperparams
from jaxsel.rl.oreo.consistency import majority_vote, soft_self_consistency, soft_vote
from jaxsel.rl.oreo.data import OfflineData, collect, dpo_pairs, sample_responses
from jaxsel.rl.oreo.evaluation import (
    beam_accuracy,
    beam_search,
    greedy_accuracy,
    rank_samples,
    ranking_stats,
    self_consistency_accuracy,
    uninformative_score,
    value_ranking,
)
from jaxsel.rl.oreo.losses import (
    dpo_loss,
    implicit_rewards,
    kl_regularizer,
    masked_mean,
    oreo_policy_loss,
    oreo_step_policy_loss,
    oreo_step_value_loss,
    oreo_value_loss,
    reverse_cumsum,
    step_next_start,
    token_kl,
)
from jaxsel.rl.oreo.pipeline import (
    OreoRun,
    PipelineKeys,
    TrainOut,
    fit_value,
    held_out_prompts,
    held_out_self_consistency,
    make_train,
    oreo_round,
    run_pipeline,
    run_self_consistency,
    sample_offline,
    sft_then_oreo,
    train_dpo,
    train_rft,
    train_sft,
)
from jaxsel.rl.oreo.search import step_beam_search
from jaxsel.rl.oreo.train import (
    make_dpo,
    make_oreo,
    make_sft,
    make_value_fit,
    minibatch_loop,
    optimizer,
    value_init,
)
from jaxsel.utils.compile import FAST_COMPILE

__all__ = [
    "FAST_COMPILE",
    "OfflineData",
    "OreoConfig",
    "OreoHyperparams",
    "OreoRun",
    "PipelineKeys",
    "TrainOut",
    "beam_accuracy",
    "beam_search",
    "collect",
    "dpo_loss",
    "dpo_pairs",
    "fit_value",
    "greedy_accuracy",
    "held_out_prompts",
    "held_out_self_consistency",
    "implicit_rewards",
    "kl_regularizer",
    "majority_vote",
    "make_dpo",
    "make_oreo",
    "make_sft",
    "make_train",
    "make_value_fit",
    "masked_mean",
    "minibatch_loop",
    "optimizer",
    "oreo_policy_loss",
    "oreo_round",
    "oreo_step_policy_loss",
    "oreo_step_value_loss",
    "oreo_value_loss",
    "rank_samples",
    "ranking_stats",
    "reverse_cumsum",
    "run_pipeline",
    "run_self_consistency",
    "sample_offline",
    "sample_responses",
    "self_consistency_accuracy",
    "sft_then_oreo",
    "soft_self_consistency",
    "soft_vote",
    "step_beam_search",
    "step_next_start",
    "token_kl",
    "train_dpo",
    "train_rft",
    "train_sft",
    "uninformative_score",
    "value_init",
    "value_ranking",
]
