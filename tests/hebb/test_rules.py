"""SoftHebb rules against an independent NumPy implementation, plus jit/vmap/robustness checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hebb_jit import jit

from jaxsel.hebb import rules

# ----------------------------------------------------------------------------- NumPy reference


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_targets(u, rule, t):
    """Rows are (sample, position); columns are neurons. Loop per row: no vectorised tricks."""
    y = np_softmax(t * u)
    if rule == "soft":
        return y
    out = -y.copy()
    for r in range(u.shape[0]):
        k = int(np.argmax(u[r]))
        out[r, k] = y[r, k]
    return out


def np_lr(w_rows, lr, p):
    """w_rows: (out, fan_in)."""
    return lr * (np.abs(np.sqrt((w_rows**2).sum(1)) - 1.0) + 1e-10) ** p


def np_update(patches, w_rows, rule, t, lr, p):
    """The authors' step on explicit patches (rows, fan_in) and weights (out, fan_in)."""
    u = patches @ w_rows.T
    y = np_targets(u, rule, t)
    dw = y.T @ patches - (y * u).sum(0)[:, None] * w_rows
    dw = dw / (np.abs(dw).max() + 1e-30)
    return w_rows + np_lr(w_rows, lr, p)[:, None] * dw


def np_patches(x, k, stride):
    """x: (B, H, W, C) -> rows (B*Ho*Wo, k*k*C) in (i, j, c) order, plain loops."""
    b, h, w, _c = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    rows = []
    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                rows.append(
                    x[n, i * stride : i * stride + k, j * stride : j * stride + k, :].reshape(-1)
                )
    return np.array(rows)


# --------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("rule", ["softkrotov", "soft"])
@pytest.mark.parametrize("t_invert", [0.5, 3.0])
def test_dense_step_matches_numpy(rule, t_invert):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    w = rng.normal(size=(5, 4)).astype(np.float32)
    got = jit(lambda x, w: rules.dense_step(x, w, rule=rule, t_invert=t_invert, lr=0.1))(x, w)
    want = np_update(x.astype(np.float64), w.T.astype(np.float64), rule, t_invert, 0.1, 0.5).T
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rule", ["softkrotov", "soft"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_step_matches_numpy(rule, stride):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
    w = (0.7 * rng.normal(size=(3, 3, 3, 5))).astype(np.float32)
    got = jit(
        lambda x, w: rules.conv_step(
            x, w, rule=rule, t_invert=1.3, lr=0.05, power_lr=0.7, strides=(stride, stride)
        )
    )(x, w)
    patches = np_patches(x.astype(np.float64), 3, stride)
    w_rows = w.reshape(-1, 5).T.astype(np.float64)
    want = np_update(patches, w_rows, rule, 1.3, 0.05, 0.7).T.reshape(w.shape)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_targets_match_numpy_and_signs():
    rng = np.random.default_rng(2)
    u = rng.normal(size=(7, 6)).astype(np.float32)
    sk = np.asarray(rules.softkrotov_wta(jnp.asarray(u), t_invert=2.0))
    np.testing.assert_allclose(sk, np_targets(u.astype(np.float64), "softkrotov", 2.0), atol=1e-6)
    assert np.all((sk > 0).sum(-1) == 1)  # exactly one Hebbian winner per row
    s = np.asarray(rules.soft_wta(jnp.asarray(u), t_invert=2.0))
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-6)
    # a non-last neuron axis gives the same answer transposed
    skT = np.asarray(rules.softkrotov_wta(jnp.asarray(u.T), t_invert=2.0, axis=0))
    np.testing.assert_allclose(skT, sk.T, atol=1e-7)


def test_triangle_matches_numpy_and_has_finite_gradient():
    rng = np.random.default_rng(3)
    u = rng.normal(size=(4, 9)).astype(np.float32)
    for p in (0.7, 1.0, 1.4):
        r = u - u.mean(-1, keepdims=True)
        want = np.where(r > 0, np.abs(r) ** p, 0.0)
        np.testing.assert_allclose(
            np.asarray(rules.triangle(jnp.asarray(u), power=p)), want, rtol=1e-5, atol=1e-6
        )
    g = jax.grad(lambda z: rules.triangle(z, power=0.7).sum())(jnp.zeros((3, 4)))
    assert np.all(np.isfinite(np.asarray(g)))


