"""Soft Actor-Critic (Haarnoja et al. 2018): pure losses, networks and a jitted, vmappable loop."""

from __future__ import annotations

from jaxsel.rl.sac.distributions import (
    deterministic_action,
    squash_action,
    tanh_gaussian_from_noise,
    tanh_gaussian_log_prob,
    tanh_gaussian_sample,
    tanh_log_det_jacobian,
)
from jaxsel.rl.sac.losses import (
    actor_loss,
    critic_loss,
    n_step_return,
    perturb_actions,
    polyak_update,
    soft_q_target,
    temperature_loss,
)
from jaxsel.rl.sac.networks import actor_apply, actor_init, critic_apply, critic_init
from jaxsel.rl.sac.train import (
    SACConfig,
    SACHyperparams,
    SACTrain,
    TrainState,
    Transition,
    make_train,
)

__all__ = [
    "SACConfig",
    "SACHyperparams",
    "SACTrain",
    "TrainState",
    "Transition",
    "actor_apply",
    "actor_init",
    "actor_loss",
    "critic_apply",
    "critic_init",
    "critic_loss",
    "deterministic_action",
    "make_train",
    "n_step_return",
    "perturb_actions",
    "polyak_update",
    "soft_q_target",
    "squash_action",
    "tanh_gaussian_from_noise",
    "tanh_gaussian_log_prob",
    "tanh_gaussian_sample",
    "tanh_log_det_jacobian",
    "temperature_loss",
]
