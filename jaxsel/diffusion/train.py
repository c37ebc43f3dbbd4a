"""Small learned denoisers, value networks and reward classifiers for the steering toys.

Networks are pure ``init(key) -> params`` / ``apply(params, ...)`` pairs over dicts of arrays; training
loops follow ``make_train_*(config, model functions, data) -> train(key)`` with one ``lax.scan``
inside, so seeds can be vmapped; each config is a frozen dataclass (:class:`FitConfig` and its
per-trainer subclasses) validated on construction.

- :func:`mlp_init` / :func:`mlp_apply`: MLP on [x, sinusoidal(t)] for VP denoisers (x0 or eps) and
  value networks v(x_t, t);
- :func:`transformer_init` / :func:`transformer_apply`: a tiny bidirectional transformer over masked
  token sequences, returning x0 logits (MDLM denoiser, Sahoo et al. 2024);
- :func:`make_train_vp`: denoising score matching, E ||f(x_t, t) - target||^2, target x0 or eps;
- :func:`make_train_masked`: MDLM loss, cross-entropy on masked tokens weighted by 1/t;
- :func:`make_train_value`: SVDD-MC value regression on rollouts of the pretrained sampler (Li et
  al. 2024, Sec. 4): the soft value (1/lam) log E[exp(lam r(x0)) | x_t] via :func:`soft_value_loss`,
  or the mean value E[r(x0) | x_t] by least squares;
- :func:`make_train_classifier`: softmax-regression MLP used as a black-box reward (digits);
- :func:`load_asset`: the shipped weights (orbax checkpoints, :func:`jaxsel.utils.save_tree`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxsel.diffusion.samplers import Process, masked_forward, sample_trajectory, vp_alpha_bar
from jaxsel.utils.checkpoint import restore_tree

Array = jax.Array
Params = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def time_features(t: Array, dim: int = 16) -> Array:
    """Sinusoidal features of t in [0, 1]: (dim,)."""
    freqs = jnp.exp(jnp.linspace(0.0, math.log(100.0), dim // 2))
    ang = 2 * jnp.pi * jnp.asarray(t, jnp.float32) * freqs
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)])


def _dense_init(key: Array, n_in: int, n_out: int, scale: float = 1.0) -> Params:
    return {
        "w": jax.random.normal(key, (n_in, n_out)) * scale / math.sqrt(n_in),
        "b": jnp.zeros((n_out,)),
    }


def mlp_init(
    key: Array,
    dim: int,
    *,
    hidden: int = 128,
    depth: int = 3,
    out_dim: int | None = None,
    t_dim: int = 16,
) -> Params:
    """Params of an MLP mapping [x (dim,), time_features(t)] to out_dim (default dim)."""
    sizes = [dim + t_dim] + [hidden] * depth + [out_dim or dim]
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        "layers": [
            _dense_init(k, a, b, 0.1 if i == len(sizes) - 2 else 1.0)
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
        ]
    }


def mlp_apply(params: Params, x: Array, t: Array) -> Array:
    """f(x, t) for one x (dim,) and scalar t; SiLU hidden layers, linear output."""
    t_dim = params["layers"][0]["w"].shape[0] - x.shape[-1]
    h = jnp.concatenate([x, time_features(t, t_dim)])
    for layer in params["layers"][:-1]:
        h = jax.nn.silu(h @ layer["w"] + layer["b"])
    last = params["layers"][-1]
    return h @ last["w"] + last["b"]


def transformer_init(
    key: Array, length: int, vocab_size: int, *, width: int = 32, depth: int = 2
) -> Params:
    """Tiny transformer over tokens in [0, V] (V = mask id); outputs (L, V) logits."""
    ks = jax.random.split(key, 3 + depth)
    blocks = []
    for kb in ks[3:]:
        k1, k2, k3, k4 = jax.random.split(kb, 4)
        blocks.append(
            {
                "qkv": _dense_init(k1, width, 3 * width),
                "proj": _dense_init(k2, width, width, 0.5),
                "fc1": _dense_init(k3, width, 4 * width),
                "fc2": _dense_init(k4, 4 * width, width, 0.5),
                "ln1": jnp.ones((width,)),
                "ln2": jnp.ones((width,)),
            }
        )
    return {
        "embed": jax.random.normal(ks[0], (vocab_size + 1, width)) * 0.5,
        "pos": jax.random.normal(ks[1], (length, width)) * 0.5,
        "time": _dense_init(ks[2], 16, width, 0.5),
        "blocks": blocks,
        "out": _dense_init(jax.random.fold_in(key, 7), width, vocab_size),
    }


def _layer_norm(h: Array, g: Array) -> Array:
    h = h - h.mean(-1, keepdims=True)
    return g * h * lax.rsqrt(jnp.mean(h**2, -1, keepdims=True) + 1e-5)


def transformer_apply(params: Params, z: Array, t: Array, *, heads: int = 2) -> Array:
    """x0 logits (L, V) for one masked sequence z (L,) int at time t."""
    L, width = params["pos"].shape
    tf = time_features(t, 16) @ params["time"]["w"] + params["time"]["b"]
    h = params["embed"][z] + params["pos"] + tf
    for blk in params["blocks"]:
        a = _layer_norm(h, blk["ln1"])
        q, k, v = jnp.split(a @ blk["qkv"]["w"] + blk["qkv"]["b"], 3, axis=-1)
        q, k, v = (u.reshape(L, heads, width // heads) for u in (q, k, v))
        att = jax.nn.softmax(jnp.einsum("qhd,khd->hqk", q, k) / math.sqrt(width // heads), -1)
        o = jnp.einsum("hqk,khd->qhd", att, v).reshape(L, width)
        h = h + o @ blk["proj"]["w"] + blk["proj"]["b"]
        a = _layer_norm(h, blk["ln2"])
        h = (
            h
            + jax.nn.gelu(a @ blk["fc1"]["w"] + blk["fc1"]["b"]) @ blk["fc2"]["w"]
            + blk["fc2"]["b"]
        )
    return h @ params["out"]["w"] + params["out"]["b"]


# --------------------------------------------------------------------------------------------
# Training loops
# --------------------------------------------------------------------------------------------

DataFn = Callable[[Array, int], Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitConfig:
    """Optimisation shared by every trainer here: AdamW (weight decay 1e-4) on a cosine schedule
    from ``lr`` over ``steps`` steps of ``batch_size`` examples, gradients clipped to norm 1."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={v!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got lr={self.lr!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VPTrainConfig(FitConfig):
    """:func:`make_train_vp`: ``prediction`` "x0" or "eps", the VP schedule's beta range."""

    prediction: str = "x0"
    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        super().__post_init__()
        if self.prediction not in ("x0", "eps"):
            raise ValueError(
                f"prediction must be 'x0' or 'eps', got prediction={self.prediction!r}"
            )
        if not 0 <= self.beta_min < self.beta_max:
            raise ValueError(
                f"need 0 <= beta_min < beta_max, got {self.beta_min=}, {self.beta_max=}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskedTrainConfig(FitConfig):
    """:func:`make_train_masked`: token ids are ``[0, vocab_size)``, the mask id is ``vocab_size``."""

    vocab_size: int
    batch_size: int = 128

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {self.vocab_size!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValueTrainConfig(FitConfig):
    """:func:`make_train_value`: ``lam=None`` fits the mean value, ``lam > 0`` the soft value;
    ``num_rollouts`` sampler trajectories give the regression pairs."""

    lam: float | None = None
    num_rollouts: int = 1024

    def __post_init__(self):
        super().__post_init__()
        lam = self.lam
        if lam is not None and not (np.isfinite(lam) and lam > 0):
            raise ValueError(f"lam must be None (mean value) or a finite number > 0, got {lam=}")
        if not isinstance(self.num_rollouts, int) or self.num_rollouts < 1:
            raise ValueError(f"num_rollouts must be a positive int, got {self.num_rollouts!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierTrainConfig(FitConfig):
    """:func:`make_train_classifier`: Gaussian input noise of standard deviation ``noise``."""

    steps: int = 1000
    batch_size: int = 128
    noise: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got noise={self.noise!r}")


def _fit(config: FitConfig, loss_fn, init_fn):
    steps = config.steps
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(optax.cosine_decay_schedule(config.lr, steps), weight_decay=1e-4),
    )

    def train(key: Array):
        k0, key = jax.random.split(key)
        params = init_fn(k0)
        opt = tx.init(params)

        def body(carry, k):
            params, opt = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, k)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), opt), loss

        (params, _), losses = lax.scan(body, (params, opt), jax.random.split(key, steps))
        return params, losses

    return train


