"""OREO losses against an independent plain-NumPy implementation (values and gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.rl.oreo import losses as L

BETA = 0.3  # larger than the paper's 0.03 so the log-ratio terms matter numerically


# ---------------------------------------------------------------------------------------------
# plain NumPy references (loops, written from the equations; sg terms are constants)


def np_value_loss(v, lp, rp, r, m, beta):
    t = len(v)
    terms = []
    for i in range(t):
        if m[i] == 0:
            continue
        fut = sum((lp[j] - rp[j]) * m[j] for j in range(i, t))
        terms.append((v[i] - r + beta * fut) ** 2)
    return float(np.mean(terms))


def np_value_grad(v, lp, rp, r, m, beta):
    t = len(v)
    n = m.sum()
    g = np.zeros(t)
    for i in range(t):
        if m[i]:
            fut = sum((lp[j] - rp[j]) * m[j] for j in range(i, t))
            g[i] = 2 * (v[i] - r + beta * fut) / n
    return g


def np_policy_loss_and_grad(lp, rp, v, r, m, beta, starts=None):
    """Eq. 9 (token level when starts is None). grad is d/d logp with sg terms held constant."""
    t = len(lp)
    if starts is None:
        starts = np.ones(t, bool)
    starts = starts & (m > 0)
    idx = [i for i in range(t) if starts[i]]
    loss, g = 0.0, np.zeros(t)
    for k, i in enumerate(idx):
        end = idx[k + 1] if k + 1 < len(idx) else t
        own = sum((lp[j] - rp[j]) * m[j] for j in range(i, end))
        rest = sum((lp[j] - rp[j]) * m[j] for j in range(end, t))
        e = v[i] - r + beta * (own + rest)
        loss += e**2
        for j in range(i, end):
            g[j] += 2 * e * beta * m[j]
    return loss / len(idx), g / len(idx)


def np_step_value_loss(v, lp, rp, r, m, starts, beta):
    t = len(v)
    terms = []
    for i in range(t):
        if m[i] and starts[i]:
            fut = sum((lp[j] - rp[j]) * m[j] for j in range(i, t))
            terms.append((v[i] - r + beta * fut) ** 2)
    return float(np.mean(terms))


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_kl(pl, ql, m):
    lp, lq = np_log_softmax(pl), np_log_softmax(ql)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return (kl * m).sum() / m.sum(), kl


def np_dpo(lc, rc, lr, rr, mc, mr, beta):
    margin = ((lc - rc) * mc).sum() - ((lr - rr) * mr).sum()
    z = beta * margin
    loss = np.log1p(np.exp(-z))
    dz = -1.0 / (1.0 + np.exp(z))  # d loss / d z
    return loss, dz * beta * mc, -dz * beta * mr


# ---------------------------------------------------------------------------------------------


def _case(seed, t=9, pad=3):
    rng = np.random.default_rng(seed)
    lp = rng.normal(-1.5, 0.7, t).astype(np.float32)
    rp = rng.normal(-1.5, 0.7, t).astype(np.float32)
    v = rng.normal(0.5, 0.5, t).astype(np.float32)
    m = np.ones(t, np.float32)
    if pad:
        m[-pad:] = 0.0
    r = np.float32(rng.integers(0, 2))
    return lp, rp, v, r, m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_loss_matches_numpy(seed):
    lp, rp, v, r, m = _case(seed)
    got = L.oreo_value_loss(lp, rp, v, r, m, beta=BETA)
    np.testing.assert_allclose(got, np_value_loss(v, lp, rp, r, m, BETA), rtol=1e-5)
    gv, glp, grp = jax.grad(lambda a, b, c: L.oreo_value_loss(b, c, a, r, m, beta=BETA), (0, 1, 2))(
        v, lp, rp
    )
    np.testing.assert_allclose(gv, np_value_grad(v, lp, rp, r, m, BETA), rtol=1e-5, atol=1e-6)
    # log-ratios are held fixed in Eq. 8
    np.testing.assert_array_equal(glp, 0.0)
    np.testing.assert_array_equal(grp, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_loss_matches_numpy_with_stop_gradient(seed):
    lp, rp, v, r, m = _case(seed)
    ref_loss, ref_grad = np_policy_loss_and_grad(lp, rp, v, r, m, BETA)
    got = L.oreo_policy_loss(lp, rp, v, r, m, beta=BETA)
    np.testing.assert_allclose(got, ref_loss, rtol=1e-5)
    glp, grp, gv = jax.grad(
        lambda a, b, c: L.oreo_policy_loss(a, b, c, r, m, beta=BETA), (0, 1, 2)
    )(lp, rp, v)
    np.testing.assert_allclose(glp, ref_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grp, -ref_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(gv, 0.0)  # value held fixed
    np.testing.assert_array_equal(glp[m == 0], 0.0)


def test_policy_gradient_differs_from_no_stop_gradient():
    """The sg matters: the full gradient of the unstopped objective is different."""
    lp, rp, v, r, m = _case(5, pad=0)

    def no_sg(a):
        ratio = (a - rp) * m
        err = v - r + BETA * L.reverse_cumsum(ratio)
        return jnp.mean(err**2)

    np.testing.assert_allclose(L.oreo_policy_loss(lp, rp, v, r, m, beta=BETA), no_sg(lp), rtol=1e-5)
    g_sg = jax.grad(lambda a: L.oreo_policy_loss(a, rp, v, r, m, beta=BETA))(lp)
    g_full = jax.grad(no_sg)(lp)
    assert not np.allclose(g_sg, g_full, rtol=1e-3)
    # first token: it appears only in its own term, so both gradients agree there
    np.testing.assert_allclose(g_sg[0], g_full[0], rtol=1e-5)
    e_last = v[-1] - r + BETA * (lp - rp)[-1]
    np.testing.assert_allclose(g_sg[-1], 2 * BETA * e_last / len(lp), rtol=1e-4)


def test_padding_is_ignored():
    lp, rp, v, r, m = _case(3, t=8, pad=3)
    rng = np.random.default_rng(0)
    junk = rng.normal(size=3).astype(np.float32) * 50
    lp2, rp2, v2 = lp.copy(), rp.copy(), v.copy()
    lp2[-3:], rp2[-3:], v2[-3:] = junk, -junk, junk
    for fn in (
        lambda a, b, c, mm: L.oreo_value_loss(a, b, c, r, mm, beta=BETA),
        lambda a, b, c, mm: L.oreo_policy_loss(a, b, c, r, mm, beta=BETA),
    ):
        np.testing.assert_allclose(fn(lp, rp, v, m), fn(lp2, rp2, v2, m), rtol=1e-6)
        np.testing.assert_allclose(fn(lp[:5], rp[:5], v[:5], None), fn(lp, rp, v, m), rtol=1e-6)


def test_step_level_every_token_a_step_equals_token_level():
    lp, rp, v, r, m = _case(7)
    starts = np.ones_like(m, bool)
    np.testing.assert_allclose(
        L.oreo_step_value_loss(lp, rp, v, r, starts, m, beta=BETA),
        L.oreo_value_loss(lp, rp, v, r, m, beta=BETA),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        L.oreo_step_policy_loss(lp, rp, v, r, starts, m, beta=BETA),
        L.oreo_policy_loss(lp, rp, v, r, m, beta=BETA),
        rtol=1e-6,
    )
    g1 = jax.grad(lambda a: L.oreo_step_policy_loss(a, rp, v, r, starts, m, beta=BETA))(lp)
    g2 = jax.grad(lambda a: L.oreo_policy_loss(a, rp, v, r, m, beta=BETA))(lp)
    np.testing.assert_allclose(g1, g2, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_step_level_matches_numpy(seed):
    lp, rp, v, r, m = _case(seed, t=12, pad=2)
    starts = np.zeros(12, bool)
    starts[[0, 3, 4, 8, 11]] = True  # 11 is padding: ignored
    ref_loss, ref_grad = np_policy_loss_and_grad(lp, rp, v, r, m, BETA, starts)
    np.testing.assert_allclose(
        L.oreo_step_policy_loss(lp, rp, v, r, starts, m, beta=BETA), ref_loss, rtol=1e-5
    )
    g = jax.grad(lambda a: L.oreo_step_policy_loss(a, rp, v, r, starts, m, beta=BETA))(lp)
    np.testing.assert_allclose(g, ref_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        L.oreo_step_value_loss(lp, rp, v, r, starts, m, beta=BETA),
        np_step_value_loss(v, lp, rp, r, m, starts, BETA),
        rtol=1e-5,
    )
    gv = jax.grad(lambda a: L.oreo_step_value_loss(lp, rp, a, r, starts, m, beta=BETA))(v)
    assert np.all(gv[~(starts & (m > 0))] == 0.0)


def test_step_next_start():
    s = np.array([1, 0, 0, 1, 1, 0, 1, 0], bool)
    np.testing.assert_array_equal(L.step_next_start(s), [3, 3, 3, 4, 6, 6, 8, 8])
    m = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(L.step_next_start(s, m), [3, 3, 3, 4, 8, 8, 8, 8])


def test_kl_regularizer_matches_numpy_value_and_grad():
    rng = np.random.default_rng(0)
    pl = rng.normal(size=(6, 11)).astype(np.float32) * 2
    ql = rng.normal(size=(6, 11)).astype(np.float32) * 2
    m = np.array([1, 1, 1, 1, 0, 0], np.float32)
    ref, kl = np_kl(pl, ql, m)
    np.testing.assert_allclose(L.kl_regularizer(pl, ql, m), ref, rtol=1e-5)
    np.testing.assert_allclose(L.token_kl(pl, ql), kl, rtol=1e-5, atol=1e-6)
    # analytic: d KL_t / d z_t = p_t * (log p_t - log q_t - KL_t)
    lp, lq = np_log_softmax(pl), np_log_softmax(ql)
    p = np.exp(lp)
    g_ref = p * (lp - lq - kl[:, None]) * m[:, None] / m.sum()
    g = jax.grad(lambda z: L.kl_regularizer(z, ql, m))(pl)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)
    assert float(L.kl_regularizer(ql, ql, m)) == pytest.approx(0.0, abs=1e-6)
    # extreme logits stay finite
    big = L.kl_regularizer(pl * 1e4, ql * 1e4, m)
    assert np.isfinite(float(big))


def test_implicit_rewards_and_dpo():
    lp, rp, _, _, m = _case(4)
    np.testing.assert_allclose(
        L.implicit_rewards(lp, rp, m, beta=BETA), BETA * (lp - rp) * m, rtol=1e-6
    )
    lr, rr, _, _, mr = _case(8, t=6, pad=1)
    ref, gc, gr = np_dpo(lp, rp, lr, rr, m, mr, BETA)
    got = L.dpo_loss(lp, rp, lr, rr, m, mr, beta=BETA)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    g1, g2 = jax.grad(lambda a, b: L.dpo_loss(a, rp, b, rr, m, mr, beta=BETA), (0, 1))(lp, lr)
    np.testing.assert_allclose(g1, gc, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g2, gr, rtol=1e-4, atol=1e-7)
    # DPO margin == difference of summed implicit rewards
    ir = (
        L.implicit_rewards(lp, rp, m, beta=BETA).sum()
        - L.implicit_rewards(lr, rr, mr, beta=BETA).sum()
    )
    np.testing.assert_allclose(got, -jax.nn.log_sigmoid(ir), rtol=1e-5)


def test_jit_and_vmap_agree_with_loop():
    cases = [_case(s, t=10, pad=s % 4) for s in range(4)]
    lp, rp, v, r, m = (np.stack(x) for x in zip(*cases))
    starts = np.zeros((4, 10), bool)
    starts[:, ::3] = True
    fns = {
        "value": lambda a, b, c, d, e, s: L.oreo_value_loss(a, b, c, d, e, beta=BETA),
        "policy": lambda a, b, c, d, e, s: L.oreo_policy_loss(a, b, c, d, e, beta=BETA),
        "step_value": lambda a, b, c, d, e, s: L.oreo_step_value_loss(a, b, c, d, s, e, beta=BETA),
        "step_policy": lambda a, b, c, d, e, s: L.oreo_step_policy_loss(
            a, b, c, d, s, e, beta=BETA
        ),
    }
    for name, fn in fns.items():
        batched = jax.jit(jax.vmap(fn))(lp, rp, v, r, m, starts)
        loop = [fn(lp[i], rp[i], v[i], r[i], m[i], starts[i]) for i in range(4)]
        np.testing.assert_allclose(batched, loop, rtol=1e-5, err_msg=name)


def test_bad_input_raises():
    lp, rp, v, r, m = _case(0)
    with pytest.raises(ValueError, match="ref_logp has length"):
        L.oreo_policy_loss(lp, rp[:-1], v, r, m, beta=BETA)
    with pytest.raises(ValueError, match="values has length"):
        L.oreo_value_loss(lp, rp, v[:-2], r, m, beta=BETA)
    with pytest.raises(ValueError, match="mask must have shape"):
        L.oreo_value_loss(lp, rp, v, r, m[:-1], beta=BETA)
    with pytest.raises(ValueError, match="mask must have shape"):
        L.oreo_policy_loss(lp, rp, v, r, m[None], beta=BETA)
    with pytest.raises(ValueError, match="empty"):
        L.oreo_value_loss(lp[:0], rp[:0], v[:0], r, m[:0], beta=BETA)
    with pytest.raises(ValueError, match="selects no token"):
        L.oreo_policy_loss(lp, rp, v, r, np.zeros_like(m), beta=BETA)
    with pytest.raises(ValueError, match="1-D"):
        L.oreo_policy_loss(lp[None], rp[None], v[None], r, m, beta=BETA)
    with pytest.raises(ValueError, match="reward must be a scalar"):
        L.oreo_value_loss(lp, rp, v, np.ones(2), m, beta=BETA)
    with pytest.raises(ValueError, match="step_starts"):
        L.oreo_step_policy_loss(lp, rp, v, r, np.ones(3, bool), m, beta=BETA)
    with pytest.raises(ValueError, match="vocab"):
        L.kl_regularizer(np.zeros((3, 4)), np.zeros((3, 5)))
    # under jit an all-padding mask cannot be detected at trace time; it gives a finite 0
    z = jax.jit(lambda mm: L.oreo_policy_loss(lp, rp, v, r, mm, beta=BETA))(np.zeros_like(m))
    assert float(z) == 0.0
