"""The LR schedule: a pure function, tested at its corners."""

import math

import pytest

from reatt.training.trainer import get_lr

LR, MIN = 1e-3, 1e-4


def lr(it, warmup=0, cosine=False, min_lr=MIN, max_iters=100):
    return get_lr(
        it, learning_rate=LR, warmup_steps=warmup, use_cosine=cosine, min_lr=min_lr, max_iters=max_iters
    )


def test_constant_when_both_off():
    assert {lr(i) for i in (0, 1, 50, 99, 100)} == {LR}


def test_warmup_linear_from_zero_to_base():
    W = 10
    assert lr(0, warmup=W) == pytest.approx(LR / (W + 1))
    assert lr(0, warmup=W) > 0  # the first step still learns
    steps = [lr(i, warmup=W) for i in range(W + 1)]
    diffs = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert all(d == pytest.approx(LR / (W + 1)) for d in diffs)  # linear
    assert lr(W - 1, warmup=W) < LR
    assert lr(W, warmup=W) == LR  # reaches the base LR exactly at warmup_steps
    assert lr(99, warmup=W) == LR  # then constant without cosine


def test_cosine_without_warmup():
    assert lr(0, cosine=True) == LR
    assert lr(50, cosine=True) == pytest.approx((LR + MIN) / 2)
    assert lr(100, cosine=True) == pytest.approx(MIN)
    assert lr(150, cosine=True) == pytest.approx(MIN)  # never below min_lr past the end
    vals = [lr(i, cosine=True) for i in range(101)]
    assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))  # monotone decay


def test_warmup_then_cosine_is_continuous():
    W = 20
    assert lr(W - 1, warmup=W, cosine=True) == pytest.approx(LR * W / (W + 1))
    assert lr(W, warmup=W, cosine=True) == LR  # the cosine starts at the peak
    mid = W + (100 - W) / 2
    assert lr(int(mid), warmup=W, cosine=True) == pytest.approx((LR + MIN) / 2)
    assert lr(100, warmup=W, cosine=True) == pytest.approx(MIN)
    expected = MIN + 0.5 * (1 + math.cos(math.pi * 0.25)) * (LR - MIN)
    assert lr(W + 20, warmup=W, cosine=True) == pytest.approx(expected)


def test_min_lr_zero_decays_to_zero():
    assert lr(100, cosine=True, min_lr=0.0) == pytest.approx(0.0, abs=1e-15)