def make_train_vp(
    config: VPTrainConfig,
    apply_fn: Callable[[Params, Array, Array], Array],
    init_fn: Callable[[Array], Params],
    data_fn: DataFn,
):
    """Returns train(key) -> (params, losses (steps,)) for a VP denoiser.

    Loss: E_{x0, t~U(1e-3, 1), eps} || f(sqrt(abar) x0 + sqrt(1 - abar) eps, t) - target ||^2.
    """
    batch_size, prediction = config.batch_size, config.prediction
    beta_min, beta_max = config.beta_min, config.beta_max

    def loss_fn(params, key):
        kd, kt, kn = jax.random.split(key, 3)
        x0 = data_fn(kd, batch_size)
        t = jax.random.uniform(kt, (batch_size,), minval=1e-3, maxval=1.0)
        ab = vp_alpha_bar(t, beta_min=beta_min, beta_max=beta_max)[:, None]
        eps = jax.random.normal(kn, x0.shape)
        xt = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
        pred = jax.vmap(apply_fn, in_axes=(None, 0, 0))(params, xt, t)
        return jnp.mean((pred - (x0 if prediction == "x0" else eps)) ** 2)

    return _fit(config, loss_fn, init_fn)


def make_train_masked(
    config: MaskedTrainConfig,
    apply_fn: Callable[[Params, Array, Array], Array],
    init_fn: Callable[[Array], Params],
    data_fn: DataFn,
):
    """Returns train(key) for an MDLM denoiser: E_t [1/t sum_{masked i} -log p_theta(x0_i | z_t)]/L."""
    batch_size, vocab_size = config.batch_size, config.vocab_size

    def loss_fn(params, key):
        kd, kt, km = jax.random.split(key, 3)
        x0 = data_fn(kd, batch_size)
        t = jax.random.uniform(kt, (batch_size,), minval=1e-3, maxval=1.0)
        z = jax.vmap(lambda k, x, tt: masked_forward(k, x, tt, mask_id=vocab_size))(
            jax.random.split(km, batch_size), x0, t
        )
        logits = jax.vmap(apply_fn, in_axes=(None, 0, 0))(params, z, t)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), x0[..., None], -1)[..., 0]
        w = (z == vocab_size) / t[:, None]
        return jnp.mean(jnp.sum(w * nll, -1)) / x0.shape[-1]

    return _fit(config, loss_fn, init_fn)


