"""The configuration of one OREO experiment and its traced hyperparameters.

Integer fields are static sizes (each trainer compiles once per configuration); the learning
rates are traced: :meth:`OreoConfig.hparams` turns them into :class:`OreoHyperparams`, float32
scalars the trainers take as arguments, so ``jax.vmap`` sweeps them like seeds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import Array

from jaxsel.rl.oreo import model as M
from jaxsel.rl.oreo import task as T

__all__ = ["OreoConfig", "OreoHyperparams"]

_POSITIVE = (
    "eval_long_steps",
    "d_model",
    "n_layers",
    "n_heads",
    "d_ff",
    "sft_examples",
    "sft_steps",
    "batch_size",
    "n_prompts",
    "k_samples",
    "rl_steps",
    "oreo_rounds",
    "n_eval",
    "n_eval_beam",
    "value_prompts",
    "n_eval_sc",
)
_NON_NEGATIVE = (
    "value_steps",
    "sft_lr",
    "lr",
    "critic_lr",
    "value_lr",
    "beta",
    "kl_coef",
    "kl_coef_step",
    "dpo_beta",
    "temperature",  # 0: greedy
    "beam_temperature",
)


class OreoHyperparams(NamedTuple):
    """Traced (vmappable) learning rates: float32 scalars, or ``[n]`` under ``vmap``."""

    sft_lr: Array
    lr: Array  # policy: OREO actor, RFT, DPO
    critic_lr: Array  # OREO's jointly trained value
    value_lr: Array  # critic-only value fit


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
    # critic-only fit of the final policy's value for beam search (make_value_fit): enough
    # prompts that it ranks rather than memorises (results/oreo/README.md)
    value_steps: int = 3000
    value_lr: float = 1e-3
    value_prompts: int = 4096
    # initialise the fitted value from the final policy's trunk (which no longer carries the SFT
    # model's preference for the '*'->'+' slip) rather than from the jointly trained value
    value_from_policy: bool = True
    # expansions of value-guided beam search; hotter expansions start the search below greedy
    beam_temperature: float = 0.3
    n_eval_sc: int = 2048  # held-out prompts for majority vote vs Soft-SC (sampling is cheap)
    # compile without XLA's expensive backend passes: faster compiles, slower steps; for tests
    # and the quick smoke run, where compilation dominates
    fast_compile: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.task, T.TaskConfig):
            raise TypeError(f"OreoConfig.task must be a TaskConfig, got {type(self.task).__name__}")
        for name in _POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"OreoConfig.{name} must be a positive int, got {name}={value!r}")
        for name in _NON_NEGATIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"OreoConfig.{name} must be a number >= 0, got {name}={value!r}")
        for name in ("p_err", "p_confuse"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"OreoConfig.{name} must be a probability, got {name}={value!r}")
        self.model  # noqa: B018 -- DecoderConfig checks the head split (ValueError)

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
        return M.small_decoder(
            T.VOCAB_SIZE,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
            max_len=max(self.task.max_len, long),
        )

    def task_with(self, n_steps: int) -> T.TaskConfig:
        """The task with chains of ``n_steps``, in buffers as long as the model's."""
        return dataclasses.replace(
            self.task, n_steps=n_steps, max_len=self.model.max_position_embeddings
        )

    def hparams(self) -> OreoHyperparams:
        """The traced learning rates of this configuration (float32 scalars)."""
        f = lambda x: jnp.asarray(x, jnp.float32)
        return OreoHyperparams(f(self.sft_lr), f(self.lr), f(self.critic_lr), f(self.value_lr))
