"""OREO: offline soft-Bellman learning for multi-step reasoning (arXiv 2412.16145).

Pure losses (token and step level), implicit rewards, DPO; a synthetic modular-arithmetic
reasoning task; value-guided step beam search and Soft Self-Consistency at test time.
"""

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

__all__ = [
    "dpo_loss",
    "implicit_rewards",
    "kl_regularizer",
    "masked_mean",
    "oreo_policy_loss",
    "oreo_step_policy_loss",
    "oreo_step_value_loss",
    "oreo_value_loss",
    "reverse_cumsum",
    "step_next_start",
    "token_kl",
]