def soft_value_loss(v: Array, r: Array, *, lam: float, offset: Array | float = 0.0) -> Array:
    """Per-sample loss whose minimiser over v is the soft value (1/lam) log E[exp(lam r) | x_t].

    With f = lam (v - c) and y = exp(lam (r - c)) (c = ``offset``, a constant for scale),

        l(f; y) = exp(f) - y f,

    is convex in f and its conditional risk E[l | x_t] = exp(f) - E[y | x_t] f is minimised at
    exp(f) = E[y | x_t], i.e. v = c + (1/lam) log E[exp(lam (r - c)) | x_t] (a Poisson-type proper
    loss for E[y | x]; regressing log y instead would estimate E[r | x_t], the lam -> 0 value).
    Above f = 20, exp(f) is continued linearly so an overshooting network keeps finite gradients,
    and y is capped at exp(20) so the loss stays bounded below (a target that large would dominate
    any batch anyway). Shapes: v, r (...) -> (...).
    """
    cap = 20.0
    f = lam * (v - offset)
    y = jnp.exp(jnp.minimum(lam * (r - offset), cap))
    ef = jnp.where(f > cap, jnp.exp(cap) * (1.0 + f - cap), jnp.exp(jnp.minimum(f, cap)))
    return ef - y * f


def make_train_value(
    config: ValueTrainConfig,
    value_apply: Callable[[Params, Array, Array], Array],
    value_init: Callable[[Array], Params],
    process: Process,
    denoiser_params: Any,
    reward_fn: Callable[[Array], Array],
):
    """SVDD-MC (Li et al. 2024, Sec. 4): returns train(key) -> ({"net", "offset"}, losses).

    Rollouts x_T, ..., x_0 of the pretrained sampler give pairs (x_t, r(x_0)) for every t, on which
    ``value_apply(net, x_t, t)`` (t = n / T) is fitted. The value is v = offset + sum(outputs), with
    offset = mean r over the rollouts (it spares the network learning a large constant):

    - ``lam=None``: scalar output m, least squares E (offset + m - r(x0))^2, so v -> E[r(x0) | x_t]
      (the paper's practice for small alpha; the soft value's lam -> 0 limit);
    - ``lam > 0``: two outputs (m, g). m is fitted as above and g by :func:`soft_value_loss` on the
      residual r - m (m held fixed), so offset + m + g -> (1/lam) log E[exp(lam r(x0)) | x_t], the
      soft value with which SVDD at alpha = 1 / lam targets exp(lam r) p (for many candidates).
      The decomposition is exact for any m(x_t); centring on m keeps the targets
      y = exp(lam (r - m)) of order one everywhere, where a single head fitted to exp(lam r) would
      be trained almost only on high-reward states.

    Use the result with :func:`value_fn_from`.
    """
    lam, num_rollouts, batch_size = config.lam, config.num_rollouts, config.batch_size
    T = process.num_steps
    want = () if lam is None else (2,)

    def train(key: Array):
        kr, kf = jax.random.split(key)
        paths = jax.vmap(lambda k: sample_trajectory(k, denoiser_params, process))(
            jax.random.split(kr, num_rollouts)
        )  # (N, T+1, *event); row j at grid index T - j
        r = jax.vmap(reward_fn)(paths[:, -1]).astype(jnp.float32)
        offset = jnp.mean(r)

        def loss_fn(net, k):
            ki, kj = jax.random.split(k)
            i = jax.random.randint(ki, (batch_size,), 0, num_rollouts)
            j = jax.random.randint(kj, (batch_size,), 0, T)  # exclude x0 itself
            t = (T - j).astype(jnp.float32) / T
            out = jax.vmap(value_apply, in_axes=(None, 0, 0))(net, paths[i, j], t)
            if out.shape[1:] != want:
                raise ValueError(
                    f"value_apply must return shape {want} per sample "
                    f"({'scalar' if lam is None else 'mean and soft heads'}), got {out.shape[1:]}"
                )
            if lam is None:
                return jnp.mean((offset + out - r[i]) ** 2)
            m = offset + out[:, 0]
            soft = soft_value_loss(out[:, 1], r[i] - lax.stop_gradient(m), lam=lam)
            return jnp.mean((m - r[i]) ** 2) + jnp.mean(soft)

        net, losses = _fit(config, loss_fn, value_init)(kf)
        return {"net": net, "offset": offset}, losses

    return train