def test_weight_norm_lr_and_init():
    w = jnp.stack([jnp.full((4,), 0.5), jnp.full((4,), 2.0)], axis=1)  # norms 1.0 and 4.0
    lr = np.asarray(rules.weight_norm_lr(w, lr=0.1, power_lr=0.5))
    np.testing.assert_allclose(lr, [0.1 * 1e-5, 0.1 * np.sqrt(3.0)], rtol=1e-4)
    k = rules.init_weights(jax.random.key(0), (5, 5, 16, 512))
    norms = np.asarray(rules.neuron_norms(k))
    assert abs(norms.mean() - 25.0) < 0.5  # N(0, (25/sqrt(fan_in))^2): norm ~ 25
    with pytest.raises(ValueError, match="shape"):
        rules.init_weights(jax.random.key(0), (5,))


def test_optax_chain_equals_dense_step_and_max_update_is_lr_k():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    w = jnp.asarray(3.0 * rng.normal(size=(6, 5)), jnp.float32)
    tx = rules.softhebb(0.08, power_lr=0.5)
    u = x @ w
    raw = rules.dense_delta(x, rules.softkrotov_wta(u, t_invert=1.0), u, w)
    step, _ = jit(tx.update)(raw, tx.init(w), w)
    new = optax.apply_updates(w, step)
    np.testing.assert_allclose(new, rules.dense_step(x, w, t_invert=1.0, lr=0.08), rtol=1e-6)
    # After the global normalisation the largest |dW| is 1, so the largest change is lr_k.
    norm = rules.normalize_update(raw)
    assert float(jnp.max(jnp.abs(norm))) == pytest.approx(1.0, abs=1e-6)
    i, k = np.unravel_index(int(jnp.argmax(jnp.abs(raw))), raw.shape)
    lr_k = rules.weight_norm_lr(w, lr=0.08)[k]
    assert float(jnp.abs(step[i, k])) == pytest.approx(float(lr_k), rel=1e-5)
    assert float(jnp.max(jnp.abs(step / rules.weight_norm_lr(w, lr=0.08)))) == pytest.approx(
        1.0, 1e-5
    )


def test_norms_move_toward_one():
    rng = np.random.default_rng(5)
    data = jnp.asarray(rng.normal(size=(400, 10, 16)), jnp.float32)
    w0 = rules.init_weights(jax.random.key(1), (16, 8), radius=5.0)

    def body(w, x):
        return rules.dense_step(x, w, t_invert=1.0, lr=0.05), jnp.abs(rules.neuron_norms(w) - 1)

    w, dist = jit(lambda w: jax.lax.scan(body, w, data))(w0)
    dist = np.asarray(dist)
    assert dist[-1].mean() < 0.1 * dist[0].mean()
    assert np.all(np.abs(np.asarray(rules.neuron_norms(w)) - 1) < 0.3)


def test_vmap_over_weights_and_traced_hyperparameters():
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 2)), jnp.float32)
    ws = jnp.asarray(rng.normal(size=(3, 3, 3, 2, 4)), jnp.float32)
    lrs = jnp.asarray([0.01, 0.05, 0.2])
    f = jit(jax.vmap(lambda w, lr: rules.conv_step(x, w, t_invert=1.0, lr=lr)))
    got = f(ws, lrs)
    one = jit(lambda w, lr: rules.conv_step(x, w, t_invert=1.0, lr=lr))  # unbatched, traced lr
    for i in range(3):
        np.testing.assert_allclose(got[i], one(ws[i], lrs[i]), rtol=1e-5, atol=1e-6)
    # per-example (unbatched) pre-activations vmap like any pure function
    u = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    np.testing.assert_allclose(
        jax.vmap(lambda r: rules.softkrotov_wta(r, t_invert=2.0))(u),
        rules.softkrotov_wta(u, t_invert=2.0),
        rtol=1e-6,
    )


