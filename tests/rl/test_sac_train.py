"""SAC training loop: jit == no-jit, vmap over seeds (and traced learning rates) == sequential runs,
checkpoint resume is bit-exact, seeds sharded over 4 devices == one device, bad input raises.

All on a tiny config (8-unit networks, 48 environment steps, 10-step episodes) so that compile time,
not run time, dominates; the compiled functions are shared through module fixtures.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsel.rl import envs, sac
from jaxsel.utils import restore_tree, save_tree

TINY = sac.SACConfig.tiny()
ENV = envs.Pendulum()
PARAMS = envs.PendulumParams(max_steps_in_episode=10)


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def trainer():
    return sac.make_train(TINY, ENV, PARAMS)


@pytest.fixture(scope="module")
def jitted(trainer):
    return jax.jit(trainer)


@pytest.fixture(scope="module")
def reference_run(trainer, jitted):
    # hparams passed explicitly, so the sequential runs below hit the same compiled function.
    return jitted(jax.random.PRNGKey(0), trainer.default_hparams())


@pytest.fixture(scope="module")
def pieces(trainer):
    """The chunked entry points: jitted ``init`` and one-block ``run``."""
    return jax.jit(trainer.init), jax.jit(lambda s: trainer.run(s, 1))


@pytest.fixture(scope="module")
def vmapped_run(trainer):
    """4 seeds vmapped on one device; seed 1 with other (traced) learning rates."""
    keys = jnp.stack([jax.random.PRNGKey(i) for i in range(4)])
    hps = jax.tree.map(lambda x: jnp.stack([x] * 4), trainer.default_hparams())
    hps = hps._replace(
        actor_lr=hps.actor_lr.at[1].set(3e-3), critic_lr=hps.critic_lr.at[1].set(5e-4)
    )
    # Left uncommitted (default device 0), so slices reuse the compiled single-seed function.
    return keys, hps, jax.jit(jax.vmap(trainer))(keys, hps)


def test_train_runs_and_reports_metrics(trainer, reference_run, pieces):
    state, metrics = reference_run
    assert metrics["eval_return"].shape == (TINY.num_evals,)
    np.testing.assert_array_equal(metrics["env_steps"], [32, 48])
    assert int(state.env_steps) == TINY.total_timesteps
    # (48 - 16) steps / 2 envs = 16 iterations, one update each.
    assert int(state.num_updates) == 16
    for k, v in metrics.items():
        assert np.all(np.isfinite(v)), k
    # Pendulum rewards are in [-16.3, 0]: a 10-step return is too.
    assert np.all(metrics["eval_return"] <= 0) and np.all(metrics["eval_return"] >= -164)
    # Parameters moved, and the target critic trails the online one.
    init = pieces[0](jax.random.PRNGKey(0))
    assert int(init.env_steps) == TINY.learning_starts
    assert not np.allclose(init.actor[0]["w"], state.actor[0]["w"])
    assert not np.allclose(state.target_critic[0]["w"], state.critic[0]["w"])


def test_jit_equals_no_jit(trainer, reference_run):
    state, metrics = trainer(jax.random.PRNGKey(0))
    close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    jax.tree.map(close, (state.actor, metrics), (reference_run[0].actor, reference_run[1]))


def test_vmap_over_seeds_and_learning_rates_equals_sequential(jitted, reference_run, vmapped_run):
    keys, hps, (states, metrics) = vmapped_run
    close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for i in (1, 2):  # seed 1 has its own learning rates
        seq_state, seq_metrics = jitted(keys[i], jax.tree.map(lambda x, i=i: x[i], hps))
        jax.tree.map(
            lambda x, y, i=i: close(x[i], y),
            (states.actor, metrics),
            (seq_state.actor, seq_metrics),
        )
    # Seed 0 with the default hparams is the reference run; different seeds differ.
    close(metrics["eval_return"][0], reference_run[1]["eval_return"])
    assert not np.allclose(states.actor[0]["w"][0], states.actor[0]["w"][2])


def test_checkpoint_resume_is_bit_exact(trainer, reference_run, pieces, tmp_path):
    init, run1 = pieces
    key = jax.random.PRNGKey(0)
    half, m1 = run1(init(key))
    save_tree(tmp_path / "ckpt", half)
    del half
    restored = restore_tree(tmp_path / "ckpt", jax.eval_shape(trainer.init, key))
    final, m2 = run1(restored)
    # Interrupted (T/2, checkpoint, restore, T/2) == uninterrupted one-shot run, bit for bit.
    full_state, full_metrics = reference_run
    _assert_trees_equal(final, full_state)
    _assert_trees_equal(jax.tree.map(lambda a, b: jnp.concatenate([a, b]), m1, m2), full_metrics)


def test_seeds_sharded_over_4_devices_equal_one_device(trainer, vmapped_run, cpu_devices):
    keys, hps, one = vmapped_run
    mesh = Mesh(np.array(cpu_devices[:4]), ("seeds",))
    keys, hps = jax.device_put((keys, hps), NamedSharding(mesh, PartitionSpec("seeds")))
    four = jax.jit(jax.vmap(trainer))(keys, hps)
    assert len(four[1]["eval_return"].sharding.device_set) == 4
    close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, (one[0].actor, one[1]), (four[0].actor, four[1]))


@pytest.mark.slow
def test_variants_n_step_band_limited_critic_subset_run():
    cfg = dataclasses.replace(
        TINY,
        n_step=3,
        band_limit_samples=4,
        num_critics=3,
        num_min_critics=2,
        learning_starts=24,
        total_timesteps=56,
    )
    state, metrics = jax.jit(sac.make_train(cfg, ENV, PARAMS))(jax.random.PRNGKey(0))
    for k, v in metrics.items():
        assert np.all(np.isfinite(v)), k
    assert jax.tree.leaves(state.critic)[0].shape[0] == 3


class _DiscreteEnv(envs.Pendulum):
    def action_space(self, params):
        return envs.Discrete(3)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match=r"continuous \(Box\) action space"):
        sac.make_train(TINY, _DiscreteEnv(), PARAMS)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        dataclasses.replace(TINY, batch_size=0)
    with pytest.raises(ValueError, match="hidden_sizes"):
        dataclasses.replace(TINY, hidden_sizes=(8, -1))
    with pytest.raises(ValueError, match="num_min_critics"):
        dataclasses.replace(TINY, num_min_critics=3)
    with pytest.raises(ValueError, match="multiple of num_envs"):
        dataclasses.replace(TINY, learning_starts=15)
    with pytest.raises(ValueError, match="num_envs \\* num_evals"):
        dataclasses.replace(TINY, total_timesteps=50)
    with pytest.raises(ValueError, match="utd_ratio"):
        dataclasses.replace(TINY, utd_ratio=0.25)
    with pytest.raises(ValueError, match="config must be a SACConfig"):
        sac.make_train({"batch_size": 8}, ENV, PARAMS)
    with pytest.raises(ValueError, match="num_blocks"):
        sac.make_train(TINY, ENV, PARAMS).run(None, 0)
    with pytest.raises(ValueError, match="sizes"):
        sac.actor_init(jax.random.PRNGKey(0), 3, 0, (8,))


@pytest.mark.slow
def test_learns_pendulum_two_seeds():
    """Slow: 2 seeds x 8k steps reach a median deterministic return better than -400 (random: ~-1200)."""
    cfg = sac.SACConfig(
        total_timesteps=8_000,
        learning_starts=1_000,
        hidden_sizes=(64, 64),
        num_evals=7,
        actor_lr=1e-3,
        critic_lr=1e-3,
        alpha_lr=1e-3,
    )
    env, params = envs.make("Pendulum-v1")
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    _, metrics = jax.jit(jax.vmap(sac.make_train(cfg, env, params)))(keys)
    assert np.median(metrics["eval_return"][:, -1]) > -400
