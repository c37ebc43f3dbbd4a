"""SoftHebb plasticity: soft winner-take-all, the Hebbian weight change, and its optax-style scaling.

Reference: A. Journé, H. Garcia Rodriguez, Q. Guo, T. Moraitis, "Hebbian Deep Learning Without
Feedback", ICLR 2023 (arXiv 2209.11883), and the authors' PyTorch code (NeuromorphicComputing/SoftHebb).

Layout: every weight keeps its neurons on the LAST axis (flax convention): dense ``(in, out)``,
conv ``(kh, kw, in, out)``. Activities are channels-last: ``(..., out)``.

One SoftHebb step of a layer with weights ``W`` and input ``x`` (all sums over batch and positions):

    u   = W^T x                                      (linear pre-activation drives learning)
    y_k = softmax(t_invert * u)_k                    ("soft")
    y_k = +y_k if k = argmax u else -y_k             ("softkrotov": winner Hebbian, rest anti-Hebbian)
    dW_k = sum y_k x - (sum y_k u_k) W_k             (:func:`dense_delta`, :func:`conv_delta`)
    dW  <- dW / max|dW|                              (one global max per layer: :func:`scale_by_global_max`)
    W_k <- W_k + lr0 * (| ||W_k||_2 - 1 | + 1e-10)^power_lr * dW_k   (:func:`scale_by_weight_norm`)

The last two lines are optax ``GradientTransformation`` s (pure ``init``/``update`` pairs) and chain
into :func:`softhebb` so that a layer's plasticity composes like an optimizer; apply the result with
``optax.apply_updates`` (the sign is already that of an ascent step).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax
from jax import lax

Rule = Literal["softkrotov", "soft"]
RULES: tuple[str, ...] = ("softkrotov", "soft")

# Floors the authors use: the lr never reaches exactly 0, the max-normalisation never divides by 0.
LR_FLOOR = 1e-10
NORM_FLOOR = 1e-30


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule=!r}")


def soft_wta(u: jax.Array, *, t_invert: float | jax.Array, axis: int = -1) -> jax.Array:
    """Soft winner-take-all: ``y = softmax(t_invert * u)`` over the neurons (``axis``).

    Args:
      u: pre-activations ``(..., neurons)``.
      t_invert: inverse temperature (large: hard WTA; small: all-take-all).
      axis: the neuron axis.

    Returns:
      ``y`` with the shape of ``u``, non-negative, summing to 1 over ``axis``.
    """
    # Shift by the max before scaling: with |u| ~ 1e9 the product t * u reaches ~1e10, and XLA:CPU
    # (jax 0.10.2) returned NaN from jax.nn.softmax on such logits under jit.
    shifted = u - lax.stop_gradient(jnp.max(u, axis=axis, keepdims=True))
    e = jnp.exp(jnp.asarray(t_invert, u.dtype) * shifted)
    return e / jnp.sum(e, axis=axis, keepdims=True)


def softkrotov_wta(u: jax.Array, *, t_invert: float | jax.Array, axis: int = -1) -> jax.Array:
    """The "softkrotov" targets: the winner keeps ``+y``, every other neuron gets ``-y``.

    ``s_k = y_k`` if ``k = argmax_j u_j`` else ``-y_k``, with ``y = softmax(t_invert * u)``;
    the winner learns Hebbian, the losers anti-Hebbian in proportion to how close they came.

    Args:
      u: pre-activations ``(..., neurons)``.
      t_invert: inverse temperature.
      axis: the neuron axis.
    """
    y = soft_wta(u, t_invert=t_invert, axis=axis)
    winner = jnp.argmax(u, axis=axis, keepdims=True)
    is_winner = (
        jnp.arange(u.shape[axis]).reshape(
            [-1 if a == (axis % u.ndim) else 1 for a in range(u.ndim)]
        )
        == winner
    )
    return jnp.where(is_winner, y, -y)


def hebbian_targets(
    u: jax.Array, *, rule: Rule = "softkrotov", t_invert: float | jax.Array, axis: int = -1
) -> jax.Array:
    """Post-synaptic learning signal ``y`` of a rule ("softkrotov" or "soft") from ``u``."""
    _check_rule(rule)
    if rule == "soft":
        return soft_wta(u, t_invert=t_invert, axis=axis)
    return softkrotov_wta(u, t_invert=t_invert, axis=axis)


def triangle(u: jax.Array, *, power: float = 1.0, axis: int = -1) -> jax.Array:
    """Triangle activation: ``relu(u - mean_over_neurons(u)) ** power``.

    The authors' forward activation after every SoftHebb conv. The power is taken on a floored
    base so that the gradient stays finite for ``power < 1`` (used by the backprop control), and
    as ``exp(power * log r)``: XLA:CPU's ``pow`` is much slower than ``exp`` + ``log`` here, and
    the Triangle is on every forward pass (results/hebb/README.md, "Implementation notes").
    """
    r = u - jnp.mean(u, axis=axis, keepdims=True)
    positive = r > 0
    if power == 1.0:
        return jnp.where(positive, r, 0)
    tiny = jnp.finfo(r.dtype).tiny
    base = jnp.where(positive, jnp.maximum(r, tiny), 1)
    return jnp.where(positive, jnp.exp(jnp.asarray(power, r.dtype) * jnp.log(base)), 0)


def neuron_norms(w: jax.Array) -> jax.Array:
    """L2 norm of each neuron's weight vector (all axes but the last): ``(out,)``."""
    axes = tuple(range(w.ndim - 1))
    return jnp.sqrt(jnp.sum(jnp.square(w), axis=axes))


