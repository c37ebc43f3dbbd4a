"""Independent plain-NumPy (float64, loops) references for jaxsel.attention; shares no code with it."""

from __future__ import annotations

import numpy as np


def kv_head(h, hq, hkv, mapping):
    return h // (hq // hkv) if mapping == "group" else h % hkv


def scores(q, k, kv_len, scale=1.0, mapping="group"):
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    hq = q.shape[0]
    n, hkv, _ = k.shape
    s = np.full((hq, n), -np.inf)
    for h in range(hq):
        g = kv_head(h, hq, hkv, mapping)
        for j in range(kv_len):
            s[h, j] = scale * float(q[h] @ k[j, g])
    return s


def softmax_over(x, idx):
    """Softmax of x restricted to the index list idx; returns a dict index -> prob."""
    if len(idx) == 0:
        return {}
    vals = np.array([x[i] for i in idx], np.float64)
    m = vals.max()
    e = np.exp(vals - m)
    e /= e.sum()
    return dict(zip(idx, e))


def votes(q, k, kv_len, n_sink, n_local, scale=1.0, mapping="group"):
    s = scores(q, k, kv_len, scale, mapping)
    cand = list(range(n_sink, kv_len - n_local))
    vote = np.zeros(k.shape[0])
    for h in range(s.shape[0]):
        for j, p in softmax_over(s[h], cand).items():
            vote[j] += p
    return vote, cand


def pool(vote, cand, p):
    if p == 1:
        return vote.copy()
    out = vote.copy()
    cset = set(cand)
    left, right = (p - 1) // 2, p // 2
    for j in cand:
        out[j] = max(vote[i] for i in range(j - left, j + right + 1) if i in cset)
    return out


def top_k_lowest_first(vote, cand, top_k):
    """Top-k of vote over cand; ties to the lower index."""
    order = sorted(cand, key=lambda j: (-vote[j], j))
    return sorted(order[:top_k])


def select(q, k, kv_len, top_k, n_sink, n_local, scale=1.0, mapping="group", vote_pool=1):
    """Sorted list of selected valid indices, plus the (pooled) votes and candidates."""
    budget = n_sink + top_k + n_local
    if kv_len <= budget:
        return list(range(kv_len)), None, None
    vote, cand = votes(q, k, kv_len, n_sink, n_local, scale, mapping)
    vote = pool(vote, cand, vote_pool)
    mid = top_k_lowest_first(vote, cand, top_k)
    return list(range(n_sink)) + mid + list(range(kv_len - n_local, kv_len)), vote, cand


def attention(q, k, v, idx_per_head, scale=None, mapping="group", softmax=None):
    """idx_per_head: list (per head) of token index lists, or one list for all heads."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    v = np.asarray(v, np.float64)
    hq, d = q.shape
    hkv = k.shape[1]
    scale = 1 / np.sqrt(d) if scale is None else scale
    out = np.zeros((hq, d))
    for h in range(hq):
        idx = (
            idx_per_head[h] if idx_per_head and isinstance(idx_per_head[0], list) else idx_per_head
        )
        if len(idx) == 0:
            continue
        g = kv_head(h, hq, hkv, mapping)
        logits = np.array([scale * q[h] @ k[j, g] for j in idx])
        p = softmax(logits) if softmax is not None else _softmax(logits)
        out[h] = sum(pi * v[j, g] for pi, j in zip(p, idx))
    return out


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def adaptive_softmax(x):
    x = np.asarray(x, np.float64)
    p = _softmax(x)
    ent = -sum(pi * np.log(pi) for pi in p if pi > 0)
    beta = 1.0
    if ent > 0.5:
        h = ent
        beta = max(1.0, -0.037 * h**4 + 0.481 * h**3 - 2.3 * h**2 + 4.917 * h - 1.791)
    return _softmax(beta * x)


def rope(x, pos, theta=10000.0, inv_freq=None, *, f32_angle=False):
    """RoPE as complex rotation of the pairs (x_i, x_{i + d/2}); x [..., d], pos scalar.

    Float64 throughout, except with ``f32_angle=True``: the angle ``pos * w`` is then formed the way
    a float32 implementation forms it (float32 frequencies, one float32 product), and only the
    rotation is exact. That isolates the error of the sine/cosine from the angle's own rounding.
    """
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    if inv_freq is None:
        inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
    if f32_angle:
        ang = (np.float32(pos) * np.asarray(inv_freq, np.float32)).astype(np.float64)
    else:
        ang = pos * np.asarray(inv_freq, np.float64)
    z = x[..., : d // 2] + 1j * x[..., d // 2 :]
    z = z * np.exp(1j * ang)
    return np.concatenate([z.real, z.imag], axis=-1)


# Float32 unit roundoff.
U32 = 2.0**-24
# Bound on |sin(t) - sin_f32(t)| (same for cos) of XLA's float32 sine/cosine, absolute, for any
# float32 argument t: XLA reduces the range with an extended-precision pi, so the error does not
# grow with |t| (measured max 3.3e-8 = 0.55 * U32 over t in [0, 4e4] on AVX2/AVX-512 machines).
# Eight units leave room for other ISAs' polynomial evaluation.
TRIG_ERR = 8 * U32


def rope_tolerance(x, pos, inv_freq, *, freq_err=None):
    """Per-element bound on |rope_f32(x, pos) - reference| for a float32 implementation.

    Each output element is x1 cos(a) -/+ x2 sin(a) for its pair (x1, x2) at angle a = pos * w.
    - The sine and cosine each err by at most TRIG_ERR: (|x1| + |x2|) TRIG_ERR.
    - The products and the sum are rounded in float32: 3 U32 (|x1| + |x2|).
    - ``freq_err=None``: the reference rotates by the implementation's own float32 angle
      (``rope(..., f32_angle=True)``), so the angle adds nothing. Otherwise the reference angle is
      exact and the implementation's frequencies are off by at most ``freq_err`` (relative), so its
      angle fl(pos * w) is off by at most (freq_err + U32) |a|; a rotation by an angle off by e
      moves the pair by |z| e <= (|x1| + |x2|) e.
    """
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    norm1 = np.abs(x[..., : d // 2]) + np.abs(x[..., d // 2 :])
    ang = np.abs(pos * np.asarray(inv_freq, np.float64))
    angle_err = 0.0 if freq_err is None else (freq_err + U32) * ang
    per_pair = norm1 * (TRIG_ERR + 3 * U32 + angle_err)
    return np.concatenate([per_pair, per_pair], axis=-1)


def assert_same_selection(idx, valid, ref_idx, vote=None, cand=None, rtol=1e-5):
    """Exact match, except that tokens swapped across the top-k boundary must be near-ties."""
    idx = np.asarray(idx)
    valid = np.asarray(valid)
    got = idx[valid].tolist()
    assert got == sorted(got), f"not sorted: {got}"
    assert len(set(idx.tolist())) == len(idx), f"duplicates: {idx}"
    if got == ref_idx:
        return
    assert vote is not None, f"selection differs: {got} vs {ref_idx}"
    diff = set(got) ^ set(ref_idx)
    assert diff <= set(cand), f"non-candidate tokens differ: {diff}"
    kth = min(vote[j] for j in ref_idx if j in set(cand))
    for j in diff:
        assert abs(vote[j] - kth) <= rtol * max(1.0, abs(kth)), (j, vote[j], kth)
