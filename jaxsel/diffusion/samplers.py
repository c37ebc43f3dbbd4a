"""Reverse samplers for a variance-preserving (VP) Gaussian process and masked discrete diffusion.

Everything here is a pure function of a denoiser ``denoise_fn(params, x_t, t)`` and runs as one
``lax.scan`` over steps; inputs are *unbatched* (one sample), callers batch with ``jax.vmap``.

Continuous (Ho et al. 2020, DDPM; Song et al. 2021, DDIM), VP forward process

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar(t) = exp(-∫_0^t beta(s) ds),

discretised on the grid t_n = n / T, n = 0..T (``abar_0 = 1``). One reverse step from t to s < t
with a clean-data estimate x0_hat and eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t):

    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s),

which is DDIM for ``eta = 0`` and the DDPM ancestral posterior q(x_s | x_t, x0_hat) for ``eta = 1``.

Masked (absorbing) diffusion (Sahoo et al. 2024, MDLM): each token is kept with probability
``alpha_t = 1 - t`` and otherwise replaced by the mask id ``V``. With x0 probabilities p_theta from the
denoiser, a masked token moves from t to s < t by

    p(z_s = v) = (alpha_s - alpha_t) / (1 - alpha_t) p_theta(v),   p(z_s = mask) = (1 - alpha_s)/(1 - alpha_t),

sampled with the Gumbel-max trick; unmasked tokens are carried through unchanged.

A :class:`Process` bundles these as closures, which the steering methods in
:mod:`jaxsel.diffusion.steering` drive without knowing whether the state is continuous or discrete.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
DenoiseFn = Callable[[Any, Array, Array], Array]


# --------------------------------------------------------------------------------------------
# Continuous VP process
# --------------------------------------------------------------------------------------------


class VPSchedule(NamedTuple):
    """``alpha_bars[n]`` = abar(t_n) on t_n = n / T, n = 0..T; ``alpha_bars[0] = 1``. Shape (T + 1,)."""

    alpha_bars: Array

    @property
    def num_steps(self) -> int:
        return self.alpha_bars.shape[0] - 1


def vp_schedule(num_steps: int, *, beta_min: float = 0.1, beta_max: float = 20.0) -> VPSchedule:
    """Linear-beta VP schedule (Song et al. 2021): abar(t) = exp(-beta_min t - (beta_max-beta_min) t^2/2)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps=}")
    if not 0 <= beta_min <= beta_max:
        raise ValueError(f"need 0 <= beta_min <= beta_max, got {beta_min=}, {beta_max=}")
    t = jnp.linspace(0.0, 1.0, num_steps + 1)
    return VPSchedule(vp_alpha_bar(t, beta_min=beta_min, beta_max=beta_max))


def vp_alpha_bar(t: Array, *, beta_min: float = 0.1, beta_max: float = 20.0) -> Array:
    """abar(t) = exp(-beta_min t - (beta_max - beta_min) t^2 / 2) for t in [0, 1]."""
    t = jnp.asarray(t, jnp.float32)
    return jnp.exp(-beta_min * t - 0.5 * (beta_max - beta_min) * t**2)


def vp_marginal(key: Array, x0: Array, n: Array | int, schedule: VPSchedule) -> tuple[Array, Array]:
    """Forward draw x_t ~ q(x_t | x_0) at grid index ``n``; returns (x_t, eps)."""
    ab = schedule.alpha_bars[n]
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps, eps


def predict_x0(
    model_out: Array, x_t: Array, alpha_bar_t: Array, *, prediction: str = "x0"
) -> Array:
    """Clean-data estimate from a denoiser output: itself (``"x0"``) or from eps (``"eps"``).

    x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t).
    """
    if prediction == "x0":
        return model_out
    if prediction == "eps":
        return (x_t - jnp.sqrt(1.0 - alpha_bar_t) * model_out) / jnp.sqrt(alpha_bar_t)
    raise ValueError(f"prediction must be 'x0' or 'eps', got {prediction=!r}")