def value_fn_from(value_apply: Callable[[Params, Array, Array], Array], num_steps: int):
    """Adapts a :func:`make_train_value` result to the ``value_fn(params, x, n)`` of :func:`svdd`.

    v(x, n) = params["offset"] + sum(value_apply(params["net"], x, n / T)).
    """

    def value_fn(params, x, n):
        t = jnp.asarray(n, jnp.float32) / num_steps
        return params["offset"] + jnp.sum(value_apply(params["net"], x, t))

    return value_fn


def make_train_classifier(
    config: ClassifierTrainConfig,
    apply_fn: Callable[[Params, Array, Array], Array],
    init_fn: Callable[[Array], Params],
    x: Array,
    y: Array,
):
    """Returns train(key) for a softmax classifier f(x, 0) -> logits on (x, y), with input noise."""
    batch_size, noise = config.batch_size, config.noise

    def loss_fn(params, key):
        ki, kn = jax.random.split(key)
        i = jax.random.randint(ki, (batch_size,), 0, x.shape[0])
        xb = x[i] + noise * jax.random.normal(kn, x[i].shape)
        logits = jax.vmap(apply_fn, in_axes=(None, 0, None))(params, xb, 0.0)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y[i]))

    return _fit(config, loss_fn, init_fn)


# --------------------------------------------------------------------------------------------
# Data and shipped weights
# --------------------------------------------------------------------------------------------


def load_digits_scaled() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn 8x8 digits scaled to [-1, 1]: x (1797, 64) float32, y (1797,) int32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 8.0 - 1.0).astype(np.float32), d.target.astype(np.int32)


ASSETS = Path(__file__).parent / "assets"


def load_asset(name: str) -> Any:
    """Trained weights shipped under ``jaxsel/diffusion/assets/<name>`` (see scripts/train_diffusion_toys.py)."""
    path = ASSETS / name
    if not path.exists():
        raise FileNotFoundError(
            f"no trained weights at {path}; run `python scripts/train_diffusion_toys.py` first"
        )
    return restore_tree(path)


def two_mlp_init(key: Array, dim: int, **kwargs: Any) -> Params:
    """Two scalar-output MLPs (:func:`mlp_init` kwargs) for the mean and soft heads of a soft value.

    Separate trunks keep the heavy-tailed soft-loss gradients (targets exp(lam (r - m))) from
    disturbing the least-squares mean head that centres them.
    """
    k1, k2 = jax.random.split(key)
    kwargs = kwargs | {"out_dim": 1}
    return {"mean": mlp_init(k1, dim, **kwargs), "soft": mlp_init(k2, dim, **kwargs)}


def two_mlp_apply(params: Params, x: Array, t: Array) -> Array:
    """(mean head, soft head) (2,) for :func:`make_train_value` with ``lam > 0``."""
    return jnp.concatenate([mlp_apply(params["mean"], x, t), mlp_apply(params["soft"], x, t)])


def scalar_mlp_apply(params: Params, x: Array, t: Array) -> Array:
    """:func:`mlp_apply` with a 1-unit output squeezed to a scalar (mean value networks)."""
    return mlp_apply(params, x, t)[0]
