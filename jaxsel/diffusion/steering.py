"""Derivative-free steering of a pretrained diffusion model towards exp(lambda r(x0)) p(x0).

All methods take a :class:`~jaxsel.diffusion.samplers.Process` (continuous VP or masked discrete),
denoiser ``params`` and a black-box reward ``reward_fn(x0) -> scalar`` for ONE unbatched sample; they
return one :class:`SteeringResult` per call (vmap over keys for many independent outputs), run one
``lax.scan`` over the reverse steps, vmap over particles/candidates inside, and count every denoiser
and reward evaluation.

- :func:`best_of_n` — N independent samples, keep argmax r (``alpha = 0``) or draw from softmax(r/alpha)
  (sampling-importance-resampling, which targets exp(r/alpha) p as N grows).
- :func:`svdd` — SVDD (Li et al. 2024, arXiv 2408.08252): each step draws M candidates
  x_{t-1}^m ~ p(.|x_t), scores v_m = r(x0_hat(x_{t-1}^m)) (SVDD-PM) or a learned value v_phi (SVDD-MC),
  keeps one by Categorical(softmax(v / alpha)); ``alpha = 0`` is argmax (what the authors' code runs).
  Optional batch-level resampling of the chains (our reading of SVDD-R; see :func:`svdd`).
- :func:`fk_steering` — Feynman-Kac steering (Singhal et al. 2025, arXiv 2501.06848): k particles,
  potentials on rewards of x0 predictions
      DIFF  G_t = exp(lam (r_t - r_prev)),  MAX  G_t = exp(lam max_{s>=t} r_s),
      SUM   G_t = exp(lam sum_{s>=t} r_s),  RT   G_t = exp(lam r_t),
  applied at the steps of a resampling mask; the last step applies G_0 = exp(lam r(x0)) / prod(applied
  G) along each particle's ancestry, so the product of potentials is exactly exp(lam r(x0)) and the
  weighted particles target exp(lam r) p. Resampling is multinomial or systematic, either at every
  scheduled step or adaptively when ESS < ess_threshold * k. Weights live in log space and are carried
  across steps that do not resample (the reference code does neither).
- :func:`smc` — the SMC / TDS-without-gradients baseline: DIFF potential, resample every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsel.diffusion.samplers import Process

Array = jax.Array
RewardFn = Callable[[Array], Array]

POTENTIALS = ("diff", "max", "sum", "rt")
RESAMPLERS = ("multinomial", "systematic")


class SteeringResult(NamedTuple):
    """Output of one steered run.

    sample: the chosen output (*event). population: (P, *event) final particles / chains / candidates.
    log_weights: (P,) final normalised log weights of the population (uniform where not weighted).
    rewards: (P,) r of the final population. denoiser_calls, reward_calls, value_calls: int32 counts
    of single-sample evaluations. num_resamples: resampling events. nonfinite_rewards: how many reward
    evaluations were NaN/inf (treated as -inf). log_normalizer: SMC estimate of log E_p[exp(lam r)]
    (FK, SMC and weighted SVDD-R; 0 elsewhere), unbiased on the exp scale.
    """

    sample: Array
    population: Array
    log_weights: Array
    rewards: Array
    denoiser_calls: Array
    reward_calls: Array
    value_calls: Array
    num_resamples: Array
    nonfinite_rewards: Array
    log_normalizer: Array


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def _normalised(log_weights: Array) -> Array:
    # All -inf (every reward NaN) would give NaN probabilities; fall back to uniform instead.
    lw = jnp.where(jnp.all(jnp.isneginf(log_weights)), 0.0, log_weights)
    return lw - jax.nn.logsumexp(lw)


def _finite_or_uniform(log_weights: Array) -> Array:
    return jnp.where(jnp.all(jnp.isneginf(log_weights)), 0.0, log_weights)


def effective_sample_size(log_weights: Array) -> Array:
    """ESS = (sum w)^2 / sum w^2 from log weights (k,), computed in log space."""
    lw = _normalised(log_weights)
    return jnp.exp(-jax.nn.logsumexp(2.0 * lw))


def multinomial_resample(key: Array, log_weights: Array, num: int | None = None) -> Array:
    """``num`` (default k) ancestor indices drawn i.i.d. from Categorical(softmax(log_weights))."""
    num = log_weights.shape[0] if num is None else num
    return jax.random.categorical(key, _normalised(log_weights), shape=(num,))


def systematic_resample(key: Array, log_weights: Array, num: int | None = None) -> Array:
    """Systematic resampling: one uniform u, points (u + i) / num, inverted through the weight CDF.

    Unbiased (E[#copies of i] = num w_i) with lower variance than multinomial.
    """
    k = log_weights.shape[0]
    num = k if num is None else num
    cdf = jnp.cumsum(jnp.exp(_normalised(log_weights)))
    u = (jax.random.uniform(key) + jnp.arange(num)) / num
    return jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, k - 1)


def resample(key: Array, log_weights: Array, *, method: str = "multinomial") -> Array:
    """Ancestor indices (k,) by ``method`` in ``RESAMPLERS``."""
    if method == "multinomial":
        return multinomial_resample(key, log_weights)
    if method == "systematic":
        return systematic_resample(key, log_weights)
    raise ValueError(f"unknown resampling method {method!r}; expected one of {RESAMPLERS}")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}")


def _check_reward(reward_fn: RewardFn, x: Array) -> None:
    """Trace-time check that the reward maps one sample to one real scalar."""
    try:
        out = jax.eval_shape(reward_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except Exception as e:  # surface the sample shape the reward was given
        raise ValueError(
            f"reward_fn failed on one sample of shape {x.shape} ({x.dtype}): {e}"
        ) from e
    if not hasattr(out, "shape") or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"reward_fn must return a scalar for one sample of shape {x.shape}; got shape {shape}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating) and not jnp.issubdtype(out.dtype, jnp.integer):
        raise ValueError(f"reward_fn must return a real number, got dtype {out.dtype}")


def _check_finite_param(name: str, value: float) -> None:
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}")


def _check_value_fn(value_fn: Callable, value_params: Any, x: Array, n: Array) -> None:
    out = jax.eval_shape(value_fn, value_params, jax.ShapeDtypeStruct(x.shape, x.dtype), n)
    if getattr(out, "shape", None) != ():
        raise ValueError(
            f"value_fn must return a scalar for one sample of shape {x.shape}; got shape "
            f"{getattr(out, 'shape', type(out).__name__)}"
        )


def _rewards(reward_fn: RewardFn, xs: Array) -> tuple[Array, Array]:
    """Vmapped reward over a population (P, *event); NaN/inf -> -inf, plus how many there were."""
    r = jax.vmap(reward_fn)(xs).astype(jnp.float32)
    bad = ~jnp.isfinite(r)
    return jnp.where(bad, -jnp.inf, r), jnp.sum(bad).astype(jnp.int32)


def _raise_nonfinite(count) -> None:
    count = np.asarray(count)
    if np.any(count > 0):
        raise ValueError(
            f"reward_fn returned NaN or inf for {int(count.sum())} evaluation(s); "
            "rewards must be finite (pass check_finite=False to treat them as -inf)"
        )


def _finish(result: SteeringResult, check_finite: bool) -> SteeringResult:
    if check_finite:
        jax.debug.callback(_raise_nonfinite, result.nonfinite_rewards)
    return result


def _constrain(tree: Any, sharding: Any) -> Any:
    if sharding is None:
        return tree
    return jax.tree.map(lambda a: lax.with_sharding_constraint(a, sharding), tree)


def _take(tree: Any, idx: Array) -> Any:
    return jax.tree.map(lambda a: a[idx], tree)


def _pop_model(process: Process, params: Any, xs: Array, n: Array) -> Any:
    return jax.vmap(process.model, in_axes=(None, 0, None))(params, xs, n)


def _pop_x0(process: Process, xs: Array, n: Array, outs: Any) -> Array:
    return jax.vmap(process.x0_hat, in_axes=(0, None, 0))(xs, n, outs)


def _pop_step(process: Process, key: Array, xs: Array, n: Array, outs: Any) -> Array:
    keys = jax.random.split(key, xs.shape[0])
    return jax.vmap(process.step, in_axes=(0, 0, None, 0))(keys, xs, n, outs)


def _i32(v: int | Array) -> Array:
    return jnp.asarray(v, jnp.int32)


# --------------------------------------------------------------------------------------------
# Best-of-N
# --------------------------------------------------------------------------------------------


def best_of_n(
    key: Array,
    params: Any,
    process: Process,
    reward_fn: RewardFn,
    *,
    num_samples: int,
    alpha: float = 0.0,
    check_finite: bool = True,
) -> SteeringResult:
    """N unsteered samples, then argmax r (``alpha = 0``) or one draw from softmax(r / alpha).

    Cost: N T denoiser calls, N reward calls.
    """
    _check_count("num_samples", num_samples)
    if not alpha >= 0:  # also rejects NaN
        raise ValueError(f"alpha must be >= 0, got {alpha=}")
    k_init, k_run, k_pick = jax.random.split(key, 3)
    x = jax.vmap(process.init)(jax.random.split(k_init, num_samples))
    _check_reward(reward_fn, x[0])

    def body(x, inp):
        n, k = inp
        out = _pop_model(process, params, x, n)
        return _pop_step(process, k, x, n, out), None

    T = process.num_steps
    ns = jnp.arange(T, 0, -1)
    x, _ = lax.scan(body, x, (ns, jax.random.split(k_run, T)))
    r, bad = _rewards(reward_fn, x)
    if alpha == 0.0:
        pick = jnp.argmax(r)
        logw = jnp.full((num_samples,), -jnp.log(num_samples))
    else:
        logw = _normalised(r / alpha)
        pick = jax.random.categorical(k_pick, logw)
    res = SteeringResult(
        sample=x[pick],
        population=x,
        log_weights=logw,
        rewards=r,
        denoiser_calls=_i32(num_samples * T),
        reward_calls=_i32(num_samples),
        value_calls=_i32(0),
        num_resamples=_i32(0),
        nonfinite_rewards=bad,
        log_normalizer=jnp.zeros(()),
    )
    return _finish(res, check_finite)


# --------------------------------------------------------------------------------------------
# SVDD
# --------------------------------------------------------------------------------------------


def svdd(
    key: Array,
    params: Any,
    process: Process,
    reward_fn: RewardFn,
    *,
    num_candidates: int,
    alpha: float = 0.0,
    num_chains: int = 1,
    batch_resample_lam: float | None = None,
    value_fn: Callable[[Any, Array, Array], Array] | None = None,
    value_params: Any = None,
    particle_sharding: Any = None,
    check_finite: bool = True,
) -> SteeringResult:
    """Soft value-based decoding (SVDD, Li et al. 2024), one or more chains.

    Per step and chain: M candidates x^m ~ p(x_{t-1} | x_t), values v_m, keep x^{m*} with
    m* ~ Categorical(softmax(v / alpha)) (argmax when ``alpha = 0``). Values:

    - SVDD-PM (``value_fn=None``): v_m = r(x0_hat(x^m)), which costs one denoiser call per candidate
      (reused as the next step's model output for the kept one) and one reward call per candidate;
    - SVDD-MC: v_m = ``value_fn(value_params, x^m, n)`` (a regressed soft value, see
      :mod:`jaxsel.diffusion.train`); then one denoiser call per chain per step.

    The last step scores candidates with the true reward r(x_0). Targets exp(r / alpha) p_pre.

    ``batch_resample_lam`` (SVDD-R, our reading): the ``num_chains`` chains also carry log weights
    and are resampled (multinomial) after every step. Picking candidate m* with probability q_m* out
    of M draws from p_pre is properly weighted by the random weight

        w = exp(lam (v_m* - v_prev)) / (M q_m*),

    which for ``alpha = 1 / lam`` is the candidates' mean (1/M) sum_m exp(lam (v_m - v_prev)). The
    last step scores with r(x0), so the weights telescope and the weighted chains target
    exp(lam r) p as ``num_chains`` grows for ANY value (PM included); ``sample`` is drawn from the
    final weights. With ``alpha = 0`` (q_m* = 1) this is only a heuristic. Without it, SVDD targets
    exp(r / alpha) p only when v is the soft value alpha log E[exp(r(x0) / alpha) | x_t] and M is
    large; SVDD-PM's r(x0_hat(x_t)) stands in for E[r(x0) | x_t] (equal for a linear r), the
    alpha -> inf limit of that value, so it under-rates states whose posterior still spreads over
    high-reward regions; SVDD-PM is therefore biased at finite alpha.

    Cost with PM: 1 + M (T - 1) denoiser and M T reward calls per chain.
    """
    _check_count("num_candidates", num_candidates)
    _check_count("num_chains", num_chains)
    if not alpha >= 0:  # also rejects NaN
        raise ValueError(f"alpha must be >= 0, got {alpha=}")
    if value_fn is not None and value_params is None:
        raise ValueError("value_fn needs value_params (SVDD-MC)")
    if batch_resample_lam is not None:
        _check_finite_param("batch_resample_lam", batch_resample_lam)
    C, M, T = num_chains, num_candidates, process.num_steps
    k_init, k_run, k_pick = jax.random.split(key, 3)
    x = jax.vmap(process.init)(jax.random.split(k_init, C))
    _check_reward(reward_fn, x[0])
    if value_fn is not None:
        _check_value_fn(value_fn, value_params, x[0], jnp.asarray(T))
    out = _pop_model(process, params, x, jnp.asarray(T))

    def propose(k, x, n, out):
        # (C, M, *event): M children of every chain from the same model output
        xr = jax.tree.map(lambda a: jnp.repeat(a, M, axis=0), x)
        outr = jax.tree.map(lambda a: jnp.repeat(a, M, axis=0), out)
        return _pop_step(process, k, xr, n, outr)

    def select(k, v):
        v = v.reshape(C, M)
        if alpha == 0.0:
            return jnp.argmax(v, axis=1), jnp.zeros((C,))
        logq = jax.vmap(_normalised)(v / alpha)
        m = jax.random.categorical(k, logq, axis=1)
        return m, jnp.take_along_axis(logq, m[:, None], axis=1)[:, 0]

    weighted = batch_resample_lam is not None and C > 1

    def reweight(logw, v_sel, v_prev, logq_sel):
        # random-weight proper weighting of the SIR selection (see docstring)
        inc = batch_resample_lam * (v_sel - v_prev) - jnp.log(M) - logq_sel
        return logw + jnp.where(jnp.isfinite(inc), inc, -jnp.inf)  # NaN value: zero weight

    def body(carry, inp):
        x, out, v_prev, logw, log_z, counts = carry
        n, k = inp
        k_prop, k_sel, k_res = jax.random.split(k, 3)
        xc = propose(k_prop, x, n, out)
        xc = _constrain(xc, particle_sharding)
        if value_fn is None:
            outc = _pop_model(process, params, xc, n - 1)
            v, bad = _rewards(reward_fn, _pop_x0(process, xc, n - 1, outc))
            d_den, d_rew, d_val = C * M, C * M, 0
        else:
            v = jax.vmap(value_fn, in_axes=(None, 0, None))(value_params, xc, n - 1)
            bad = jnp.sum(~jnp.isfinite(v)).astype(jnp.int32)
            v = jnp.where(jnp.isfinite(v), v, -jnp.inf)
            d_den, d_rew, d_val = C, 0, C * M
        m, logq_sel = select(k_sel, v)
        idx = jnp.arange(C) * M + m
        x_new, v_sel = xc[idx], v[idx]
        out_new = (
            _take(outc, idx) if value_fn is None else _pop_model(process, params, x_new, n - 1)
        )
        n_res = _i32(0)
        if weighted:
            logw = reweight(logw, v_sel, v_prev, logq_sel)
            log_z = log_z + jax.nn.logsumexp(_finite_or_uniform(logw)) - jnp.log(C)
            anc = multinomial_resample(k_res, logw)
            x_new, out_new, v_sel = _take((x_new, out_new, v_sel), anc)
            logw = jnp.zeros((C,))
            n_res = _i32(1)
        counts = counts + jnp.stack([_i32(d_den), _i32(d_rew), _i32(d_val), n_res, bad])
        return (x_new, out_new, v_sel, logw, log_z, counts), None

    counts0 = jnp.array([C, 0, 0, 0, 0], jnp.int32)
    ns = jnp.arange(T, 1, -1)
    keys = jax.random.split(k_run, T)
    zeros = jnp.zeros((C,))
    (x, out, v_prev, logw, log_z, counts), _ = lax.scan(
        body, (x, out, zeros, zeros, jnp.zeros(()), counts0), (ns, keys[: T - 1])
    )
    # Last step: candidates are clean samples, scored by the reward itself.
    k_prop, k_sel = jax.random.split(keys[T - 1])
    xc = propose(k_prop, x, jnp.asarray(1), out)
    r, bad = _rewards(reward_fn, xc)
    m, logq_sel = select(k_sel, r)
    idx = jnp.arange(C) * M + m
    x, r = xc[idx], r[idx]
    counts = counts + jnp.array([0, C * M, 0, 0, 0], jnp.int32) + bad * jnp.array([0, 0, 0, 0, 1])
    if weighted:
        logw = reweight(logw, r, v_prev, logq_sel)
        log_z = log_z + jax.nn.logsumexp(_finite_or_uniform(logw)) - jnp.log(C)
    logw = _normalised(logw)
    pick = (
        jax.random.categorical(k_pick, logw) if weighted else jax.random.randint(k_pick, (), 0, C)
    )
    res = SteeringResult(
        sample=x[pick],
        population=x,
        log_weights=logw,
        rewards=r,
        denoiser_calls=counts[0],
        reward_calls=counts[1],
        value_calls=counts[2],
        num_resamples=counts[3],
        nonfinite_rewards=counts[4],
        log_normalizer=log_z,
    )
    return _finish(res, check_finite)


# --------------------------------------------------------------------------------------------
# Feynman-Kac steering
# --------------------------------------------------------------------------------------------


def resample_schedule(
    num_steps: int, *, every: int = 1, start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Boolean step mask (T,): entry i is reverse step i (i = 0 goes from x_T to x_{T-1}).

    True at ``start, start + every, ...`` below ``stop``. The last step always applies the terminal
    potential whatever the mask says.
    """
    _check_count("num_steps", num_steps)
    _check_count("every", every)
    mask = np.zeros((num_steps,), bool)
    mask[start : num_steps if stop is None else stop : every] = True
    return mask


class _FKState(NamedTuple):
    x: Array
    out: Any
    logw: Array
    r_prev: Array
    r_max: Array
    r_sum: Array
    log_applied: Array


def potential_log(potential: str, lam: float, r: Array, state: _FKState) -> tuple[Array, tuple]:
    """log G for one potential step given new rewards r (k,); returns (log G, updated stats)."""
    r_max = jnp.maximum(state.r_max, r)
    r_sum = state.r_sum + r
    if potential == "diff":
        log_g = lam * (r - state.r_prev)
    elif potential == "max":
        log_g = lam * r_max
    elif potential == "sum":
        log_g = lam * r_sum
    elif potential == "rt":
        log_g = lam * r
    else:
        raise ValueError(f"unknown potential {potential!r}; expected one of {POTENTIALS}")
    # A NaN/inf reward is a zero weight. When every particle had one, resampling fell back to
    # uniform and the -inf stays in the statistics; any non-finite log G (-inf - -inf, r - -inf)
    # therefore means zero weight too, never NaN or +inf.
    log_g = jnp.where(jnp.isneginf(r) | ~jnp.isfinite(log_g), -jnp.inf, log_g)
    return log_g, (r, r_max, r_sum)


def fk_steering(
    key: Array,
    params: Any,
    process: Process,
    reward_fn: RewardFn,
    *,
    num_particles: int,
    lam: float = 10.0,
    potential: str = "diff",
    resample_mask: Array | np.ndarray | None = None,
    adaptive: bool = False,
    ess_threshold: float = 0.5,
    resampling: str = "multinomial",
    particle_sharding: Any = None,
    check_finite: bool = True,
) -> SteeringResult:
    """Feynman-Kac steering with k particles (Singhal et al. 2025); targets exp(lam r(x0)) p(x0).

    At every reverse step each particle proposes x_{t-1} ~ p(.|x_t) (one denoiser call at t-1, reused
    next step). At steps where ``resample_mask`` is True (default: all) the reward of x0_hat(x_{t-1})
    is computed, log G_t of ``potential`` is added to the log weights, and the population is
    resampled — always, or with ``adaptive`` only when ESS < ``ess_threshold`` k (weights are
    otherwise carried). The last step adds log G_0 = lam r(x0) - sum(log G applied on the ancestry),
    so every particle's accumulated potential equals lam r(x0) exactly. ``sample`` is one draw from
    the final weights. Shapes: population (k, *event), log_weights (k,).
    """
    _check_count("num_particles", num_particles)
    if potential not in POTENTIALS:
        raise ValueError(f"unknown potential {potential!r}; expected one of {POTENTIALS}")
    if resampling not in RESAMPLERS:
        raise ValueError(f"unknown resampling method {resampling!r}; expected one of {RESAMPLERS}")
    if not 0.0 < ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in (0, 1], got {ess_threshold=}")
    _check_finite_param("lam", lam)
    k_, T = num_particles, process.num_steps
    if resample_mask is None:
        resample_mask = np.ones((T,), bool)
    resample_mask = jnp.asarray(resample_mask)
    if resample_mask.shape != (T,) or resample_mask.dtype != jnp.bool_:
        raise ValueError(
            f"resample_mask must be a bool array of shape (num_steps,) = ({T},), got "
            f"{resample_mask.shape} {resample_mask.dtype}"
        )
    k_init, k_run, k_pick = jax.random.split(key, 3)
    x = jax.vmap(process.init)(jax.random.split(k_init, k_))
    _check_reward(reward_fn, x[0])
    x = _constrain(x, particle_sharding)
    out = _pop_model(process, params, x, jnp.asarray(T))
    zeros = jnp.zeros((k_,))
    state = _FKState(x, out, zeros, zeros, jnp.full((k_,), -jnp.inf), zeros, zeros)

    def apply_potential(state, n_next, x_new, out_new):
        r, bad = _rewards(reward_fn, _pop_x0(process, x_new, n_next, out_new))
        log_g, (r_prev, r_max, r_sum) = potential_log(potential, lam, r, state)
        return (
            state._replace(
                logw=state.logw + log_g,
                r_prev=r_prev,
                r_max=r_max,
                r_sum=r_sum,
                log_applied=state.log_applied + log_g,
            ),
            bad,
            _i32(k_),
        )

    def body(carry, inp):
        state, log_z, counts = carry
        n, k, do_pot = inp
        k_prop, k_res = jax.random.split(k)
        x_new = _constrain(_pop_step(process, k_prop, state.x, n, state.out), particle_sharding)
        out_new = _pop_model(process, params, x_new, n - 1)
        state = state._replace(x=x_new, out=out_new)
        state, bad, n_rew = lax.cond(
            do_pot,
            lambda s: apply_potential(s, n - 1, x_new, out_new),
            lambda s: (s, _i32(0), _i32(0)),
            state,
        )
        ess = effective_sample_size(state.logw)
        do_res = do_pot & ((ess < ess_threshold * k_) if adaptive else True)
        anc = resample(k_res, state.logw, method=resampling)
        anc = jnp.where(do_res, anc, jnp.arange(k_))
        lse = jax.nn.logsumexp(state.logw) - jnp.log(k_)
        log_z = log_z + jnp.where(do_res, lse, 0.0)
        state = _take(state, anc)._replace(logw=jnp.where(do_res, 0.0, state.logw[anc]))
        state = _constrain(state, particle_sharding)
        counts = counts + jnp.stack([_i32(k_), n_rew, do_res.astype(jnp.int32), bad])
        return (state, log_z, counts), None

    keys = jax.random.split(k_run, T)
    ns = jnp.arange(T, 1, -1)
    counts0 = jnp.array([k_, 0, 0, 0], jnp.int32)
    (state, log_z, counts), _ = lax.scan(
        body, (state, jnp.zeros(()), counts0), (ns, keys[: T - 1], resample_mask[: T - 1])
    )
    # Last step: clean samples, terminal potential makes the ancestral product exp(lam r(x0)).
    x0 = _pop_step(process, keys[T - 1], state.x, jnp.asarray(1), state.out)
    r, bad = _rewards(reward_fn, x0)
    log_g = lam * r - state.log_applied
    log_g = jnp.where(jnp.isneginf(r) | ~jnp.isfinite(log_g), -jnp.inf, log_g)
    logw = state.logw + log_g
    log_z = log_z + jax.nn.logsumexp(logw) - jnp.log(k_)
    logw = _normalised(logw)
    res = SteeringResult(
        sample=x0[jax.random.categorical(k_pick, logw)],
        population=x0,
        log_weights=logw,
        rewards=r,
        denoiser_calls=counts[0],
        reward_calls=counts[1] + k_,
        value_calls=_i32(0),
        num_resamples=counts[2],
        nonfinite_rewards=counts[3] + bad,
        log_normalizer=log_z,
    )
    return _finish(res, check_finite)


def smc(
    key: Array,
    params: Any,
    process: Process,
    reward_fn: RewardFn,
    *,
    num_particles: int,
    lam: float = 10.0,
    resampling: str = "multinomial",
    particle_sharding: Any = None,
    check_finite: bool = True,
) -> SteeringResult:
    """SMC / TDS baseline without reward gradients (Wu et al. 2023 with the base proposal).

    One proposal per particle, DIFF potential, resampling at every step.
    """
    return fk_steering(
        key,
        params,
        process,
        reward_fn,
        num_particles=num_particles,
        lam=lam,
        potential="diff",
        resample_mask=None,
        adaptive=False,
        resampling=resampling,
        particle_sharding=particle_sharding,
        check_finite=check_finite,
    )