def ddim_step(
    key: Array,
    x_t: Array,
    x0_hat: Array,
    alpha_bar_t: Array,
    alpha_bar_s: Array,
    *,
    eta: float = 1.0,
) -> Array:
    """One reverse step t -> s (s < t) given x0_hat. ``eta = 1``: DDPM ancestral, ``eta = 0``: DDIM.

    Shapes: x_t, x0_hat (*event); abar scalars.
    """
    eps_hat = (x_t - jnp.sqrt(alpha_bar_t) * x0_hat) / jnp.sqrt(1.0 - alpha_bar_t)
    var = (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_s)
    sigma = eta * jnp.sqrt(jnp.maximum(var, 0.0))
    dir_coef = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_s - sigma**2, 0.0))
    z = jax.random.normal(key, x_t.shape, x_t.dtype)
    return jnp.sqrt(alpha_bar_s) * x0_hat + dir_coef * eps_hat + sigma * z


def ddpm_step(
    key: Array, x_t: Array, x0_hat: Array, alpha_bar_t: Array, alpha_bar_s: Array
) -> Array:
    """DDPM ancestral step from the Gaussian posterior q(x_s | x_t, x0 = x0_hat) (Ho et al. eq. 7).

    mean = sqrt(abar_s) beta / (1 - abar_t) x0 + sqrt(a) (1 - abar_s) / (1 - abar_t) x_t,
    var = (1 - abar_s) / (1 - abar_t) beta, with a = abar_t / abar_s, beta = 1 - a.
    """
    a = alpha_bar_t / alpha_bar_s
    beta = 1.0 - a
    mean = (
        jnp.sqrt(alpha_bar_s) * beta / (1.0 - alpha_bar_t) * x0_hat
        + jnp.sqrt(a) * (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t) * x_t
    )
    var = (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t) * beta
    z = jax.random.normal(key, x_t.shape, x_t.dtype)
    return mean + jnp.sqrt(jnp.maximum(var, 0.0)) * z


# --------------------------------------------------------------------------------------------
# Masked (absorbing) discrete process
# --------------------------------------------------------------------------------------------


def masked_alpha(t: Array) -> Array:
    """Keep probability of the linear masking schedule, alpha_t = 1 - t."""
    return 1.0 - t


def masked_forward(key: Array, x0: Array, t: Array, *, mask_id: int) -> Array:
    """q(z_t | x_0): each token independently kept with prob alpha_t, else set to ``mask_id``."""
    keep = jax.random.uniform(key, x0.shape) < masked_alpha(t)
    return jnp.where(keep, x0, mask_id)


def masked_step(
    key: Array, z_t: Array, logits: Array, t: Array, s: Array, *, mask_id: int
) -> Array:
    """One MDLM reverse step t -> s for a sequence. Shapes: z_t (L,) int, logits (L, V).

    Masked positions draw from [(alpha_s - alpha_t) p_theta, 1 - alpha_s] / (1 - alpha_t) by
    Gumbel-max; unmasked positions are copied (the carry-over property of absorbing diffusion).
    """
    if logits.ndim != z_t.ndim + 1:
        raise ValueError(f"logits must be z_t.shape + (V,), got {logits.shape=}, {z_t.shape=}")
    a_t, a_s = masked_alpha(t), masked_alpha(s)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_unmask = jnp.log(jnp.maximum(a_s - a_t, 0.0)) - jnp.log1p(-a_t)
    log_stay = jnp.log(jnp.maximum(1.0 - a_s, 0.0)) - jnp.log1p(-a_t)
    full = jnp.concatenate(
        [logp + log_unmask, jnp.broadcast_to(log_stay, z_t.shape)[..., None]], axis=-1
    )
    g = jax.random.gumbel(key, full.shape)
    choice = jnp.argmax(full + g, axis=-1)
    new = jnp.where(choice == logits.shape[-1], mask_id, choice).astype(z_t.dtype)
    return jnp.where(z_t == mask_id, new, z_t)


def masked_x0_hat(z_t: Array, logits: Array, *, mask_id: int) -> Array:
    """Point estimate of x0 for rewards: argmax of the denoiser at masked tokens, the rest copied."""
    return jnp.where(z_t == mask_id, jnp.argmax(logits, axis=-1).astype(z_t.dtype), z_t)


# --------------------------------------------------------------------------------------------
# Process: what the steering methods drive
# --------------------------------------------------------------------------------------------


class Process(NamedTuple):
    """A reverse process as pure closures (all unbatched; ``n`` counts down from T to 1).

    - ``init(key) -> x_T``
    - ``model(params, x_n, n) -> out``: one denoiser call at grid index n (the cost unit we count);
    - ``x0_hat(x_n, n, out) -> x0 estimate`` that rewards see (same shape/dtype as a sample);
    - ``step(key, x_n, n, out) -> x_{n-1}``.
    """

    num_steps: int
    init: Callable[[Array], Array]
    model: Callable[[Any, Array, Array], Any]
    x0_hat: Callable[[Array, Array, Any], Array]
    step: Callable[[Array, Array, Array, Any], Array]