# One compile per (dtype, rule), shared by every scale below.
_conv_step = jit(rules.conv_step, static_argnames=("rule", "t_invert", "lr"))


@pytest.mark.parametrize("scale", [1e-20, 1e4, 1e8])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_extreme_inputs_stay_finite(scale, dtype):
    rng = np.random.default_rng(7)
    x = jnp.asarray(scale * rng.normal(size=(4, 6, 6, 2)), dtype)
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 5)), dtype)
    for rule in ("softkrotov", "soft"):
        new = _conv_step(x, w, rule=rule, t_invert=10.0, lr=0.1)
        assert new.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(new.astype(jnp.float32))))
    zero = rules.dense_step(jnp.zeros((3, 4)), jnp.zeros((4, 2)), t_invert=1.0, lr=0.1)
    assert bool(jnp.all(jnp.isfinite(zero)))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="rule"):
        rules.hebbian_targets(jnp.ones((2, 3)), rule="hard", t_invert=1.0)
    with pytest.raises(ValueError, match=r"x\.shape"):
        rules.dense_delta(jnp.ones((2, 3)), jnp.ones((2, 4)), jnp.ones((2, 4)), jnp.ones((5, 4)))
    with pytest.raises(ValueError, match="conv_delta"):
        rules.conv_delta(jnp.ones((2, 3)), jnp.ones((2, 4)), jnp.ones((2, 4)), jnp.ones((5, 4)))
    with pytest.raises(ValueError, match="params"):
        rules.scale_by_weight_norm(0.1).update(jnp.ones((2, 2)), optax.EmptyState(), None)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_delta_implementations_agree(stride):
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 2, 3, 4)), jnp.float32)  # non-square kernel
    u = rules.conv2d(x, w, strides=(stride, stride))
    y = rules.softkrotov_wta(u, t_invert=1.0)
    a = rules.conv_delta(x, y, u, w, strides=(stride, stride), implementation="patches")
    b = rules.conv_delta(x, y, u, w, strides=(stride, stride), implementation="vjp")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="implementation"):
        rules.conv_delta(x, y, u, w, implementation="loop")


def np_conv_valid(x, w, stride):
    """Direct loops over output positions: x (b,h,w,c), w (kh,kw,c,o)."""
    kh, kw, _, o = w.shape
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w)
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_im2col_matches_numpy_and_xla_with_gradients(stride):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    w = rng.normal(size=(3, 2, 3, 4)).astype(np.float32)  # non-square kernel
    s = (stride, stride)
    a = jit(lambda x, w: rules.conv2d(x, w, strides=s))(x, w)
    np.testing.assert_allclose(a, np_conv_valid(x, w, stride), rtol=1e-5, atol=1e-5)
    b = rules.conv2d(x, w, strides=s, implementation="xla")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    def loss(impl):
        return lambda x, w: jnp.sum(jnp.sin(rules.conv2d(x, w, strides=s, implementation=impl)))

    ga = jax.grad(loss("im2col"), argnums=(0, 1))(x, w)
    gb = jax.grad(loss("xla"), argnums=(0, 1))(x, w)
    for p, q in zip(ga, gb):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-4)
    patches = rules.image_patches(jnp.asarray(x), (3, 2), s)
    assert patches.shape == (*a.shape[:3], 6, 3)
    np.testing.assert_array_equal(patches[:, 0, 0].reshape(2, 3, 2, 3), x[:, :3, :2])
    with pytest.raises(ValueError, match="implementation"):
        rules.conv2d(x, w, implementation="fft")
    with pytest.raises(ValueError, match="conv2d"):
        rules.conv2d(x, w[:, :, :2])
    with pytest.raises(ValueError, match="kernel"):
        rules.image_patches(jnp.asarray(x), (8, 2))
