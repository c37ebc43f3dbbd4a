"""SAC training loop: one pure function of a PRNG key, ``lax.scan`` inside, vmappable over seeds.

    trainer = make_train(SACConfig(), env, env_params)
    state, metrics = jax.jit(trainer)(key)                  # one seed
    states, metrics = jax.jit(jax.vmap(trainer))(keys)      # many seeds at once

``trainer`` is a :class:`SACTrain`; besides ``__call__`` it exposes the pieces the loop is made of,
so a run can be driven in chunks (progress bars, checkpoints) and resumed bit-exactly:

    state = trainer.init(key)                      # networks, optimisers, buffer, warm-up steps
    state, metrics = trainer.run(state, num_blocks) # num_blocks x (train block, deterministic eval)

``trainer(key) == trainer.run(trainer.init(key), config.num_evals)``. Sizes in :class:`SACConfig` are
static; learning rates, gamma, tau, the initial temperature and the target entropy are traced (they
live in :class:`SACHyperparams` inside the state), so ``jax.vmap(trainer)(keys, hparams)`` sweeps them.

Per iteration, each of ``num_envs`` environments takes one step with a stochastic policy action, the
transitions go into an on-device flashbax trajectory buffer, and ``utd_ratio * num_envs`` gradient
updates follow (critic, then actor and temperature, then Polyak). Warm-up (``learning_starts`` steps
with uniform random actions) runs inside ``init``. Reference: Haarnoja et al. 2018 (arXiv 1812.05905).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import flashbax as fbx
import jax
import jax.numpy as jnp
import optax
from jax import Array

from jaxsel.rl.envs.base import Box, Environment, auto_reset_step
from jaxsel.rl.sac import distributions as D
from jaxsel.rl.sac import losses as L
from jaxsel.rl.sac import networks as N


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """SAC settings. Integer fields are static sizes; float fields are traced hyperparameters.

    Budget: ``total_timesteps`` environment steps in all (over all ``num_envs``), of which the first
    ``learning_starts`` use uniform random actions and no updates; the remaining steps are split into
    ``num_evals`` equal blocks, each followed by a deterministic evaluation over ``eval_episodes``.
    """

    total_timesteps: int = 20_000
    num_envs: int = 1
    learning_starts: int = 1_000
    utd_ratio: float = 1.0  # gradient updates per environment step
    batch_size: int = 256
    buffer_size: int = 100_000
    hidden_sizes: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    num_min_critics: int | None = None  # None: min over all critics; m < n: random subset (REDQ)
    n_step: int = 1
    band_limit_samples: int = 0  # K > 0: band-limited target averaged over K perturbed actions
    num_evals: int = 10
    eval_episodes: int = 10
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    # Traced hyperparameters (see SACHyperparams).
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    init_alpha: float = 1.0
    target_entropy: float | None = None  # None: -|A|
    band_limit_sigma: float = 0.1  # perturbation std, as a fraction of the half action range

    @classmethod
    def tiny(cls, **overrides: Any) -> SACConfig:
        """A smoke-test size (8-unit networks, 48 environment steps, 2 evaluations) where
        compilation, not running, dominates: tests and multi-process checks."""
        small = dict(
            total_timesteps=48,
            num_envs=2,
            learning_starts=16,
            utd_ratio=0.5,
            batch_size=8,
            buffer_size=64,
            hidden_sizes=(8,),
            num_evals=2,
            eval_episodes=2,
            actor_lr=1e-3,
            critic_lr=1e-3,
            alpha_lr=1e-3,
        )
        return cls(**{**small, **overrides})

    def __post_init__(self) -> None:
        positive = (
            "total_timesteps",
            "num_envs",
            "batch_size",
            "buffer_size",
            "num_critics",
            "n_step",
            "num_evals",
            "eval_episodes",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SACConfig.{name} must be a positive int, got {name}={value!r}")
        if self.learning_starts < 0 or self.band_limit_samples < 0:
            raise ValueError(
                f"learning_starts and band_limit_samples must be >= 0, got "
                f"{self.learning_starts=}, {self.band_limit_samples=}"
            )
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes=}")
        if self.num_min_critics is not None and not 1 <= self.num_min_critics <= self.num_critics:
            raise ValueError(
                f"num_min_critics must be in [1, num_critics={self.num_critics}], "
                f"got {self.num_min_critics=}"
            )
        for name in ("total_timesteps", "learning_starts", "buffer_size"):
            if getattr(self, name) % self.num_envs:
                raise ValueError(
                    f"SACConfig.{name}={getattr(self, name)} must be a multiple of "
                    f"num_envs={self.num_envs}"
                )
        if self.learning_starts // self.num_envs < self.n_step:
            raise ValueError(
                f"learning_starts={self.learning_starts} must give each of num_envs={self.num_envs}"
                f" environments at least n_step={self.n_step} warm-up steps"
            )
        train_steps = self.total_timesteps - self.learning_starts
        if train_steps <= 0 or train_steps % (self.num_envs * self.num_evals):
            raise ValueError(
                f"total_timesteps - learning_starts = {train_steps} must be a positive multiple of "
                f"num_envs * num_evals = {self.num_envs * self.num_evals}"
            )
        updates = self.utd_ratio * self.num_envs
        if updates < 1 or abs(updates - round(updates)) > 1e-9:
            raise ValueError(
                f"utd_ratio * num_envs must be a positive integer (updates per iteration), got "
                f"{self.utd_ratio=} * {self.num_envs=} = {updates}"
            )
        if self.buffer_size // self.num_envs < self.n_step + 1:
            raise ValueError(f"buffer_size={self.buffer_size} too small for {self.num_envs=}")

    @property
    def iterations_per_block(self) -> int:
        return (self.total_timesteps - self.learning_starts) // (self.num_envs * self.num_evals)

    @property
    def updates_per_iteration(self) -> int:
        return round(self.utd_ratio * self.num_envs)

    def hparams(self, action_dim: int) -> SACHyperparams:
        """The traced hyperparameters (float32 scalars), target entropy resolved to ``-|A|``."""
        te = -float(action_dim) if self.target_entropy is None else self.target_entropy
        f = lambda x: jnp.asarray(x, jnp.float32)
        return SACHyperparams(
            f(self.actor_lr),
            f(self.critic_lr),
            f(self.alpha_lr),
            f(self.gamma),
            f(self.tau),
            f(self.init_alpha),
            f(te),
            f(self.band_limit_sigma),
        )


class SACHyperparams(NamedTuple):
    """Traced (vmappable) hyperparameters, carried in the training state."""

    actor_lr: Array
    critic_lr: Array
    alpha_lr: Array
    gamma: Array
    tau: Array
    init_alpha: Array
    target_entropy: Array
    band_limit_sigma: Array


class Transition(NamedTuple):
    """What the replay buffer stores per environment step (``next_obs`` is the true s_{t+1})."""

    obs: Array
    action: Array
    reward: Array
    terminated: Array
    truncated: Array
    next_obs: Array


class TrainState(NamedTuple):
    """The whole training state: checkpointing it and resuming reproduces the run exactly."""

    actor: N.Params
    critic: N.Params
    target_critic: N.Params
    log_alpha: Array
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    buffer: Any  # flashbax TrajectoryBufferState
    env_state: Any
    obs: Array  # [num_envs, obs_dim]
    key: Array  # raw uint32 PRNG key
    env_steps: Array
    num_updates: Array
    hparams: SACHyperparams


def _raw_key(key: Array) -> Array:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def _vmean(tree: Any) -> Any:
    return jax.tree.map(jnp.mean, tree)


class SACTrain:
    """The training function returned by :func:`make_train` (see the module docstring)."""

    def __init__(self, config: SACConfig, env: Environment, env_params: Any):
        action_space = env.action_space(env_params)
        if not isinstance(action_space, Box):
            raise ValueError(
                f"SAC needs a continuous (Box) action space; {getattr(env, 'name', env)} has "
                f"{action_space!r}"
            )
        obs_space = env.observation_space(env_params)
        if len(obs_space.shape) != 1:
            raise ValueError(f"SAC needs flat observations, got {obs_space.shape=}")
        self.config = config
        self.env = env
        self.env_params = env_params
        self.obs_dim = obs_space.shape[0]
        self.action_dim = action_space.shape[0]
        self.action_space = action_space
        self.low = jnp.asarray(action_space.low, jnp.float32)
        self.high = jnp.asarray(action_space.high, jnp.float32)
        self.eval_steps = env.max_episode_steps(env_params)
        c = config
        self.buffer = fbx.make_trajectory_buffer(
            add_batch_size=c.num_envs,
            sample_batch_size=c.batch_size,
            sample_sequence_length=c.n_step,
            period=1,
            min_length_time_axis=c.n_step,
            max_length_time_axis=c.buffer_size // c.num_envs,
        )

    # -- public entry points -------------------------------------------------------------------
    def __call__(
        self, key: Array, hparams: SACHyperparams | None = None
    ) -> tuple[TrainState, dict[str, Array]]:
        """Full run: ``init`` then ``num_evals`` blocks. Returns ``(state, metrics[num_evals])``."""
        return self.run(self.init(key, hparams), self.config.num_evals)

    def default_hparams(self) -> SACHyperparams:
        return self.config.hparams(self.action_dim)

    def init(self, key: Array, hparams: SACHyperparams | None = None) -> TrainState:
        """Fresh networks, optimisers and buffer, then ``learning_starts`` random-action steps."""
        c = self.config
        hp = self.default_hparams() if hparams is None else hparams
        key = _raw_key(key)
        key, k_actor, k_critic, k_env = jax.random.split(key, 4)
        actor = N.actor_init(k_actor, self.obs_dim, self.action_dim, c.hidden_sizes)
        critic = N.critic_init(
            k_critic, self.obs_dim, self.action_dim, c.hidden_sizes, c.num_critics
        )
        log_alpha = jnp.log(hp.init_alpha)
        # Adam's state does not depend on the learning rate, so any value initialises it.
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(
            jax.random.split(k_env, c.num_envs), self.env_params
        )
        dummy = Transition(
            obs[0],
            jnp.zeros((self.action_dim,), jnp.float32),
            jnp.zeros((), jnp.float32),
            jnp.zeros((), bool),
            jnp.zeros((), bool),
            obs[0],
        )
        state = TrainState(
            actor=actor,
            critic=critic,
            target_critic=jax.tree.map(jnp.copy, critic),
            log_alpha=log_alpha,
            actor_opt=optax.adam(1.0).init(actor),
            critic_opt=optax.adam(1.0).init(critic),
            alpha_opt=optax.adam(1.0).init(log_alpha),
            buffer=self.buffer.init(dummy),
            env_state=env_state,
            obs=obs,
            key=key,
            env_steps=jnp.zeros((), jnp.int32),
            num_updates=jnp.zeros((), jnp.int32),
            hparams=hp,
        )

        def warmup(state: TrainState, _: None) -> tuple[TrainState, None]:
            key, k_act, k_env = jax.random.split(state.key, 3)
            actions = jax.vmap(self.action_space.sample)(jax.random.split(k_act, c.num_envs))
            return self._env_step(state._replace(key=key), actions, k_env), None

        state, _ = jax.lax.scan(warmup, state, None, length=c.learning_starts // c.num_envs)
        return state

    def run(self, state: TrainState, num_blocks: int) -> tuple[TrainState, dict[str, Array]]:
        """``num_blocks`` x (``iterations_per_block`` iterations, then a deterministic evaluation).

        Metrics have a leading ``[num_blocks]`` axis: ``env_steps``, ``eval_return`` (mean over
        episodes), ``eval_return_std``, and block means of ``critic_loss``, ``actor_loss``,
        ``alpha``, ``entropy``, ``q_mean``.
        """
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks=}")
        return jax.lax.scan(self._block, state, None, length=num_blocks)

    def evaluate(self, actor: N.Params, key: Array) -> Array:
        """Undiscounted returns of ``eval_episodes`` deterministic episodes: ``[eval_episodes]``."""
        c = self.config
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(
            jax.random.split(key, c.eval_episodes), self.env_params
        )

        def body(carry, t):
            obs, env_state, ret, done = carry
            mean, _ = jax.vmap(self._actor_apply, in_axes=(None, 0))(actor, obs)
            action = jax.vmap(partial(D.deterministic_action, low=self.low, high=self.high))(mean)
            keys = jax.random.split(jax.random.fold_in(key, t), c.eval_episodes)
            obs, env_state, r, term, trunc = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
                keys, env_state, action, self.env_params
            )
            ret = ret + jnp.where(done, 0.0, r)
            done = done | term | trunc
            return (obs, env_state, ret, done), None

        init = (obs, env_state, jnp.zeros((c.eval_episodes,)), jnp.zeros((c.eval_episodes,), bool))
        (_, _, ret, _), _ = jax.lax.scan(body, init, jnp.arange(self.eval_steps))
        return ret

    # -- internals -----------------------------------------------------------------------------
    def _actor_apply(self, actor: N.Params, obs: Array) -> tuple[Array, Array]:
        c = self.config
        return N.actor_apply(actor, obs, log_std_min=c.log_std_min, log_std_max=c.log_std_max)

    def _sample(self, actor: N.Params, obs: Array, key: Array) -> tuple[Array, Array]:
        """Batched policy sample: ``obs [B, O] -> (action [B, A], log_prob [B])``."""
        mean, log_std = jax.vmap(self._actor_apply, in_axes=(None, 0))(actor, obs)
        # One normal draw for the whole batch (not one key per row): 12% of a CPU update step.
        eps = jax.random.normal(key, mean.shape, mean.dtype)
        sample = partial(D.tanh_gaussian_from_noise, low=self.low, high=self.high)
        return jax.vmap(sample)(eps, mean, log_std)

    def _env_step(self, state: TrainState, actions: Array, key: Array) -> TrainState:
        c = self.config
        keys = jax.random.split(key, c.num_envs)
        step = jax.vmap(partial(auto_reset_step, self.env), in_axes=(0, 0, 0, None))
        out = step(keys, state.env_state, actions, self.env_params)
        tr = Transition(
            state.obs, actions, out.reward, out.terminated, out.truncated, out.final_obs
        )
        buffer = self.buffer.add(state.buffer, jax.tree.map(lambda x: x[:, None], tr))
        return state._replace(
            buffer=buffer, env_state=out.state, obs=out.obs, env_steps=state.env_steps + c.num_envs
        )

    def _iteration(self, state: TrainState, _: None) -> tuple[TrainState, dict[str, Array]]:
        key, k_act, k_env, k_upd = jax.random.split(state.key, 4)
        actions, _ = self._sample(state.actor, state.obs, k_act)
        state = self._env_step(state._replace(key=key), actions, k_env)
        upd_keys = jax.random.split(k_upd, self.config.updates_per_iteration)
        state, metrics = jax.lax.scan(self._update, state, upd_keys)
        return state, _vmean(metrics)

    def _block(self, state: TrainState, _: None) -> tuple[TrainState, dict[str, Array]]:
        state, metrics = jax.lax.scan(
            self._iteration, state, None, length=self.config.iterations_per_block
        )
        # Evaluation draws from a key folded off the training key without advancing it, so the
        # training stream does not depend on whether or how often we evaluate.
        returns = self.evaluate(state.actor, jax.random.fold_in(state.key, 1_000_003))
        metrics = _vmean(metrics)
        metrics.update(
            env_steps=state.env_steps,
            eval_return=jnp.mean(returns),
            eval_return_std=jnp.std(returns),
        )
        return state, metrics

    def _update(self, state: TrainState, key: Array) -> tuple[TrainState, dict[str, Array]]:
        c, hp = self.config, state.hparams
        k_sample, k_next, k_perturb, k_mask, k_pi = jax.random.split(key, 5)
        batch = self.buffer.sample(state.buffer, k_sample).experience  # leaves [B, n, ...]
        g, discount, last = jax.vmap(partial(L.n_step_return, gamma=hp.gamma))(
            batch.reward, batch.terminated, batch.truncated
        )
        rows = jnp.arange(c.batch_size)
        obs, action = batch.obs[:, 0], batch.action[:, 0]
        next_obs = batch.next_obs[rows, last]
        alpha = jnp.exp(state.log_alpha)
        q_all = jax.vmap(N.critic_apply, in_axes=(None, 0, 0))

        # Critic: soft Bellman target from the target critics at a' ~ pi(s').
        next_action, next_logp = self._sample(state.actor, next_obs, k_next)
        if c.band_limit_samples > 0:
            perturb = partial(
                L.perturb_actions,
                num_samples=c.band_limit_samples,
                sigma=hp.band_limit_sigma,
                low=self.low,
                high=self.high,
            )
            actions_k = jax.vmap(perturb)(jax.random.split(k_perturb, c.batch_size), next_action)
            q_next = jax.vmap(
                jax.vmap(N.critic_apply, in_axes=(None, None, 0)), in_axes=(None, 0, 0)
            )(state.target_critic, next_obs, actions_k)  # [B, K, n]
        else:
            q_next = q_all(state.target_critic, next_obs, next_action)  # [B, n]
        mask = None
        if c.num_min_critics is not None and c.num_min_critics < c.num_critics:
            chosen = jax.random.permutation(k_mask, c.num_critics)[: c.num_min_critics]
            mask = jnp.zeros((c.num_critics,), bool).at[chosen].set(True)
        target = jax.vmap(partial(L.soft_q_target, alpha=alpha, critic_mask=mask))(
            g, discount, q_next, next_logp
        )

        def critic_objective(critic):
            q = q_all(critic, obs, action)
            return jnp.mean(jax.vmap(L.critic_loss)(q, target)), q

        (c_loss, q), grads = jax.value_and_grad(critic_objective, has_aux=True)(state.critic)
        updates, critic_opt = optax.adam(hp.critic_lr).update(grads, state.critic_opt, state.critic)
        critic = optax.apply_updates(state.critic, updates)

        # Actor, against the freshly updated critics; the temperature from the same log-probs.
        def actor_objective(actor):
            a, logp = self._sample(actor, obs, k_pi)
            q_pi = q_all(critic, obs, a)
            return jnp.mean(jax.vmap(partial(L.actor_loss, alpha=alpha))(logp, q_pi)), logp

        (a_loss, logp), grads = jax.value_and_grad(actor_objective, has_aux=True)(state.actor)
        updates, actor_opt = optax.adam(hp.actor_lr).update(grads, state.actor_opt, state.actor)
        actor = optax.apply_updates(state.actor, updates)

        def alpha_objective(log_alpha):
            loss = partial(L.temperature_loss, target_entropy=hp.target_entropy)
            return jnp.mean(jax.vmap(loss, in_axes=(None, 0))(log_alpha, logp))

        grad = jax.grad(alpha_objective)(state.log_alpha)
        updates, alpha_opt = optax.adam(hp.alpha_lr).update(grad, state.alpha_opt)
        log_alpha = optax.apply_updates(state.log_alpha, updates)

        state = state._replace(
            actor=actor,
            critic=critic,
            target_critic=L.polyak_update(state.target_critic, critic, tau=hp.tau),
            log_alpha=log_alpha,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            alpha_opt=alpha_opt,
            num_updates=state.num_updates + 1,
        )
        metrics = {
            "critic_loss": c_loss,
            "actor_loss": a_loss,
            "alpha": alpha,
            "entropy": -jnp.mean(logp),
            "q_mean": jnp.mean(q),
        }
        return state, metrics


def make_train(config: SACConfig, env: Environment, env_params: Any | None = None) -> SACTrain:
    """``train = make_train(config, env, env_params)``; ``state, metrics = train(key)``.

    Raises ValueError for a non-continuous action space or non-flat observations.
    """
    if not isinstance(config, SACConfig):
        raise ValueError(f"config must be a SACConfig, got {type(config).__name__}")
    return SACTrain(config, env, env.default_params() if env_params is None else env_params)
