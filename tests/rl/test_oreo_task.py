"""Arithmetic-chain task: generator, checker and masks against plain-Python references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.rl.oreo import task as T

CFG = T.TaskConfig(n_steps=4, modulus=7, max_len=40)
REWARD = jax.jit(jax.vmap(T.reward))


def py_solve(x0, ops, operands, m):
    ys, y = [], x0
    for op, a in zip(ops, operands):
        y = {T.PLUS: y + a, T.MINUS: y - a, T.TIMES: y * a}[op] % m
        ys.append(y)
    return ys


def test_clean_traces_are_correct_and_rewarded():
    batch, nerr = T.sft_batch(jax.random.key(0), 2000, CFG, 0.0, 0.0)
    assert int(nerr.sum()) == 0
    r = REWARD(batch.tokens, batch.prompt_len, batch.answer)
    np.testing.assert_array_equal(r, 1.0)
    np.testing.assert_array_equal(batch.length, T.prompt_length(4) + T.response_length(4))
    for i in range(8):
        toks = np.asarray(batch.tokens[i])
        x0 = toks[1] - T.NUM0
        ops = toks[2 : 2 + 8 : 2]
        operands = toks[3 : 3 + 8 : 2] - T.NUM0
        ys = py_solve(x0, ops, operands, 7)
        assert int(batch.answer[i]) == ys[-1]
        resp = toks[T.prompt_length(4) :]
        for k in range(4):
            step = resp[4 * k : 4 * k + 4]
            assert step[0] == ops[k] and step[1] - T.NUM0 == operands[k]
            assert step[2] - T.NUM0 == ys[k] and step[3] == T.SEMI
        assert "|" in T.decode(toks) and T.decode(toks).count("\n") == 4


def test_injected_errors_rate_and_reward():
    p = 0.2
    batch, nerr = T.sft_batch(jax.random.key(1), 2000, CFG, p, 0.0)
    frac = float(jnp.mean(nerr > 0))
    assert abs(frac - (1 - (1 - p) ** 4)) < 0.04
    r = np.asarray(REWARD(batch.tokens, batch.prompt_len, batch.answer))
    assert np.all(r[np.asarray(nerr) == 0] == 1.0)
    # a single error can never be undone: + , -, * by a unit mod a prime are bijections
    assert np.all(r[np.asarray(nerr) == 1] == 0.0)
    # the written final answer is the last written step result
    toks = np.asarray(batch.tokens)
    ans = np.asarray(jax.jit(jax.vmap(T.answer_of))(batch.tokens, batch.prompt_len))
    last_y = toks[:, T.prompt_length(4) + 4 * 3 + 2] - T.NUM0
    np.testing.assert_array_equal(ans, last_y)


def test_systematic_confusion():
    batch, nerr = T.sft_batch(jax.random.key(5), 2000, CFG, 0.0, 1.0)
    toks = np.asarray(batch.tokens)
    ops = toks[:, 2:10:2]
    has_times = (ops == T.TIMES).any(1)
    assert np.all(np.asarray(nerr)[~has_times] == 0)
    r = np.asarray(REWARD(batch.tokens, batch.prompt_len, batch.answer))
    assert np.all(r[~has_times] == 1.0) and r[has_times].mean() < 0.3
    # every '*' step is written with the '+' result
    resp = toks[:, T.prompt_length(4) :]
    prev = toks[:, 1] - T.NUM0
    for k in range(4):
        op, a, y = resp[:, 4 * k], resp[:, 4 * k + 1] - T.NUM0, resp[:, 4 * k + 2] - T.NUM0
        np.testing.assert_array_equal(y[op == T.TIMES], ((prev + a) % 7)[op == T.TIMES])
        prev = y


def test_answer_checker_rejects_malformed():
    batch, _ = T.sft_batch(jax.random.key(2), 2000, CFG, 0.0, 0.0)  # same signature: cached
    batch = jax.tree.map(lambda x: x[:1], batch)
    toks = np.array(batch.tokens)  # [4, L]: original + three corruptions
    end = int(batch.length[0])
    toks = np.repeat(toks, 4, 0)
    toks[1, end - 1] = T.SEMI  # no <eos>
    toks[2, end - 2] = T.PLUS  # no number after '>'
    toks[3, end - 3] = T.SEMI  # no '>'
    plen = np.repeat(np.asarray(batch.prompt_len), 4)
    ans = jax.jit(jax.vmap(T.answer_of))(toks, plen)
    np.testing.assert_array_equal(ans, [int(batch.answer[0]), -1, -1, -1])
    r = REWARD(toks, plen, np.repeat(np.asarray(batch.answer), 4))
    np.testing.assert_array_equal(r, [1, 0, 0, 0])


def test_masks_and_step_starts():
    batch, _ = T.sft_batch(jax.random.key(3), 2000, CFG, 0.0, 0.0)
    batch = jax.tree.map(lambda x: x[0], batch)
    mask, starts = jax.jit(T.sequence_masks)(batch.tokens, batch.prompt_len, batch.length)
    plen, n = T.prompt_length(4), int(batch.length)
    assert mask.shape == (CFG.max_len - 1,)
    np.testing.assert_array_equal(np.nonzero(np.asarray(mask))[0], np.arange(plen - 1, n - 1))
    # 4 reasoning steps + the answer line, each opening at the token after ';' or '|'
    idx = np.nonzero(np.asarray(starts))[0]
    np.testing.assert_array_equal(idx, plen - 1 + np.array([0, 4, 8, 12, 16]))


def test_prompt_only_and_config_validation():
    b = jax.jit(T.prompts, static_argnums=1)(jax.random.key(4), CFG)
    assert int(b.length) == T.prompt_length(4) and int(b.tokens[b.length]) == T.PAD
    with pytest.raises(ValueError, match="max_len"):
        T.TaskConfig(n_steps=10, max_len=20)
    with pytest.raises(ValueError, match="modulus"):
        T.TaskConfig(modulus=100)
    with pytest.raises(ValueError, match="ops"):
        T.TaskConfig(ops=(T.EOS,))
