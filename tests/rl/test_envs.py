"""Our pure-JAX Pendulum-v1 / MountainCarContinuous-v0 against gymnasium, step by step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.rl import envs

gym = pytest.importorskip("gymnasium")


def _rollout_compare(name, set_gym_state, get_state, n_steps, action_fn, atol):
    env, params = envs.make(name)
    genv = gym.make(name).unwrapped
    genv.reset(seed=0)
    step = jax.jit(lambda s, a: env.step(jax.random.key(0), s, a, params))
    key = jax.random.key(1)
    _, state = env.reset(key, params)
    rng = np.random.default_rng(0)
    n_term = 0
    for t in range(n_steps):
        set_gym_state(genv, state)
        action = action_fn(rng, t)
        g_obs, g_rew, g_term, _g_trunc, _ = genv.step(action)
        obs, state, rew, term, trunc = step(state, jnp.asarray(action, jnp.float32))
        np.testing.assert_allclose(np.asarray(obs), g_obs, atol=atol, rtol=1e-5)
        np.testing.assert_allclose(float(rew), g_rew, atol=atol, rtol=1e-5)
        assert bool(term) == g_term
        assert bool(trunc) == (t + 1 >= params.max_steps_in_episode)
        n_term += int(g_term)
        if g_term:  # restart from a fresh state, as a learner would
            _, state = env.reset(jax.random.fold_in(key, t), params)
    return n_term


def test_pendulum_matches_gymnasium_step_by_step():
    def set_state(genv, s):
        genv.state = np.array([float(s.theta), float(s.theta_dot)], np.float64)

    # Actions beyond the torque limit exercise the clip; 250 steps cross the 200-step time limit.
    _rollout_compare(
        "Pendulum-v1",
        set_state,
        None,
        250,
        lambda rng, t: rng.uniform(-3.0, 3.0, size=(1,)).astype(np.float32),
        atol=1e-4,
    )


def test_mountain_car_matches_gymnasium_step_by_step():
    def set_state(genv, s):
        genv.state = np.array([float(s.position), float(s.velocity)], np.float32)

    # A bang-bang policy that pumps energy reaches the goal, so termination is exercised too.
    def policy(rng, t):
        return np.array([1.5 if (t // 40) % 2 else -1.5], np.float32)

    n_term = _rollout_compare("MountainCarContinuous-v0", set_state, None, 600, policy, atol=1e-5)
    assert n_term >= 1


@pytest.mark.parametrize("name", ["Pendulum-v1", "MountainCarContinuous-v0"])
def test_reset_distribution_and_spaces_match_gymnasium(name):
    env, params = envs.make(name)
    genv = gym.make(name)
    obs = jax.vmap(lambda k: env.reset(k, params)[0])(jax.random.split(jax.random.key(0), 512))
    g_obs = np.stack([genv.reset(seed=s)[0] for s in range(64)])
    # Same support: our samples span the range gymnasium's do.
    lo, hi = np.asarray(obs).min(0), np.asarray(obs).max(0)
    assert np.all(lo <= g_obs.min(0) + 0.05) and np.all(hi >= g_obs.max(0) - 0.05)
    assert np.all(lo >= genv.observation_space.low) and np.all(hi <= genv.observation_space.high)
    # gymnasium stores its bounds as float32, rounded from the same decimal constants that ours
    # hold as Python floats (e.g. -1.2 -> -1.2000000477): rounded to float32 they are equal.
    f32 = lambda bound: np.asarray(bound, np.float32)
    np.testing.assert_array_equal(f32(env.action_space(params).low), genv.action_space.low)
    np.testing.assert_array_equal(f32(env.action_space(params).high), genv.action_space.high)
    np.testing.assert_array_equal(
        f32(env.observation_space(params).low), genv.observation_space.low
    )
    assert genv.spec.max_episode_steps == params.max_steps_in_episode


def test_auto_reset_returns_true_final_obs_and_bootstraps_through_truncation():
    env, _ = envs.make("Pendulum-v1")
    params = envs.PendulumParams(max_steps_in_episode=3)
    key = jax.random.key(0)
    _obs, state = env.reset(key, params)
    action = jnp.zeros((1,))
    for t in range(3):
        out = envs.auto_reset_step(env, jax.random.fold_in(key, t), state, action, params)
        expected_obs, _expected_state, *_ = env.step(key, state, action, params)
        np.testing.assert_array_equal(out.final_obs, expected_obs)
        if t < 2:
            assert not bool(out.truncated)
            np.testing.assert_array_equal(out.obs, out.final_obs)
        else:
            assert bool(out.truncated) and not bool(out.terminated)
            assert int(out.state.time) == 0  # reset
            assert not np.allclose(out.obs, out.final_obs)
        state = out.state


def test_vmap_and_jit_over_envs():
    env, params = envs.make("Pendulum-v1")
    keys = jax.random.split(jax.random.key(0), 4)
    _obs, states = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    step = lambda k, s, a: env.step(k, s, a, params)
    a = jnp.linspace(-1, 1, 4)[:, None]
    out_v = jax.vmap(step)(keys, states, a)
    out_j = jax.jit(jax.vmap(step))(keys, states, a)
    # vmap, unbatched and jit(vmap) run the same float32 operations, but each compilation may
    # fuse them differently (a multiply-add contracted to an FMA, an inlined sin/cos polynomial),
    # so each may round differently, by at most u |intermediate| (u = 2**-24; XLA's sin/cos: up
    # to 8u). From these reset states (|theta| <= pi, |theta_dot| <= 1, |u| <= 1) the cost
    # differs most: the angle normalisation rounds three values below 2 pi (<= 19u), the square
    # amplifies that by 2 |angle| <= 2 pi (<= 120u), and the squares and sums of a cost < 10.1
    # add <= 20u. The new theta_dot differs by <= 15 * 8u * dt (sin) + 3u, and theta, cos, sin
    # by <= 15u more. Hence 160u (~1e-5) absolute.
    close = lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=160 * 2.0**-24)
    for i in range(4):
        s_i = jax.tree.map(lambda x, i=i: x[i], states)
        out_i = step(keys[i], s_i, a[i])
        close(out_v[0][i], out_i[0])
    jax.tree.map(close, out_v, out_j)


def test_make_rejects_unknown_and_box_validates():
    with pytest.raises(ValueError, match="unknown environment"):
        envs.make("CartPole-v1")
    with pytest.raises(ValueError, match="low <= high"):
        envs.Box((1.0,), (0.0,))