def weight_norm_lr(
    w: jax.Array, *, lr: float | jax.Array, power_lr: float | jax.Array = 0.5
) -> jax.Array:
    """Per-neuron learning rate ``lr_k = lr * (| ||W_k||_2 - 1 | + 1e-10) ** power_lr``: ``(out,)``.

    SoftHebb's weights converge to the unit sphere; the step shrinks as a neuron gets there, so
    no schedule is needed (the authors' ``adaptive`` lr).
    """
    return lr * (jnp.abs(neuron_norms(w) - 1.0) + LR_FLOOR) ** power_lr


def normalize_update(dw: jax.Array) -> jax.Array:
    """``dW / (max|dW| + 1e-30)``: one global maximum over the whole layer."""
    return dw / (jnp.max(jnp.abs(dw)) + NORM_FLOOR)


def init_weights(
    key: jax.Array, shape: tuple[int, ...], *, radius: float = 25.0, dtype=jnp.float32
) -> jax.Array:
    """Authors' initialisation for layers fed by BatchNorm: ``W ~ N(0, (radius / sqrt(fan_in))^2)``.

    ``fan_in`` is the product of all axes but the last, so each neuron starts with norm ~ radius
    (25 in every preset), far from 1: the norm-dependent lr is then large at first.
    """
    if len(shape) < 2:
        raise ValueError(f"weights need at least (in, out) axes, got {shape=}")
    fan_in = 1
    for s in shape[:-1]:
        fan_in *= s
    return (radius / fan_in**0.5) * jax.random.normal(key, shape, dtype)


def _delta_from_correlation(yx: jax.Array, y: jax.Array, u: jax.Array, w: jax.Array) -> jax.Array:
    # Decay term: sum over batch and positions of y_k u_k, times W_k (Oja-like, keeps ||W_k|| -> 1).
    yu = jnp.sum(y * u, axis=tuple(range(u.ndim - 1)))
    return yx - yu * w


def dense_delta(x: jax.Array, y: jax.Array, u: jax.Array, w: jax.Array) -> jax.Array:
    """Raw SoftHebb weight change of a dense layer: ``dW = x^T y - (sum_b y*u) * W``.

    Args:
      x: inputs ``(batch, in)``.
      y: learning targets ``(batch, out)`` (from :func:`hebbian_targets`).
      u: pre-activations ``x @ w``, ``(batch, out)``.
      w: weights ``(in, out)``.

    Returns:
      ``dW`` with the shape of ``w`` (not yet normalised or scaled).
    """
    if x.ndim != 2 or y.ndim != 2 or w.ndim != 2:
        raise ValueError(
            f"dense_delta needs x (b, in), y (b, out), w (in, out); got "
            f"{x.shape=}, {y.shape=}, {w.shape=}"
        )
    if x.shape[1] != w.shape[0] or y.shape[1] != w.shape[1] or x.shape[0] != y.shape[0]:
        raise ValueError(f"shape mismatch: {x.shape=}, {y.shape=}, {w.shape=}")
    return _delta_from_correlation(x.T @ y, y, u, w)


