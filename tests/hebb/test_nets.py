"""The SoftHebb net: presets, one all-blocks Hebbian step vs its composition, jit/vmap, errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hebb_jit import batch_indices, init_net, jit, uniform

from jaxsel.hebb import layers, nets, rules, train


def tiny_net(**kw) -> nets.NetConfig:
    b0 = nets.BlockConfig(
        4,
        3,
        t_invert=1.0,
        lr=0.08,
        triangle_power=0.7,
        pool_window=2,
        pool_stride=2,
        pool_padding=0,
    )
    b1 = nets.BlockConfig(
        6,
        3,
        t_invert=0.65,
        lr=0.005,
        triangle_power=1.4,
        pool="avg",
        pool_window=2,
        pool_stride=2,
        pool_padding=0,
    )
    return nets.NetConfig(blocks=(b0, b1), in_shape=(8, 8, 1), **kw)


# One jitted step shared by the tests below (NetConfig is frozen, hence a hashable static arg).
_hebbian_step = jit(nets.hebbian_step, static_argnums=2)


def test_preset_shapes():
    assert nets.cifar10_preset().feature_shape() == (4, 4, 1536)  # 24576 features, as the paper
    assert nets.two_layer_preset().feature_shape() == (7, 7, 384)
    assert nets.digits_preset().feature_shape() == (2, 2, 128)
    assert nets.small_preset(width=2).feature_shape() == (7, 7, 256)
    c = nets.cifar10_preset()
    assert [b.out_channels for b in c.blocks] == [96, 384, 1536]
    assert [b.t_invert for b in c.blocks] == [1.0, 0.65, 0.25]
    assert [b.lr for b in c.blocks] == [0.08, 0.005, 0.01]
    assert [b.pool for b in c.blocks] == ["max", "max", "avg"]
    assert [b.pool for b in c.with_pool("soft").blocks] == ["soft", "soft", "avg"]


def test_hebbian_step_is_the_composition_of_block_steps():
    cfg = tiny_net()
    state = init_net(jax.random.key(0), cfg)
    x = uniform(jax.random.key(1), (5, 8, 8, 1))
    new, stats = _hebbian_step(state, x, cfg)

    @jit
    def by_hand(state, x):
        # block 0: BN with batch statistics, reflect pad, one conv_step
        xn, bn0 = layers.batch_norm(x, state.bn[0], train=True)
        xp = layers.reflect_pad(xn, 1)
        w0 = rules.conv_step(xp, state.weights[0], t_invert=1.0, lr=0.08)
        # block 1 sees block 0's output computed with the PRE-update kernel
        u0 = rules.conv2d(xp, state.weights[0])
        h = layers.pool2d(rules.triangle(u0, power=0.7), kind="max", window=2, stride=2)
        hn, bn1 = layers.batch_norm(h, state.bn[1], train=True)
        w1 = rules.conv_step(layers.reflect_pad(hn, 1), state.weights[1], t_invert=0.65, lr=0.005)
        return w0, w1, bn0, bn1, u0

    w0, w1, bn0, bn1, u0 = by_hand(state, x)
    np.testing.assert_allclose(new.weights[0], w0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.weights[1], w1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.bn[1].var, bn1.var, rtol=1e-5)
    np.testing.assert_allclose(new.bn[0].mean, bn0.mean, rtol=1e-5)
    assert int(stats.wins[0].sum()) == 5 * 8 * 8 and int(stats.wins[1].sum()) == 5 * 4 * 4
    np.testing.assert_array_equal(
        stats.wins[0], np.bincount(np.asarray(u0.argmax(-1)).ravel(), minlength=4)
    )


_one_block_step = jit(nets.hebbian_step, static_argnums=2, static_argnames="blocks")


def test_hebbian_step_of_one_block_freezes_the_others():
    """``blocks=(i,)`` (one stage of the authors' "successive" mode): only block i learns; the
    blocks below run with running BatchNorm statistics, those above are not run."""
    cfg = tiny_net()
    state = init_net(jax.random.key(0), cfg)
    state = state._replace(bn=(state.bn[0]._replace(mean=state.bn[0].mean + 0.3), state.bn[1]))
    x = uniform(jax.random.key(1), (5, 8, 8, 1))
    all_blocks, _ = _hebbian_step(state, x, cfg)
    only0, st0 = _one_block_step(state, x, cfg, blocks=(0,))
    np.testing.assert_allclose(only0.weights[0], all_blocks.weights[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(only0.weights[1], state.weights[1])
    np.testing.assert_array_equal(only0.bn[1].mean, state.bn[1].mean)
    assert int(st0.wins[1].sum()) == 0 and int(st0.wins[0].sum()) == 5 * 8 * 8

    only1, st1 = _one_block_step(state, x, cfg, blocks=(1,))

    @jit
    def by_hand(state, x):
        xn, _ = layers.batch_norm(x, state.bn[0], train=False)  # frozen: running statistics
        u0 = rules.conv2d(layers.reflect_pad(xn, 1), state.weights[0])
        h = layers.pool2d(rules.triangle(u0, power=0.7), kind="max", window=2, stride=2)
        hn, bn1 = layers.batch_norm(h, state.bn[1], train=True)
        w1 = rules.conv_step(layers.reflect_pad(hn, 1), state.weights[1], t_invert=0.65, lr=0.005)
        return w1, bn1

    w1, bn1 = by_hand(state, x)
    np.testing.assert_array_equal(only1.weights[0], state.weights[0])
    np.testing.assert_array_equal(only1.bn[0].mean, state.bn[0].mean)
    np.testing.assert_allclose(only1.weights[1], w1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(only1.bn[1].var, bn1.var, rtol=1e-5)
    assert int(st1.wins[0].sum()) == 0 and int(st1.wins[1].sum()) == 5 * 4 * 4
    with pytest.raises(ValueError, match="blocks must be"):
        nets.hebbian_step(state, x, cfg, blocks=(2,))


def test_successive_mode_trains_one_block_per_stage():
    cfg = tiny_net()
    images = uniform(jax.random.key(2), (16, 8, 8, 1))
    fn = train.make_unsupervised_train(cfg, batch_size=4, epochs=2, mode="successive")
    state, wins = jit(fn)(jax.random.key(3), images)
    # by hand: stage 0 trains block 0 alone, stage 1 block 1 on the frozen block 0
    k_init, k_data = jax.random.split(jax.random.key(3))
    s = init_net(k_init, cfg)
    w = tuple(jnp.zeros((b.out_channels,), jnp.int32) for b in cfg.blocks)
    for blocks, stage_key in train.stage_schedule(cfg, "successive"):
        before = s
        chunk = jit(
            lambda s, w, b, blocks=blocks: train.unsupervised_chunk(
                s, w, images, b, cfg, blocks=blocks
            )
        )
        for e in range(2):
            s, w = chunk(s, w, train.stage_batches(k_data, 16, 4, e, stage_key))
        if blocks == (1,):
            np.testing.assert_array_equal(s.weights[0], before.weights[0])
            np.testing.assert_array_equal(s.bn[0].var, before.bn[0].var)
        else:
            np.testing.assert_array_equal(s.weights[1], before.weights[1])
    for a, b in zip(state.weights, s.weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # each block's wins were counted during its own stage: every position of 2 epochs
    assert int(wins[0].sum()) == 2 * 16 * 8 * 8 and int(wins[1].sum()) == 2 * 16 * 4 * 4
    with pytest.raises(ValueError, match="mode"):
        train.make_unsupervised_train(cfg, mode="parallel")


def test_make_unsupervised_train_chunks_and_vmap_over_seeds():
    cfg = tiny_net()
    images = uniform(jax.random.key(2), (24, 8, 8, 1))  # 6 batches: one chunk shape
    fn = train.make_unsupervised_train(cfg, batch_size=4, epochs=2)
    state, wins = jit(fn)(jax.random.key(3), images)
    # the same run in chunks of 3 steps (as the script does, e.g. after resuming)
    k_init, k_data = jax.random.split(jax.random.key(3))
    s = init_net(k_init, cfg)
    w = tuple(jnp.zeros((b.out_channels,), jnp.int32) for b in cfg.blocks)
    chunk = jit(lambda s, w, b: train.unsupervised_chunk(s, w, images, b, cfg))
    for e in range(2):
        batches = batch_indices(k_data, 24, 4, e)
        for i in range(0, 6, 3):
            s, w = chunk(s, w, batches[i : i + 3])
    for a, b in zip(state.weights, s.weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(wins[0], w[0])
    assert all(bool(jnp.all(jnp.isfinite(w))) for w in state.weights)


@pytest.mark.slow
def test_unsupervised_train_vmaps_over_seeds():
    cfg = tiny_net()
    images = uniform(jax.random.key(2), (20, 8, 8, 1))
    fn = train.make_unsupervised_train(cfg, batch_size=4, epochs=1)
    keys = jax.random.split(jax.random.key(4), 2)
    many, _ = jit(jax.vmap(fn, in_axes=(0, None)))(keys, images)
    one, _ = jit(fn)(keys[1], images)
    np.testing.assert_allclose(many.weights[1][1], one.weights[1], rtol=1e-4, atol=1e-5)


def test_features_use_running_statistics_and_are_finite_for_extreme_images():
    cfg = tiny_net()
    state = init_net(jax.random.key(5), cfg)
    x = 1e6 * jax.random.normal(jax.random.key(6), (5, 8, 8, 1))
    feats = jit(lambda s, x: nets.features(s, x, cfg))
    f = feats(state, x)
    assert f.shape == (5, 2, 2, 6) and bool(jnp.all(jnp.isfinite(f)))
    # eval mode: an example does not depend on the rest of its batch
    f1 = feats(state, x.at[1:].set(0.0))
    np.testing.assert_allclose(f1[0], f[0], rtol=1e-5)
    new, _ = _hebbian_step(state, x, cfg)
    assert all(bool(jnp.all(jnp.isfinite(w))) for w in new.weights)


def test_winner_stats():
    s = nets.winner_stats(jnp.asarray([5, 5, 0, 10]))
    assert s["never_won"] == 1 and s["max_share"] == 0.5 and s["min_share"] == 0.0
    assert nets.winner_stats(jnp.ones(8))["normalized_entropy"] == pytest.approx(1.0)


def test_config_errors():
    with pytest.raises(ValueError, match="rule"):
        nets.BlockConfig(4, 3, t_invert=1.0, lr=0.1, rule="hard")
    with pytest.raises(ValueError, match="pool"):
        nets.BlockConfig(4, 3, t_invert=1.0, lr=0.1, pool="median")
    with pytest.raises(ValueError, match="in_shape"):
        dataclasses.replace(tiny_net(), in_shape=(8, 8))
    cfg = tiny_net()
    with pytest.raises(ValueError, match="images must be"):
        nets.features(init_net(jax.random.key(0), cfg), jnp.ones((2, 9, 9, 1)), cfg)
