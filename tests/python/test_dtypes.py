#!/usr/bin/python3
"""The binding's 16-bit storage and gradient accumulation (issue: mixed precision).

- float16: step() and forward() take np.float16 logits and return a float16 gradient, equal to
  the float32 step on the same (rounded) values rounded to nearest even (numpy's own float16
  conversion is that rounding), allowing a one-step difference on 0.1% of the elements.
- bfloat16: np.uint16 bit patterns with dtype="bfloat16"; rounding written here with integer
  arithmetic, independently of the library.
- accumulate(): the state update from a gradient the caller computed, with an AMP loss scale
  divided out, equals a float64 computation; a gradient with Inf or NaN raises
  ERROR_NONFINITE, leaves the state as it was and is counted in skipped_steps.
Exit: 0 all passed, 1 a test failed, 77 skipped (no OpenCL device).
"""
import sys

import numpy as np

import efl
from _common import run_tests  # this folder is on sys.path: the script's own


def bf16_bits(x):
    """float32 -> bfloat16 bit patterns, round to nearest even (NaN kept quiet)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    r[nan] = ((b[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def batch(rng, n, c):
    x = rng.normal(-4.0, 2.5, size=(n, c)).astype(np.float32)
    y = np.where(rng.random(n) < 0.1, rng.integers(1, c + 1, n), 0).astype(np.int32)
    y[rng.random(n) < 0.02] = -1
    return x, y


def steps_agree(name, g16_bits, g32_rounded_bits):
    diff = np.abs(g16_bits.astype(np.int64) - g32_rounded_bits.astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, "%s: %d of %d gradients off by up to %d steps" % (
        name, int((diff > 0).sum()), diff.size, int(diff.max()))


def test_float16():
    rng = np.random.default_rng(1)
    n, c = 1500, 90
    x, y = batch(rng, n, c)
    x16 = x.astype(np.float16)
    a, b = efl.EqualizedFocalLoss(c), efl.EqualizedFocalLoss(c)
    for _ in range(3):
        l16, g16 = a.step(x16, y, normalizer=50)
        l32, g32 = b.step(x16.astype(np.float32), y, normalizer=50)
        assert g16.dtype == np.float16 and g16.shape == (n, c)
        assert abs(l16 - l32) <= 1e-6 * abs(l32), (l16, l32)
        steps_agree("float16", g16.view(np.uint16), g32.astype(np.float16).view(np.uint16))
    assert abs(a.forward(x16, y, normalizer=50) - b.forward(x16.astype(np.float32), y, normalizer=50)) <= 1e-6 * l32
    assert np.allclose(a.pos_neg, b.pos_neg, rtol=1e-6, atol=0)


def test_bfloat16():
    rng = np.random.default_rng(2)
    n, c = 1200, 77
    x, y = batch(rng, n, c)
    xb = bf16_bits(x)
    a, b = efl.EqualizedFocalLoss(c), efl.EqualizedFocalLoss(c)
    for _ in range(3):
        lb, gb = a.step(xb, y, normalizer=40, dtype="bfloat16")
        l32, g32 = b.step(bf16_value(xb), y, normalizer=40)
        assert gb.dtype == np.uint16 and gb.shape == (n, c)
        assert abs(lb - l32) <= 1e-6 * abs(l32), (lb, l32)
        steps_agree("bfloat16", gb, bf16_bits(g32))
    try:
        a.step(x, y, dtype="bfloat16")
    except ValueError:
        pass
    else:
        raise AssertionError("float32 data accepted as bfloat16 bits")


def test_accumulate_and_nonfinite():
    rng = np.random.default_rng(3)
    n, c = 800, 25
    _, y = batch(rng, n, c)
    loss = efl.EqualizedFocalLoss(c)
    pos = np.zeros(c)
    neg = np.zeros(c)
    valid = y >= 0
    t = np.zeros((n, c), dtype=bool)
    rows = np.nonzero(y > 0)[0]
    t[rows, y[rows] - 1] = True
    for k in range(5):
        scale = 2.0 ** (8 + k)  # an AMP loss scale, divided out
        g = (rng.normal(0, 1e-3, size=(n, c)) * scale).astype(np.float32)
        loss.accumulate(g, y, grad_scale=scale)
        a = np.abs(g.astype(np.float64)) / scale * valid[:, None]
        pos += (a * t).sum(0)
        neg += (a * ~t).sum(0)
    assert np.allclose(loss.pos_grad, pos, rtol=1e-6, atol=0), np.max(np.abs(loss.pos_grad - pos) / pos)
    assert np.allclose(loss.neg_grad, neg, rtol=1e-6, atol=0)
    assert np.allclose(loss.pos_neg, np.clip(pos / (neg + 1e-10), 0, 1), rtol=1e-6, atol=0)
    before = loss.read_state()
    for bad in (np.inf, np.nan):
        g = np.zeros((n, c), dtype=np.float16)
        g[int(np.nonzero(valid)[0][0]), 3] = bad
        try:
            loss.accumulate(g, y, grad_scale=1024.0)
        except efl.EflError as e:
            assert e.status == efl.Status.ERROR_NONFINITE, e
        else:
            raise AssertionError("a non-finite gradient was accepted")
        after = loss.read_state()
        assert all(np.array_equal(p, q) for p, q in zip(before, after)), "a skipped step changed the state"
    assert loss.skipped_steps == 2, loss.skipped_steps


TESTS = [test_float16, test_bfloat16, test_accumulate_and_nonfinite]


def main(argv):
    return run_tests(TESTS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