ConvImpl = Literal["im2col", "xla"]


def image_patches(x: jax.Array, kernel: tuple[int, int], strides: tuple[int, int] = (1, 1)):
    """'VALID' patches of an NHWC batch by strided slicing: ``(B, H', W', kh * kw, C)``.

    Patch position ``i * kw + j`` holds ``x[:, i + s_h * h', j + s_w * w', :]``, so the trailing
    ``(kh * kw, C)`` axes flatten in the order of an HWIO kernel's leading axes. Slicing copies
    ``kh * kw`` views; ``lax.conv_general_dilated_patches`` instead runs a convolution with a
    one-hot kernel (``kh * kw * C`` output channels), which cost more than the matmul it feeds.
    """
    kh, kw = kernel
    sh, sw = strides
    _, h, w, _ = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {kernel} larger than the (padded) input {x.shape=}")
    views = [
        x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.stack(views, axis=3)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    *,
    strides: tuple[int, int] = (1, 1),
    implementation: ConvImpl = "im2col",
) -> jax.Array:
    """'VALID' 2-D convolution, NHWC input, HWIO kernel (pad beforehand, e.g. reflect).

    ``"im2col"`` (default): :func:`image_patches` times the kernel as one matmul; its gradients
    are matmuls too. ``"xla"``: ``lax.conv_general_dilated``. On XLA:CPU the matmul form is the
    faster of the two for the two-layer net, and the backward-filter convolution of ``"xla"`` slows
    down inside ``lax.scan``, which the backprop control needs (results/hebb/README.md,
    "Implementation notes").
    """
    if x.ndim != 4 or w.ndim != 4 or x.shape[-1] != w.shape[2]:
        raise ValueError(
            f"conv2d needs x (b,h,w,in) and w (kh,kw,in,out); got {x.shape=}, {w.shape=}"
        )
    if implementation == "xla":
        return lax.conv_general_dilated(
            x,
            w,
            window_strides=strides,
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    if implementation != "im2col":
        raise ValueError(f"implementation must be 'im2col' or 'xla', got {implementation=!r}")
    kh, kw, c, o = w.shape
    p = image_patches(x, (kh, kw), strides)
    u = p.reshape(-1, kh * kw * c) @ w.reshape(kh * kw * c, o)
    return u.reshape(*p.shape[:3], o)


ConvDeltaImpl = Literal["patches", "vjp"]


def _patch_correlation(x: jax.Array, y: jax.Array, kernel: tuple[int, int], strides) -> jax.Array:
    kh, kw = kernel
    p = image_patches(x, kernel, strides)  # (b, ho, wo, kh * kw, in)
    yx = jnp.einsum("bhwpc,bhwo->pco", p, y.astype(p.dtype))
    return yx.reshape(kh, kw, x.shape[-1], y.shape[-1])


def conv_delta(
    x: jax.Array,
    y: jax.Array,
    u: jax.Array,
    w: jax.Array,
    *,
    strides: tuple[int, int] = (1, 1),
    implementation: ConvDeltaImpl = "patches",
) -> jax.Array:
    """Raw SoftHebb weight change of a conv layer, as one filter-gradient contraction.

    ``dW[i, j, c, k] = sum_{b, p} y[b, p, k] * patch_p(x)[i, j, c] - (sum_{b, p} y_k u_k) W[..., k]``.
    The correlation term is the kernel cotangent of the convolution fed ``y``. Two equal ways:

    - ``"vjp"``: ``jax.vjp`` of :func:`conv2d` w.r.t. ``w`` (one backward-filter convolution);
    - ``"patches"`` (default): :func:`image_patches` contracted with ``y`` in one ``einsum``.
      Inside ``lax.scan`` XLA:CPU runs the backward-filter convolution much slower than outside;
      the matmul does not slow down (results/hebb/README.md, "Implementation notes").

    Args:
      x: the (already padded) layer input ``(batch, H, W, in)``.
      y: learning targets ``(batch, H', W', out)``.
      u: pre-activations ``conv2d(x, w)``, ``(batch, H', W', out)``.
      w: kernel ``(kh, kw, in, out)``.
      strides: the convolution strides.
      implementation: ``"patches"`` or ``"vjp"``.
    """
    if x.ndim != 4 or y.ndim != 4 or w.ndim != 4:
        raise ValueError(
            f"conv_delta needs x (b,h,w,in), y (b,h',w',out), w (kh,kw,in,out); got "
            f"{x.shape=}, {y.shape=}, {w.shape=}"
        )
    if x.shape[-1] != w.shape[2] or y.shape[-1] != w.shape[3] or y.shape != u.shape:
        raise ValueError(f"shape mismatch: {x.shape=}, {y.shape=}, {u.shape=}, {w.shape=}")
    if implementation == "vjp":
        _, pullback = jax.vjp(lambda k: conv2d(x, k, strides=strides, implementation="xla"), w)
        (yx,) = pullback(y.astype(w.dtype))
    elif implementation == "patches":
        yx = _patch_correlation(x, y, (w.shape[0], w.shape[1]), strides).astype(w.dtype)
    else:
        raise ValueError(f"implementation must be 'patches' or 'vjp', got {implementation=!r}")
    return _delta_from_correlation(yx, y, u, w)


# ----------------------------------------------------------------------------- optax-style pairs


def scale_by_global_max() -> optax.GradientTransformation:
    """``dW <- dW / (max|dW| + 1e-30)``, one maximum per leaf (a leaf is one layer's weights).

    After it, the largest entry of each layer's update has magnitude exactly 1, so the largest
    weight change of a step equals that neuron's ``lr_k``.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(normalize_update, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_weight_norm(
    lr: float | jax.Array, *, power_lr: float | jax.Array = 0.5
) -> optax.GradientTransformation:
    """``dW_k <- lr * (| ||W_k|| - 1 | + 1e-10) ** power_lr * dW_k`` per neuron (needs ``params``).

    The norm is that of the weights BEFORE this step, as in the authors' code.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_weight_norm needs params (the current weights)")
        scaled = jax.tree.map(
            lambda d, w: d * weight_norm_lr(w, lr=lr, power_lr=power_lr).astype(d.dtype),
            updates,
            params,
        )
        return scaled, state

    return optax.GradientTransformation(init_fn, update_fn)


def softhebb(
    lr: float | jax.Array, *, power_lr: float | jax.Array = 0.5
) -> optax.GradientTransformation:
    """SoftHebb's plasticity as an optimizer: ``chain(scale_by_global_max(), scale_by_weight_norm)``.

    Feed it the raw Hebbian change (:func:`dense_delta` / :func:`conv_delta`) as ``updates`` and
    add the result to the weights (``optax.apply_updates``).

    Example::

      tx = softhebb(0.08)
      state = tx.init(w)
      u = x @ w
      dw = dense_delta(x, softkrotov_wta(u, t_invert=1.0), u, w)
      step, state = tx.update(dw, state, w)
      w = optax.apply_updates(w, step)
    """
    return optax.chain(scale_by_global_max(), scale_by_weight_norm(lr, power_lr=power_lr))


def dense_step(
    x: jax.Array,
    w: jax.Array,
    *,
    rule: Rule = "softkrotov",
    t_invert: float | jax.Array,
    lr: float | jax.Array,
    power_lr: float | jax.Array = 0.5,
) -> jax.Array:
    """One complete SoftHebb update of a dense layer: returns the new weights ``(in, out)``.

    Args:
      x: a batch of inputs ``(batch, in)``.
      w: weights ``(in, out)``.
      rule: "softkrotov" (winner +y, others -y) or "soft" (all +y).
      t_invert, lr, power_lr: inverse temperature, base lr, lr exponent.
    """
    u = x @ w
    y = hebbian_targets(u, rule=rule, t_invert=t_invert)
    dw = normalize_update(dense_delta(x, y, u, w))
    return w + weight_norm_lr(w, lr=lr, power_lr=power_lr) * dw


def conv_step(
    x: jax.Array,
    w: jax.Array,
    *,
    rule: Rule = "softkrotov",
    t_invert: float | jax.Array,
    lr: float | jax.Array,
    power_lr: float | jax.Array = 0.5,
    strides: tuple[int, int] = (1, 1),
) -> jax.Array:
    """One complete SoftHebb update of a conv layer (``x`` already padded): the new kernel."""
    u = conv2d(x, w, strides=strides)
    y = hebbian_targets(u, rule=rule, t_invert=t_invert)
    dw = normalize_update(conv_delta(x, y, u, w, strides=strides))
    return w + weight_norm_lr(w, lr=lr, power_lr=power_lr) * dw
