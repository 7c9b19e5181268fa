#!/usr/bin/python3
"""The binding's out= arrays: step/compute write the gradient, forward(reduction="none") the
per-element loss, into the caller's arrays.

- The same bits as without out=, for float32, float16 and bfloat16, rows and head levels, and
  the same state after the step; the returned gradient is the caller's object itself.
- One out array reused over several steps equals fresh arrays step by step.
- CPU torch tensors as out= (float32, float16, bfloat16) receive the same bits.
- Wrong shape, dtype, a non-contiguous or read-only array, a list for the rows layout, a tensor
  that requires grad: ValueError before any library call, out and the state as they were.
- A refused step (invalid label) raises and leaves out bitwise as it was.
Exit: 0 all passed, 1 a test failed, 77 skipped (no OpenCL device).
"""
import sys

import numpy as np

import efl
from _common import run_tests  # this folder is on sys.path: the script's own

C = 37


def data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(-3.0, 3.0, size=(n, C)).astype(np.float32)
    y = np.where(rng.random(n) < 0.3, rng.integers(1, C + 1, n), 0).astype(np.int32)
    return x, y


def to_bf16(x):
    """float32 -> bfloat16 bit patterns, rounded to nearest even (the test's own conversion)."""
    b = x.astype(np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def inputs(kind, x):
    if kind == "float32":
        return x, None
    if kind == "float16":
        return x.astype(np.float16), None
    return to_bf16(x), "bfloat16"


def state(loss):
    return [a.copy() for a in (loss.pos_grad, loss.neg_grad, loss.pos_neg)]


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_same_bits_as_without_out():
    x, y = data()
    for kind in ("float32", "float16", "bfloat16"):
        xi, dt = inputs(kind, x)
        a, b = efl.EqualizedFocalLoss(C), efl.EqualizedFocalLoss(C)
        va, ga = a.step(xi, y, normalizer=7, dtype=dt)
        out = np.full(xi.shape, 123, dtype=xi.dtype)
        vb, gb = b.step(xi, y, normalizer=7, dtype=dt, out=out)
        assert gb is out, kind
        assert va == vb and same(ga, out), kind
        assert all(np.array_equal(p, q) for p, q in zip(state(a), state(b))), kind


def test_reused_across_steps():
    a, b = efl.EqualizedFocalLoss(C), efl.EqualizedFocalLoss(C)
    out = np.empty((300, C), dtype=np.float32)
    for step in range(4):
        x, y = data(seed=step)
        va, ga = a.step(x, y, normalizer=5)
        vb, gb = b.step(x, y, normalizer=5, out=out)
        assert va == vb and same(ga, out), step
    assert all(np.array_equal(p, q) for p, q in zip(state(a), state(b)))


def test_compute_and_forward_none():
    x, y = data()
    a, b = efl.EqualizedFocalLoss(C), efl.EqualizedFocalLoss(C)
    va, ga = a.compute(x, y, normalizer=3)
    out = np.empty_like(x)
    vb, gb = b.compute(x, y, normalizer=3, out=out)
    assert gb is out and va == vb and same(ga, out)
    ea = a.forward(x, y, reduction="none")
    eo = np.empty_like(x)
    eb = b.forward(x, y, reduction="none", out=eo)
    assert eb is eo and same(ea, eo)
    try:
        b.forward(x, y, out=eo)
    except ValueError:
        pass
    else:
        raise AssertionError("forward(out=) with reduction mean was accepted")


def test_levels():
    rng = np.random.default_rng(5)
    B, A = 2, 3
    hw = [(6, 5), (3, 3)]
    levels = [rng.normal(-3, 3, size=(B, A * C, h, w)).astype(np.float32) for h, w in hw]
    rows = B * sum(h * w for h, w in hw) * A
    y = np.where(rng.random(rows) < 0.3, rng.integers(1, C + 1, rows), 0).astype(np.int32)
    a, b = efl.EqualizedFocalLoss(C), efl.EqualizedFocalLoss(C)
    va, ga = a.step(levels=levels, labels=y, anchors=A, normalizer=4)
    outs = [np.empty_like(l) for l in levels]
    vb, gb = b.step(levels=levels, labels=y, anchors=A, normalizer=4, out=outs)
    assert gb is outs and va == vb and all(same(p, q) for p, q in zip(ga, outs))
    try:
        b.step(levels=levels, labels=y, anchors=A, out=outs[0])
    except ValueError:
        pass
    else:
        raise AssertionError("one array for two levels was accepted")


def test_torch_tensors():
    try:
        import torch
    except ImportError:
        raise AssertionError("torch is not importable (python3-torch): this test needs it")
    x, y = data()
    for tdt, kind in ((torch.float32, "float32"), (torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        xi, dt = inputs(kind, x)
        a, b = efl.EqualizedFocalLoss(C), efl.EqualizedFocalLoss(C)
        va, ga = a.step(xi, y, normalizer=2, dtype=dt)
        t = torch.zeros(x.shape, dtype=tdt)
        vb, gb = b.step(xi, y, normalizer=2, dtype=dt, out=t)
        assert gb is t and va == vb, kind
        got = t.view(torch.int16).numpy().view(np.uint16) if tdt == torch.bfloat16 else t.numpy()
        assert same(ga, got), kind
    t = torch.zeros(x.shape, requires_grad=True)
    try:
        efl.EqualizedFocalLoss(C).step(x, y, out=t)
    except ValueError:
        pass
    else:
        raise AssertionError("a tensor that requires grad was accepted as out")


def test_bad_out_changes_nothing():
    x, y = data()
    loss = efl.EqualizedFocalLoss(C)
    loss.step(x, y, normalizer=3)
    before = state(loss)
    wide = np.zeros((300, 2 * C), dtype=np.float32)
    ro = np.zeros_like(x)
    ro.flags.writeable = False
    bad = [np.zeros((299, C), np.float32), np.zeros((300, C), np.float64), wide[:, ::2], ro,
           [np.zeros_like(x)], "grad"]
    for out in bad:
        keep = np.array(out, copy=True) if isinstance(out, np.ndarray) else None
        try:
            loss.step(x, y, normalizer=3, out=out)
        except ValueError:
            pass
        else:
            raise AssertionError("out=%r was accepted" % (type(out).__name__,))
        if keep is not None:
            assert np.array_equal(np.asarray(out), keep)
        assert all(np.array_equal(p, q) for p, q in zip(before, state(loss)))


def test_refused_step_leaves_out():
    x, y = data()
    y[17] = C + 5  # no class, not the ignore index: the device refuses the step
    loss = efl.EqualizedFocalLoss(C)
    out = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    keep = out.copy()
    before = state(loss)
    try:
        loss.step(x, y, normalizer=3, out=out)
    except efl.EflError as exc:
        assert exc.status == efl.Status.ERROR_INVALID_LABEL, exc
    else:
        raise AssertionError("an invalid label was accepted")
    assert same(out, keep)
    assert all(np.array_equal(p, q) for p, q in zip(before, state(loss)))


if __name__ == "__main__":
    sys.exit(run_tests([test_same_bits_as_without_out, test_reused_across_steps, test_compute_and_forward_none,
                        test_levels, test_torch_tensors, test_bad_out_changes_nothing,
                        test_refused_step_leaves_out], sys.argv))
