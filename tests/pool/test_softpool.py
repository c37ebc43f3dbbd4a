"""soft_pool against independent references (NumPy float64 loop; the paper's formula in torch)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _pool_reference import (
    numpy_soft_pool,
    numpy_soft_pool_bound,
    numpy_soft_pool_grad,
    resolve_pads,
    torch_soft_pool,
)

from jaxsel.pool import soft_pool, soft_pool_output_shape

GRADIENTS = ("custom", "autodiff")


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _assert_within(got, want, bound):
    """|got - want| < bound elementwise; bound = 0 (a cell in no window) means exactly equal."""
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    np.testing.assert_array_less(err[bound > 0], bound[bound > 0])
    np.testing.assert_array_equal(err[bound == 0], 0.0)


def _normal(shape, seed=0, scale=2.0, dtype=np.float32):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


# --------------------------------------------------------------------------- torch parity

# (channels-first shape as the authors profile it, window, strides, padding)
TORCH_CASES = [
    pytest.param((10, 32, 80), (2,), (2,), "VALID", id="1d-full-k2s2"),
    pytest.param((10, 32, 80, 80), (2, 2), (2, 2), "VALID", id="2d-full-k2s2"),
    pytest.param((10, 32, 80, 80), (3, 3), (2, 2), "SAME", id="2d-full-k3s2-same"),
    pytest.param((2, 8, 8, 20, 20), (2, 2, 2), (2, 2, 2), "VALID", id="3d-reduced-k2s2"),
    pytest.param(
        (10, 32, 8, 80, 80),
        (2, 2, 2),
        (2, 2, 2),
        "VALID",
        id="3d-full-k2s2",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        (10, 32, 8, 80, 80), (3, 3, 3), (2, 2, 2), "SAME", id="3d-full-k3s2", marks=pytest.mark.slow
    ),
    pytest.param((10, 32, 80), (3,), (2,), "VALID", id="1d-k3s2"),
    pytest.param((10, 32, 80), (2,), (1,), [(1, 1)], id="1d-k2s1-pad"),
    pytest.param((4, 8, 20, 20), (3, 3), (2, 2), [(1, 1), (1, 1)], id="2d-k3s2-pad1"),
    pytest.param((4, 8, 20, 20), (2, 2), (1, 1), "VALID", id="2d-k2s1"),
    pytest.param((4, 8, 21, 19), (2, 3), (2, 3), [(1, 0), (2, 1)], id="2d-nonoverlap-asympad"),
    pytest.param((4, 8, 21, 19), (3, 2), (4, 3), "SAME", id="2d-gaps-same"),
    pytest.param((2, 4, 5, 9, 9), (3, 3, 3), (2, 2, 2), "SAME", id="3d-k3s2-same"),
    pytest.param((2, 4, 5, 9, 9), (2, 2, 2), (1, 1, 1), [(0, 1), (1, 0), (1, 1)], id="3d-k2s1-pad"),
]


def _torch_reference(torch, x_cf, window, strides, padding, ct_seed=7):
    """(x, y, ct, dL/dx) channels-last, from the torch float64 formula and its autograd."""
    x = np.moveaxis(x_cf, 1, -1)
    pads = resolve_pads(x.shape[1:-1], window, strides, padding)
    xt = torch.tensor(x_cf, requires_grad=True)
    yt = torch_soft_pool(torch, xt, window, strides, pads)
    ct_cf = _normal(tuple(yt.shape), seed=ct_seed, scale=1.0, dtype=np.float64)
    (gt,) = torch.autograd.grad((yt * torch.tensor(ct_cf)).sum(), xt)
    mv = lambda a: np.moveaxis(a, 1, -1)
    return x, mv(yt.detach().numpy()), mv(ct_cf), mv(gt.numpy())


def _value_and_vjp(window, strides, padding, gradient="custom"):
    fn = lambda v: soft_pool(v, window, strides, padding, gradient=gradient)
    return jax.jit(lambda v, c: (fn(v), jax.vjp(fn, v)[1](c)[0]))


@pytest.mark.parametrize(("shape_cf", "window", "strides", "padding"), TORCH_CASES)
def test_matches_torch_paper_formula(torch, shape_cf, window, strides, padding):
    """Forward <= 1e-6 relative in f32; gradients against torch autograd in float64."""
    x_cf = _normal(shape_cf, seed=len(shape_cf), dtype=np.float64)
    x, y_ref, ct, g_ref = _torch_reference(torch, x_cf, window, strides, padding)
    y, g = _value_and_vjp(window, strides, padding)(
        jnp.asarray(x, jnp.float32), jnp.asarray(ct, jnp.float32)
    )
    assert y.dtype == g.dtype == jnp.float32
    assert y.shape == y_ref.shape
    # Forward within the rounding bound of a float32 evaluation, including the rounding of the
    # float64 input to float32 (the reference sees it exact).
    pads = resolve_pads(x.shape[1:-1], window, strides, padding)
    bound = numpy_soft_pool_bound(x, window, strides, pads, input_rounding=True)
    _assert_within(y, y_ref, bound)
    _, g_bound = numpy_soft_pool_grad(x, window, strides, pads, ct, input_rounding=True)
    _assert_within(g, g_ref, g_bound)


@pytest.mark.parametrize(
    ("shape_cf", "window", "strides", "padding"),
    [((2, 8, 8, 20, 20), (2, 2, 2), (2, 2, 2), "VALID")],
)
def test_autodiff_gradient_matches_torch(torch, shape_cf, window, strides, padding):
    x_cf = _normal(shape_cf, seed=11, dtype=np.float64)
    x, y_ref, ct, g_ref = _torch_reference(torch, x_cf, window, strides, padding)
    y, g = _value_and_vjp(window, strides, padding, "autodiff")(
        jnp.asarray(x, jnp.float32), jnp.asarray(ct, jnp.float32)
    )
    bound = numpy_soft_pool_bound(x, window, strides, padding, input_rounding=True)
    _assert_within(y, y_ref, bound)
    _, g_bound = numpy_soft_pool_grad(x, window, strides, padding, ct, input_rounding=True)
    _assert_within(g, g_ref, g_bound)


def test_second_order_matches_torch(torch):
    """grad of grad (through the custom VJP) against torch double backward in float64."""
    window, strides, padding = (3, 3), (2, 2), [(1, 1), (0, 1)]
    x_cf = _normal((2, 3, 7, 6), seed=3, dtype=np.float64)
    x = np.moveaxis(x_cf, 1, -1)
    pads = resolve_pads(x.shape[1:-1], window, strides, padding)
    xt = torch.tensor(x_cf, requires_grad=True)
    loss_t = torch.sin(torch_soft_pool(torch, xt, window, strides, pads)).sum()
    (gt,) = torch.autograd.grad(loss_t, xt, create_graph=True)
    (ggt,) = torch.autograd.grad((gt**2).sum(), xt)
    gg_ref = np.moveaxis(ggt.numpy(), 1, -1)

    # The custom VJP's own derivative (autodiff's is compared with it in a test below).
    loss = lambda v: jnp.sum(jnp.sin(soft_pool(v, window, strides, padding)))
    gg = jax.jit(jax.grad(lambda v: jnp.sum(jax.grad(loss)(v) ** 2)))(jnp.asarray(x, jnp.float32))
    assert _rel_err(gg, gg_ref) <= 1e-4


# --------------------------------------------------------------------------- NumPy parity (both lanes)

NUMPY_CASES = [
    ((2, 9, 3), (2,), (2,), "VALID"),
    ((9, 3), (3,), (1,), "SAME"),  # no batch dimension
    ((2, 3, 7, 6, 3), (3, 3), (2, 2), "SAME"),  # two batch dimensions
    ((2, 7, 6, 3), (2, 2), None, [(1, 1), (0, 1)]),  # strides default to 1, as in flax
    ((2, 8, 3), (2,), (3,), [(1, 1)]),
    ((2, 7, 6, 3), (2, 3), (2, 3), [(1, 0), (2, 1)]),
    ((2, 5, 6, 7, 2), (2, 2, 2), (2, 2, 2), "SAME"),
    ((1, 5, 6, 7, 2), (3, 2, 3), (1, 2, 2), [(1, 1), (0, 0), (2, 0)]),
]


@pytest.mark.parametrize("implementation", ["auto", "blocks"])
@pytest.mark.parametrize(("shape", "window", "strides", "padding"), NUMPY_CASES)
def test_matches_numpy_reference(shape, window, strides, padding, implementation):
    x = _normal(shape, seed=sum(shape))
    y = jax.jit(lambda v: soft_pool(v, window, strides, padding, implementation=implementation))(x)
    ref = numpy_soft_pool(x, window, strides, padding)
    assert y.shape == ref.shape == soft_pool_output_shape(shape, window, strides, padding)
    bound = numpy_soft_pool_bound(x, window, strides, padding)  # same float32 input
    _assert_within(y, ref, bound)


@pytest.mark.parametrize(("shape", "window", "strides", "padding"), NUMPY_CASES)
def test_output_shape_matches_flax_max_pool(shape, window, strides, padding):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    pool_strides = None if strides is None else tuple(strides)
    expected = jax.eval_shape(lambda v: nn.max_pool(v, window, pool_strides, padding), x).shape
    assert jax.eval_shape(lambda v: soft_pool(v, window, strides, padding), x).shape == expected


@pytest.mark.parametrize(
    ("shape", "window", "strides", "padding"), [NUMPY_CASES[i] for i in (0, 2, 3, 5)]
)
def test_gradient_is_closed_form(shape, window, strides, padding):
    """custom VJP == autodiff == sum over windows of g_R w_i (1 + x_i - y_R), by finite differences."""
    x = _normal(shape, seed=1)
    ct = _normal(soft_pool_output_shape(shape, window, strides, padding), seed=2, scale=1.0)
    grads = {}
    for gradient in GRADIENTS:
        f = lambda v, gradient=gradient: jnp.vdot(
            soft_pool(v, window, strides, padding, gradient=gradient), ct
        )
        grads[gradient] = np.asarray(jax.jit(jax.grad(f))(x))
    np.testing.assert_allclose(grads["custom"], grads["autodiff"], rtol=1e-5, atol=1e-5)
    # Central differences of the float64 reference along a random direction.
    d = _normal(shape, seed=3, scale=1.0).astype(np.float64)
    h = 1e-5
    fd = (
        np.vdot(numpy_soft_pool(x + h * d, window, strides, padding), ct)
        - np.vdot(numpy_soft_pool(x - h * d, window, strides, padding), ct)
    ) / (2 * h)
    np.testing.assert_allclose(np.vdot(grads["custom"], d), fd, rtol=1e-4)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize(
    ("window", "strides", "padding", "gradient"),
    [
        ((2, 2), (2, 2), "VALID", "custom"),
        ((3, 3), (2, 2), "SAME", "custom"),
        ((3, 3), (2, 2), "SAME", "autodiff"),
    ],
)
def test_large_magnitudes_stay_finite(window, strides, padding, gradient):
    """|x| up to 1e4: no overflow; the result tends to max pooling and matches the float64 loop."""
    x = _normal((2, 8, 8, 3), seed=4, scale=1.0) * 1e4
    x[0, :2, :2, 0] = [[1e4, -1e4], [-1e4, 9.99e3]]  # near-ties, 10 apart: weight e^-10
    fn = jax.jit(lambda v: soft_pool(v, window, strides, padding, gradient=gradient))
    y = fn(x)
    assert np.all(np.isfinite(y))
    assert _rel_err(y, numpy_soft_pool(x, window, strides, padding)) <= 1e-6
    np.testing.assert_allclose(y, nn.max_pool(x, window, strides, padding), rtol=1e-6, atol=1e-2)
    g = jax.jit(jax.grad(lambda v: jnp.sum(fn(v))))(x)
    assert np.all(np.isfinite(g))
    # The maximum of each window takes (almost) all the weight, and 1 + x - y ~ 1 there. In exact
    # arithmetic (the float64 closed form) only the planted near tie is visibly off max pooling:
    # the runner-up, 10 below, takes weight w = e^-10 / (1 + e^-10) and moves both cells by
    # w |1 - 10 (1 - w)| ~ 9 w = 4.1e-4; every other window's runner-up is far further below.
    g64, bound = numpy_soft_pool_grad(x, window, strides, padding)
    g_max = jax.jit(jax.grad(lambda v: jnp.sum(nn.max_pool(v, window, strides, padding))))(x)
    np.testing.assert_allclose(g64, g_max, rtol=0, atol=1e-3)
    # In float32, 1 + x - y at |x| ~ 3e4 is resolved only to a few units of u |x| ~ 2e-3, so g is
    # compared with the closed form within the rounding bound of a float32 evaluation.
    _assert_within(g, g64, bound)


@pytest.mark.parametrize(
    ("window", "strides", "padding", "gradient"),
    [
        ((2, 2), (2, 2), "VALID", "custom"),
        ((3, 3), (2, 2), "SAME", "custom"),
        ((2, 2), (1, 1), [(1, 1), (1, 1)], "custom"),
        ((2, 2), (2, 2), "VALID", "autodiff"),
    ],
)
def test_all_equal_windows_give_the_mean(window, strides, padding, gradient):
    """Constant windows pool to that constant; each cell's gradient is 1 / (number of input cells)."""
    x = jnp.full((2, 6, 6, 3), -3.25, jnp.float32).at[1].set(1e3)
    fn = lambda v: soft_pool(v, window, strides, padding, gradient=gradient)
    y = jax.jit(fn)(x)
    np.testing.assert_array_equal(y[0], -3.25)
    np.testing.assert_array_equal(y[1], 1e3)
    # Distinct values, but equal within each non-overlapping window: y is the mean of the window.
    if strides == window:
        blocks = jnp.arange(9.0).reshape(1, 3, 3, 1)
        xb = jnp.repeat(jnp.repeat(blocks, 2, axis=1), 2, axis=2)
        np.testing.assert_allclose(jax.jit(fn)(xb), blocks, rtol=1e-6)
    g = jax.jit(jax.grad(lambda v: jnp.sum(fn(v))))(x)
    # d y_R / d x_i = 1 / |R| for a constant window R (|R| counts input cells only), which is
    # also the gradient of average pooling that leaves padding out of the count.
    avg = lambda v: jnp.sum(nn.avg_pool(v, window, strides, padding, count_include_pad=False))
    g_ref = jax.jit(jax.grad(avg))(jnp.zeros(x.shape))
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "gradient", "window", "strides"),
    [
        (jnp.float16, "custom", (2, 2), (2, 2)),
        (jnp.float16, "custom", (3, 3), (2, 2)),
        (jnp.bfloat16, "custom", (2, 2), (2, 2)),
        (jnp.bfloat16, "custom", (3, 3), (2, 2)),
        (jnp.float16, "autodiff", (3, 3), (2, 2)),
    ],
)
def test_half_precision_around_100_is_finite(dtype, gradient, window, strides):
    """e^100 overflows f16 (max ~6.5e4) and f32; accumulating in f32 after the max shift does not."""
    x32 = (100.0 + _normal((2, 8, 8, 4), seed=5, scale=3.0)).astype(np.float32)
    x = jnp.asarray(x32, dtype)
    fn = jax.jit(lambda v: soft_pool(v, window, strides, "SAME", gradient=gradient))
    y = fn(x)
    assert y.dtype == dtype
    assert np.all(np.isfinite(np.asarray(y, np.float32)))
    ref = numpy_soft_pool(np.asarray(x, np.float32), window, strides, "SAME")
    # one rounding of the output in the half-precision dtype
    tol = {jnp.float16: 2**-10, jnp.bfloat16: 2**-7}[dtype]
    assert _rel_err(np.asarray(y, np.float32), ref) <= tol
    g = jax.jit(jax.grad(lambda v: jnp.sum(fn(v).astype(jnp.float32))))(x)
    assert g.dtype == dtype
    assert np.all(np.isfinite(np.asarray(g, np.float32)))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("shape", "window", "strides", "padding", "match"),
    [
        ((1, 4, 4, 2), (5, 2), (1, 1), "VALID", "larger than the padded input"),
        ((1, 4, 2), (5,), None, [(0, 0)], "larger than the padded input"),
        ((4, 2), (2, 2), None, "VALID", "rank >= 3"),
        ((1, 4, 4, 2), (2, 2), (2,), "VALID", "strides"),
        ((1, 4, 4, 2), (2, 0), None, "VALID", "window_shape"),
        ((1, 4, 4, 2), 2, None, "VALID", "window_shape"),
        ((1, 4, 4, 2), (2, 2), None, "FULL", "padding"),
        ((1, 4, 4, 2), (2, 2), None, [(1, 1)], "one \\(low, high\\) pair"),
        ((1, 4, 4, 2), (2, 2), None, [(1, 1), (-1, 0)], "non-negative"),
        ((1, 4, 4, 2), (2, 2), None, [(2, 0), (0, 0)], "no input cell"),
    ],
)
def test_bad_arguments_raise(shape, window, strides, padding, match):
    with pytest.raises(ValueError, match=match):
        soft_pool(jnp.zeros(shape), window, strides, padding)


