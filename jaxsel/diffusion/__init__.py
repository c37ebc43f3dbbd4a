"""Diffusion steering: SVDD and Feynman-Kac steering for continuous and masked-discrete diffusion.

Pure samplers (:mod:`.samplers`), steering methods (:mod:`.steering`) and models with exact tilted
targets (:mod:`.toys`); training of small denoisers and value networks lives in :mod:`.train`.
"""

from jaxsel.diffusion.samplers import (
    Process,
    VPSchedule,
    ddim_step,
    ddpm_step,
    masked_forward,
    masked_process,
    masked_step,
    masked_x0_hat,
    predict_x0,
    sample,
    sample_trajectory,
    vp_alpha_bar,
    vp_marginal,
    vp_process,
    vp_schedule,
)
from jaxsel.diffusion.steering import (
    POTENTIALS,
    RESAMPLERS,
    SteeringResult,
    best_of_n,
    effective_sample_size,
    fk_steering,
    multinomial_resample,
    potential_log,
    resample,
    resample_schedule,
    smc,
    svdd,
    systematic_resample,
)

__all__ = [
    "POTENTIALS",
    "RESAMPLERS",
    "Process",
    "SteeringResult",
    "VPSchedule",
    "best_of_n",
    "ddim_step",
    "ddpm_step",
    "effective_sample_size",
    "fk_steering",
    "masked_forward",
    "masked_process",
    "masked_step",
    "masked_x0_hat",
    "multinomial_resample",
    "potential_log",
    "predict_x0",
    "resample",
    "resample_schedule",
    "sample",
    "sample_trajectory",
    "smc",
    "svdd",
    "systematic_resample",
    "vp_alpha_bar",
    "vp_marginal",
    "vp_process",
    "vp_schedule",
]
