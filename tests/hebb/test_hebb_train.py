"""Training loops: probe schedule, probe/backprop sanity, BN calibration, orbax round trip, digits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hebb_jit import batch_indices, init_net, jit, uniform

from jaxsel.hebb import data, nets, train
from jaxsel.utils import restore_tree, save_tree


def test_lr_halving_epochs_follow_the_authors_step_schedule():
    assert train.lr_halving_epochs(50) == (10, 17, 25, 30, 35, 40, 45)
    assert train.lr_halving_epochs(30) == (15, 22)
    assert train.lr_halving_epochs(10) == ()
    sched = train.probe_schedule(train.ProbeConfig(epochs=50), steps_per_epoch=3)
    assert float(sched(3 * 10 - 1)) == pytest.approx(1e-3)
    assert float(sched(3 * 10)) == pytest.approx(5e-4)
    assert float(sched(3 * 49)) == pytest.approx(1e-3 / 2**7)


def test_probe_schedule_with_explicit_halvings():
    cfg = train.ProbeConfig(epochs=5, halve_at=(2, 4))
    sched = train.probe_schedule(cfg, steps_per_epoch=10)
    assert [float(sched(e * 10)) for e in range(5)] == pytest.approx(
        [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    )
    with pytest.raises(ValueError, match="halve_at"):
        train.ProbeConfig(epochs=5, halve_at=(5,))


def test_backprop_init_torch_default_and_softhebb():
    cfg = nets.two_layer_preset()
    probe = train.ProbeConfig(epochs=1)
    key = jax.random.key(0)
    torch_init = jit(lambda k: train.backprop_init(k, cfg, probe, 10, init="torch"))(key)
    hebb_init = jit(lambda k: train.backprop_init(k, cfg, probe, 10))(key)
    for w, b in zip(torch_init.net.weights, cfg.blocks):
        fan_in = b.kernel_size**2 * w.shape[2]
        w = np.asarray(w)
        assert np.abs(w).max() <= 1 / np.sqrt(fan_in)
        # U(-a, a) has variance a^2 / 3: neuron norms ~ sqrt(1/3)
        norms = np.sqrt((w.reshape(-1, w.shape[-1]) ** 2).sum(0))
        assert abs(norms.mean() - np.sqrt(1 / 3)) < 0.05
    same = init_net(jax.random.split(key)[0], cfg).weights[0]  # SoftHebb's own init
    np.testing.assert_allclose(hebb_init.net.weights[0], same, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="init"):
        train.backprop_init(key, cfg, probe, 10, init="xavier")


def test_probe_learns_separable_data_and_vmaps_over_seeds():
    rng = np.random.default_rng(0)
    centers = 3.0 * rng.normal(size=(3, 12))
    y = rng.integers(0, 3, 300).astype(np.int32)
    x = (centers[y] + rng.normal(size=(300, 12))).astype(np.float32)
    fn = train.make_probe_train(train.ProbeConfig(epochs=5, batch_size=32, lr=1e-2), 3)
    heads = jit(jax.vmap(fn, in_axes=(0, None, None)))(
        jax.random.split(jax.random.key(0), 2), jnp.asarray(x), jnp.asarray(y)
    )
    for i in range(2):
        head = jax.tree.map(lambda a, i=i: a[i], heads)
        assert train.probe_accuracy(head, x, y) > 0.95


def test_calibrate_batch_norm_changes_only_statistics():
    cfg = nets.digits_preset(8)
    state = init_net(jax.random.key(0), cfg)
    images = uniform(jax.random.key(1), (30, 8, 8, 1))
    batches = batch_indices(jax.random.key(2), 30, 10, 0)
    cal = jit(lambda s, x, b: train.calibrate_batch_norm(s, x, b, cfg))(state, images, batches)
    np.testing.assert_array_equal(cal.weights[0], state.weights[0])
    assert float(jnp.abs(cal.bn[0].mean - state.bn[0].mean).max()) > 0.05


@pytest.mark.slow  # compile-heavy; the im2col conv gradients are checked in test_rules
def test_backprop_control_runs_and_learns():
    d = data.load_digits()
    cfg = nets.digits_preset(8)
    probe = train.ProbeConfig(epochs=1, batch_size=16, lr=3e-3)
    params = jit(train.make_backprop_train(cfg, probe))(
        jax.random.key(0), jnp.asarray(d.x_train[:640]), jnp.asarray(d.y_train[:640])
    )
    assert train.backprop_accuracy(params, d.x_test, d.y_test, cfg) > 0.5


@pytest.mark.slow  # orbax's async checkpointer waits seconds of wall time
def test_net_state_orbax_round_trip(tmp_path):
    cfg = nets.digits_preset(4)
    state = init_net(jax.random.key(0), cfg)
    save_tree(tmp_path / "ck", {"state": state})
    back = restore_tree(tmp_path / "ck", {"state": state})["state"]
    np.testing.assert_array_equal(back.weights[0], state.weights[0])
    np.testing.assert_array_equal(back.bn[0].var, state.bn[0].var)


def digits_run(epochs: int, probe_epochs: int, seed: int = 0) -> tuple[float, float]:
    """SoftHebb vs random frozen weights (same init, calibrated BatchNorm) on the digits."""
    d = data.load_digits()
    cfg = nets.digits_preset()
    images = jnp.asarray(d.x_train)
    key = jax.random.key(seed)
    # Plain jax.jit here: this is the acceptance run, with the library's optimised numerics.
    state, _ = jax.jit(train.make_unsupervised_train(cfg, batch_size=10, epochs=epochs))(
        key, images
    )
    k_init, k_data = jax.random.split(key)
    batches = batch_indices(k_data, images.shape[0], 10, 0)
    rnd = jit(lambda k, b: train.calibrate_batch_norm(nets.init_net(k, cfg), images, b, cfg))(
        k_init, batches
    )
    probe = jit(train.make_probe_train(train.ProbeConfig(epochs=probe_epochs), 10))
    accs = []
    for s in (state, rnd):
        ftr = train.extract_features(s, d.x_train, cfg)
        fte = train.extract_features(s, d.x_test, cfg)
        head = probe(jax.random.key(1), jnp.asarray(ftr), jnp.asarray(d.y_train))
        accs.append(train.probe_accuracy(head, fte, d.y_test))
    return accs[0], accs[1]


def test_digits_softhebb_beats_random_weights():
    """Acceptance (CI-sized): SoftHebb features + linear probe >= 97% on the digits test split,
    above the same net with random frozen weights (BatchNorm statistics calibrated on the data)."""
    hebb_acc, rand_acc = digits_run(epochs=10, probe_epochs=30)
    assert hebb_acc >= 0.97
    assert hebb_acc > rand_acc


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_digits_softhebb_beats_random_weights_other_seeds(seed):
    hebb_acc, rand_acc = digits_run(epochs=10, probe_epochs=50, seed=seed)
    assert hebb_acc >= 0.97
    assert hebb_acc > rand_acc


def test_dropout_fair_coins_are_unbiased_independent_bits():
    key = jax.random.key(3)
    coins = np.asarray(jit(lambda k: train._fair_coins(k, (64, 1000)))(key))
    assert coins.dtype == bool and coins.shape == (64, 1000)
    n = coins.size
    assert abs(coins.mean() - 0.5) < 4 * 0.5 / np.sqrt(n)  # 4 sigma
    # neighbouring bits come from the same uint32 word: they must still be uncorrelated
    a, b = coins.reshape(-1)[:-1].astype(float), coins.reshape(-1)[1:].astype(float)
    assert abs(np.corrcoef(a, b)[0, 1]) < 4 / np.sqrt(n)
    # different keys give different masks; the same key the same mask
    other = np.asarray(train._fair_coins(jax.random.key(4), (64, 1000)))
    assert (coins != other).mean() > 0.45
    np.testing.assert_array_equal(coins, np.asarray(train._fair_coins(key, (64, 1000))))
    x = jnp.ones((64, 1000))
    y = np.asarray(train._dropout(key, x, 0.5))
    np.testing.assert_array_equal(y, np.where(coins, 2.0, 0.0))
    y3 = np.asarray(train._dropout(key, x, 0.3))  # general rate: bernoulli path
    np.testing.assert_allclose(y3[y3 != 0], 1 / 0.7, rtol=1e-6)
    assert abs((y3 == 0).mean() - 0.3) < 0.01