def test_bad_options_raise():
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="floating"):
        soft_pool(jnp.zeros((1, 4, 4, 2), jnp.int32), (2, 2))
    with pytest.raises(ValueError, match="implementation"):
        soft_pool(x, (2, 2), implementation="pallas")
    with pytest.raises(ValueError, match="gradient"):
        soft_pool(x, (2, 2), gradient="numeric")


# --------------------------------------------------------------------------- transformations


@pytest.mark.parametrize(("window", "strides"), [((2, 2), (2, 2)), ((3, 3), (2, 2))])
def test_vmap_matches_batched_call(window, strides):
    """vmap of the unbatched call == the batched call; gradients too."""
    x = _normal((3, 7, 7, 2), seed=6)
    fn = lambda v: soft_pool(v, window, strides, "SAME")
    np.testing.assert_allclose(jax.jit(jax.vmap(fn))(x), jax.jit(fn)(x), rtol=1e-5, atol=1e-6)
    loss = lambda v: jnp.sum(jnp.tanh(fn(v)))
    np.testing.assert_allclose(
        jax.jit(jax.vmap(jax.grad(loss)))(x), jax.jit(jax.grad(loss))(x), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(("window", "strides"), [((2, 2), (2, 2)), ((2, 2), (1, 1))])
def test_second_order_custom_equals_autodiff(window, strides):
    x = _normal((2, 6, 6, 2), seed=8)

    def hvp(gradient):
        loss = lambda v: jnp.sum(jnp.sin(soft_pool(v, window, strides, "SAME", gradient=gradient)))
        return jax.jit(jax.grad(lambda v: jnp.sum(jax.grad(loss)(v) * jnp.cos(v))))(x)

    np.testing.assert_allclose(hvp("custom"), hvp("autodiff"), rtol=1e-4, atol=1e-5)