def vp_process(
    denoise_fn: DenoiseFn,
    schedule: VPSchedule,
    shape: tuple[int, ...],
    *,
    prediction: str = "x0",
    eta: float = 1.0,
    clip: float | None = None,
    dtype: Any = jnp.float32,
) -> Process:
    """Continuous VP process; the denoiser is called as ``denoise_fn(params, x_t, t)``, t in (0, 1].

    ``prediction``: what the denoiser returns, ``"x0"`` or ``"eps"``. ``eta``: 1 = DDPM, 0 = DDIM.
    ``clip``: clamp x0_hat to [-clip, clip] (useful for bounded data such as images).
    """
    if prediction not in ("x0", "eps"):
        raise ValueError(f"prediction must be 'x0' or 'eps', got {prediction=!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta=}")
    T = schedule.num_steps
    ab = schedule.alpha_bars

    def init(key):
        return jax.random.normal(key, shape, dtype)

    def model(params, x, n):
        t = jnp.asarray(n, jnp.float32) / T
        out = denoise_fn(params, x, t)
        if out.shape != x.shape:
            raise ValueError(f"denoise_fn returned shape {out.shape}, expected x_t shape {x.shape}")
        return out

    def x0_hat(x, n, out):
        x0 = predict_x0(out, x, ab[n], prediction=prediction)
        return x0 if clip is None else jnp.clip(x0, -clip, clip)

    def step(key, x, n, out):
        return ddim_step(key, x, x0_hat(x, n, out), ab[n], ab[n - 1], eta=eta)

    return Process(T, init, model, x0_hat, step)


def masked_process(denoise_fn: DenoiseFn, num_steps: int, length: int, vocab_size: int) -> Process:
    """MDLM process over sequences of ``length`` tokens in [0, V); mask id is ``V``.

    The denoiser is called as ``denoise_fn(params, z_t, t)`` with z_t (L,) int32 and returns x0
    logits (L, V).
    """
    if num_steps < 1 or length < 1 or vocab_size < 1:
        raise ValueError(f"need positive sizes, got {num_steps=}, {length=}, {vocab_size=}")
    T, mask_id = num_steps, vocab_size

    def init(key):
        del key
        return jnp.full((length,), mask_id, jnp.int32)

    def model(params, z, n):
        out = denoise_fn(params, z, jnp.asarray(n, jnp.float32) / T)
        if out.shape != (length, vocab_size):
            raise ValueError(
                f"denoise_fn returned shape {out.shape}, expected (length, V) = "
                f"{(length, vocab_size)}"
            )
        return out

    def x0_hat(z, n, out):
        del n
        return masked_x0_hat(z, out, mask_id=mask_id)

    def step(key, z, n, out):
        t = jnp.asarray(n, jnp.float32) / T
        return masked_step(key, z, out, t, t - 1.0 / T, mask_id=mask_id)

    return Process(T, init, model, x0_hat, step)


def sample(key: Array, params: Any, process: Process) -> Array:
    """Ancestral sample from the unsteered model: one ``lax.scan`` over the T reverse steps."""
    k0, key = jax.random.split(key)
    x = process.init(k0)

    def body(x, inp):
        n, k = inp
        out = process.model(params, x, n)
        return process.step(k, x, n, out), None

    ns = jnp.arange(process.num_steps, 0, -1)
    x, _ = lax.scan(body, x, (ns, jax.random.split(key, process.num_steps)))
    return x


def sample_trajectory(key: Array, params: Any, process: Process) -> Array:
    """Like :func:`sample` but returns the whole path (T + 1, *event): x_T, x_{T-1}, ..., x_0.

    Row j holds the state at grid index T - j (used to regress value networks on rollouts).
    """
    k0, key = jax.random.split(key)
    x = process.init(k0)

    def body(x, inp):
        n, k = inp
        out = process.model(params, x, n)
        x = process.step(k, x, n, out)
        return x, x

    ns = jnp.arange(process.num_steps, 0, -1)
    _, path = lax.scan(body, x, (ns, jax.random.split(key, process.num_steps)))
    return jnp.concatenate([x[None], path])
