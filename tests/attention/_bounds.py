"""Rounding bounds for comparing two float32 evaluations of the same attention math (sharded vs
one device), derived from the data in float64."""

from __future__ import annotations

import numpy as np

# Sharded and single-device programs compute the same float32 operations on different shapes, so
# XLA may order their sums differently; they agree to twice the rounding bound of one float32
# evaluation against exact arithmetic, derived below from the data (float64). u: unit roundoff.
U = 2.0**-24
EXP_ERR = 4 * U  # relative error of XLA's float32 exp (a few units at most)


def _softmax_rel_bound(q, kh, scale):
    """Per-row bound on the relative error of each float32 weight of softmax(scale * q . k).

    q [H, d], kh [H, M, d]: the M keys each head's row runs over. A dot product over d terms is
    off by at most d u sum_i |q_i k_i| (Higham's gamma_d); a weight moves by its own score's error
    plus at most the largest one (through the max and the normaliser); add the roundings of
    s - max (u |s - max|) and of exp, each in the weight and in the normaliser, of the M-term
    positive normaliser (M u) and of the division (u).
    """
    q, kh = np.asarray(q, np.float64), np.asarray(kh, np.float64)
    d, m = q.shape[-1], kh.shape[1]
    s = scale * np.einsum("hd,hmd->hm", q, kh)
    e_s = d * U * scale * np.einsum("hd,hmd->hm", np.abs(q), np.abs(kh))
    spread = s.max(-1) - s.min(-1)
    return 2 * e_s.max(-1) + 2 * U * spread + 2 * EXP_ERR + (m + 1) * U, s


def _heads_keys(k, rows, hq, gqa_mapping="group"):
    """[Hq, len(rows), d]: the keys of the given cache rows for each head."""
    k = np.asarray(k, np.float64)
    hkv = k.shape[1]
    g = np.arange(hq) // (hq // hkv) if gqa_mapping == "group" else np.arange(hq) % hkv
    return k[rows][:, g].transpose(1, 0, 2)


def votes64(q, k, cand, gqa_mapping="group"):
    """[N] float64 soft votes of the candidates (0 elsewhere), raw dot-product scores."""
    cols = np.flatnonzero(np.asarray(cand))
    s = np.einsum(
        "hd,hmd->hm", np.asarray(q, np.float64), _heads_keys(k, cols, q.shape[0], gqa_mapping)
    )
    p = np.exp(s - s.max(-1, keepdims=True))
    vote = np.zeros(k.shape[0])
    vote[cols] = (p / p.sum(-1, keepdims=True)).sum(0)
    return vote


def vote_diff_bound(q, k, cand, gqa_mapping="group", extra_rel=0.0):
    """Bound on |vote_a - vote_b| for two float32 evaluations of soft_vote(token_scores(q, k)).

    ``extra_rel``: further relative error of each weight in one of the two (e.g. a normaliser
    assembled from rescaled partial sums)."""
    cols = np.flatnonzero(np.asarray(cand))
    rel, s = _softmax_rel_bound(q, _heads_keys(k, cols, q.shape[0], gqa_mapping), 1.0)
    rel = rel + extra_rel
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    vote = np.zeros(k.shape[0])
    bound = np.zeros(k.shape[0])
    vote[cols] = p.sum(0)
    # each head's weight, then the sum over H heads (H - 1 roundings of a positive sum)
    bound[cols] = (rel[:, None] * p).sum(0) + (q.shape[0] - 1) * U * vote[cols]
    return 2 * bound


def attention_diff_bound(q, k, v, idx, valid, gqa_mapping="group", extra_rel=0.0):
    """Bound on |out_a - out_b| for two float32 evaluations of sparse_attention (default scale);
    ``extra_rel`` as in :func:`vote_diff_bound` (e.g. a flash-decoding combine of partials)."""
    hq, d = q.shape
    rows = np.asarray(idx)[np.asarray(valid)]
    rel, s = _softmax_rel_bound(q, _heads_keys(k, rows, hq, gqa_mapping), d**-0.5)
    rel = rel + extra_rel
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    absv = np.abs(_heads_keys(v, rows, hq, gqa_mapping))  # [Hq, B, d]
    # o = sum_j p_j v_j: the weights' error, then B products and B - 1 additions (gamma_B)
    return 2 * (rel[:, None] + len(rows) * U) * np.einsum("hb,hbd->hd", p, absv)
