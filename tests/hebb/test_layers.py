"""Blocks against torch (BatchNorm2d(affine=False), pads, pools) and plain NumPy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hebb_jit import jit

from jaxsel.hebb import layers
from jaxsel.pool import soft_pool

_spec = importlib.util.spec_from_file_location(
    "_pool_reference", Path(__file__).parents[1] / "pool" / "_pool_reference.py"
)
_pool_ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pool_ref)


def test_batch_norm_matches_numpy_train_and_eval():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(4, 5, 5, 3)).astype(np.float32)
    st = layers.batch_norm_init(3)
    y, st2 = jit(lambda x, s: layers.batch_norm(x, s, train=True))(x, st)
    flat = x.reshape(-1, 3).astype(np.float64)
    m, v = flat.mean(0), flat.var(0)
    np.testing.assert_allclose(y, (x - m) / np.sqrt(v + 1e-5), rtol=1e-4, atol=1e-5)
    n = flat.shape[0]
    np.testing.assert_allclose(st2.mean, 0.1 * m, rtol=1e-5)
    np.testing.assert_allclose(st2.var, 0.9 + 0.1 * v * n / (n - 1), rtol=1e-5)
    y_eval, same = layers.batch_norm(x, st2, train=False)
    np.testing.assert_allclose(y_eval, (x - st2.mean) / np.sqrt(st2.var + 1e-5), rtol=1e-5)
    assert same is st2
    with pytest.raises(ValueError, match="channels"):
        layers.batch_norm(x, layers.batch_norm_init(4), train=True)


def test_batch_norm_matches_torch(torch):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    bn = torch.nn.BatchNorm2d(2, affine=False)
    want = bn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    got, st = layers.batch_norm(jnp.asarray(x), layers.batch_norm_init(2), train=True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st.var, bn.running_var.numpy(), rtol=1e-5)


def test_reflect_pad_matches_numpy():
    x = np.arange(2 * 4 * 5 * 1, dtype=np.float32).reshape(2, 4, 5, 1)
    want = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(layers.reflect_pad(jnp.asarray(x), 2), want)
    with pytest.raises(ValueError, match="reflect"):
        layers.reflect_pad(jnp.asarray(x), 4)


def np_pool(x, kind, k, s, p):
    b, h, w, c = x.shape
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=fill)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.empty((b, ho, wo, c), x.dtype)
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * s : i * s + k, j * s : j * s + k, :]
            out[:, i, j, :] = win.max((1, 2)) if kind == "max" else win.sum((1, 2)) / (k * k)
    return out


@pytest.mark.parametrize("kind,k,s,p", [("max", 4, 2, 1), ("avg", 2, 2, 0), ("avg", 3, 2, 1)])
def test_pool_matches_numpy(kind, k, s, p):
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
    got = jit(lambda x: layers.pool2d(x, kind=kind, window=k, stride=s, padding=p))(x)
    np.testing.assert_allclose(got, np_pool(x, kind, k, s, p), rtol=1e-6, atol=1e-6)


def test_pool_matches_torch(torch):
    x = np.random.default_rng(3).normal(size=(2, 9, 9, 3)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    want = torch.nn.MaxPool2d(4, 2, 1)(xt).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(layers.pool2d(x, kind="max", window=4, stride=2, padding=1), want)
    want = torch.nn.AvgPool2d(3, 2, 1)(xt).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(
        layers.pool2d(x, kind="avg", window=3, stride=2, padding=1), want, rtol=1e-5, atol=1e-6
    )


def np_soft_pool(x, k, s, p):
    """SoftPool in float64: per window, sum_i softmax(x_R)_i x_i; padded cells weigh 0."""
    b, h, w, c = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)), constant_values=np.nan)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.empty((b, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * s : i * s + k, j * s : j * s + k, :].reshape(b, k * k, c)
            valid = ~np.isnan(win)
            e = np.where(valid, np.exp(win - np.nanmax(win, axis=1, keepdims=True)), 0.0)
            out[:, i, j, :] = (e * np.where(valid, win, 0.0)).sum(1) / e.sum(1)
    return out


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1)])
def test_soft_pool_matches_numpy_and_dispatches_to_jaxsel_pool(k, s, p):
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 3)).astype(np.float32)
    got = jit(lambda x: layers.pool2d(x, kind="soft", window=k, stride=s, padding=p))(x)
    # Each float32 evaluation is within the per-output rounding bound of the float64 value
    # (tests/pool/_pool_reference.py derives it), so two of them are within twice that.
    bound = _pool_ref.numpy_soft_pool_bound(x, (k, k), (s, s), ((p, p), (p, p)))
    assert np.all(np.abs(np.asarray(got) - np_soft_pool(x, k, s, p)) <= bound)
    want = soft_pool(jnp.asarray(x), (k, k), strides=(s, s), padding=((p, p), (p, p)))
    assert np.all(np.abs(np.asarray(got) - np.asarray(want)) <= 2 * bound)
    assert got.shape == (2, (8 + 2 * p - k) // s + 1, (8 + 2 * p - k) // s + 1, 3)


def test_pool_rejects_unknown_kind():
    with pytest.raises(ValueError, match="pooling"):
        layers.pool2d(jnp.ones((1, 4, 4, 1)), kind="median", window=2, stride=2)
